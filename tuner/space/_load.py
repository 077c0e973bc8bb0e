"""Parse a YAML search space into a frozen :class:`Space`, validating it on the way.

Every error names the file, the key path, the rule and the value, e.g.::

    search_spaces/mine.yaml: params.l2: `low <= high` must hold, but got (low=1.0, high=0.1)
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import os
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import yaml

from tuner.catalogue import (
    CATALOGUE,
    CONDITIONAL_PARENTS,
    DATASET_KINDS,
    ENGINES,
    METRIC_KINDS,
    MODELS,
    PRECISIONS,
    TRIAL_COLUMNS,
    Rule,
    is_number,
)
from tuner.errors import DataError, SpaceError
from tuner.space._params import Categorical, Fixed, FloatRange, IntRange, Param, walk
from tuner.space._schema import (
    EarlyStopping,
    EngineSpec,
    PrunerSpec,
    SamplerSpec,
    Space,
    Task,
)
from tuner.usercode import import_reference, is_reference, resolve

TOP_KEYS = ("description", "trials", "seed", "task", "params", "user_params", "sampler",
            "pruner", "early_stopping", "engine")
TASK_KEYS = ("dataset", "model", "epochs", "metric", "direction", "n_samples", "n_features",
             "data", "target", "kind", "features", "aux_target", "loss", "objective")
DIRECTIONS = ("maximize", "minimize")
# What the functions of yours are called with.
LOSS_ARGS = METRIC_ARGS = ("outputs", "targets")
OBJECTIVE_ARGS = ("config", "report")
RANGE_KEYS = ("type", "low", "high", "log", "step")


# Bounds on what a space file may cost to read: a search space is a few kilobytes, and
# one from someone else may be built to exhaust the machine (a "billion laughs" alias
# bomb expands nine aliases nine levels deep into 387 million nodes).
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # counting every alias as the nodes it stands for
MAX_ALIASES = 1_000
MAX_DEPTH = 64


class _Limit(yaml.YAMLError):
    """A space file past one of the bounds above, at ``mark``."""

    def __init__(self, rule: str, mark: Any) -> None:
        super().__init__(rule)
        self.rule, self.mark = rule, mark


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``), and
    stops at the bounds above while composing, before any alias is expanded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = self._aliases = self._depth = 0
        self._sizes: dict[str, int] = {}  # anchor -> nodes under it, aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        before = self._nodes
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Limit(f"more than {MAX_ALIASES:,} aliases (*name)", event.start_mark)
            self._nodes += self._sizes.get(str(anchor), 1)
        else:
            self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Limit(f"more than {MAX_NODES:,} values once aliases are expanded (a "
                         "search space has a few hundred)", event.start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Limit(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if anchor is not None and not isinstance(event, yaml.AliasEvent):
            self._sizes[anchor] = self._nodes - before
        return node


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _int_or_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | float:
    text = str(loader.construct_scalar(node))
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:  # `.inf`, `.nan`, `1_000.5`: YAML's own spellings
        return loader.construct_yaml_float(node)


_Loader.add_constructor("tag:yaml.org,2002:float", _int_or_float)


def _unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """A mapping whose keys are all different: YAML keeps the last of two equal keys,
    which would silently drop the first (``lr`` written twice, say)."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
            continue
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: construct_mapping says so
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (each key may appear once in a mapping)",
                key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


class _Context:
    """Carries the source name so every message has the same shape; a value given as an
    option (``origins``: key path -> option, e.g. ``task.metric`` -> ``--metric``) is
    named by its option instead."""

    def __init__(self, source: str, origins: Mapping[str, str] | None = None) -> None:
        self.source = source
        self.origins = dict(origins or {})

    def fail(self, path: str, message: str) -> NoReturn:
        option = self.origins.get(path)
        if option is None:
            raise SpaceError(f"{self.source}: {path}: {message}")
        raise SpaceError(message if message.startswith(option) else f"{option}: {message}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, f"must be a mapping, but got {value!r}")
        for key in value:
            if key not in allowed:
                self.fail(f"{path}.{key}" if path else str(key),
                          f"unknown key {key!r}; expected one of: {', '.join(allowed)}")
        return dict(value)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML file into a mapping, turning every failure into a SpaceError."""
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_Loader)
    except _Limit as exc:
        raise SpaceError(f"{path}: line {exc.mark.line + 1}: refused: {exc.rule}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpaceError(f"{path}: malformed YAML: {where}{problem}") from None
    if not isinstance(data, Mapping):
        raise SpaceError(f"{path}: a search space must be a YAML mapping, but got {data!r}")
    return dict(data)


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, read only up to the size bound; never a FIFO or a device,
    which could be read forever."""
    try:
        if not path.is_file():
            raise SpaceError(f"{path}: not a regular file (a search space is a YAML file)")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read the search space: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SpaceError(f"{path}: refused: larger than {MAX_FILE_BYTES >> 20} MiB (a search "
                         f"space is a few kilobytes; {path.stat().st_size:,} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpaceError(f"{path}: line {line}, column {column}: not UTF-8 text (byte "
                         f"0x{data[exc.start]:02x}); save the file as UTF-8") from None


def parse_space(raw: Mapping[str, Any], *, name: str, source: str,
                origins: Mapping[str, str] | None = None) -> Space:
    """Validate a mapping (as read from YAML) and freeze it into a :class:`Space`;
    ``origins`` names the options some values came from (``{"task.metric": "--metric"}``)
    for messages about them."""
    ctx = _Context(source, origins)
    top = ctx.mapping(raw, "", TOP_KEYS)
    task = _parse_task(ctx, top.get("task"))
    params = _parse_params(ctx, top.get("params"), "params")
    _check_conditionals(ctx, params)
    user_params = _parse_user_params(ctx, top.get("user_params"), "user_params")
    _check_user_names(ctx, user_params)
    space = Space(
        name=name,
        description=_string(ctx, top.get("description", ""), "description"),
        task=task,
        params=params,
        sampler=_parse_sampler(ctx, top.get("sampler")),
        pruner=_parse_pruner(ctx, top.get("pruner"), "pruner", task),
        early_stopping=_parse_early_stopping(ctx, top.get("early_stopping")),
        engine=parse_engine(top.get("engine"), ctx),
        user_params=user_params,
        seed=_integer(ctx, top.get("seed", 0), "seed", minimum=0),
        trials=_integer(ctx, top.get("trials", 50), "trials", minimum=1),
        source=source,
        raw=copy.deepcopy(dict(raw)),
    )
    if space.sampler.name == "grid":
        _check_grid(ctx, space)
    # Build the sampler exactly as a worker will, so that a bad combination of
    # settings fails here, before anything is written.
    from tuner.space.sampling import build_sampler

    _try_build(ctx, "sampler", lambda: build_sampler(space))
    return space


def check_as_written(raw: Mapping[str, Any], keys: Iterable[str], source: str) -> None:
    """Check the file's own values of the keys an option overrides (``seed``, ``engine``,
    ``epochs``, ``dataset``, ...: top-level or task keys, as ``load_space`` takes them),
    so that a file that is wrong as written (``epochs: "ten"``) is refused even when
    ``--epochs`` hides the mistake for this run."""
    ctx = _Context(source)
    task = raw.get("task")
    for key in keys:
        top = key in ("seed", "trials", "engine")
        values = raw if top else task
        if not isinstance(values, Mapping) or values.get(key) is None:
            continue
        value, path = values[key], key if top else f"task.{key}"
        check = _AS_WRITTEN.get(key, lambda c, v, p: _string(c, v, p))
        try:
            check(ctx, value, path)
        except SpaceError as exc:
            raise SpaceError(f"{exc} (an option overrides it for this run, but the file must "
                             "be valid as written)") from None


def _one_of(options: tuple[str, ...]) -> Any:
    def check(ctx: _Context, value: Any, path: str) -> None:
        if value not in options:
            ctx.fail(path, f"expected one of: {', '.join(options)}, but got {value!r}")
    return check


def _dataset(ctx: _Context, value: Any, path: str) -> None:
    _one_of(tuple(DATASET_KINDS))(ctx, value, path)


def _features(ctx: _Context, value: Any, path: str) -> None:
    if not isinstance(value, str | list) or (
            isinstance(value, list) and not all(isinstance(f, str) for f in value)):
        ctx.fail(path, f"must be a list of column names, but got {value!r}")


_AS_WRITTEN: dict[str, Any] = {
    "seed": lambda ctx, v, p: _integer(ctx, v, p, minimum=0),
    "trials": lambda ctx, v, p: _integer(ctx, v, p, minimum=1),
    "engine": lambda ctx, v, p: parse_engine(v, ctx),
    "epochs": lambda ctx, v, p: _integer(ctx, v, p, minimum=1),
    "dataset": _dataset,
    "direction": _one_of(DIRECTIONS),
    "kind": _one_of(("classification", "regression")),
    "features": _features,
}


def _string(ctx: _Context, value: Any, path: str) -> str:
    if not isinstance(value, str):
        ctx.fail(path, f"must be a string, but got {value!r}")
    return value


def _integer(ctx: _Context, value: Any, path: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        ctx.fail(path, f"must be an integer >= {minimum}, but got {value!r}")
    return value


def _parse_task(ctx: _Context, raw: Any) -> Task:
    task = ctx.mapping(raw, "task", TASK_KEYS)
    dataset = task.get("dataset", Task.dataset)
    if dataset not in DATASET_KINDS:
        ctx.fail("task.dataset", f"unknown dataset {dataset!r}; expected one of: "
                 f"{', '.join(DATASET_KINDS)}")
    user = _parse_user_data(ctx, task)
    image = user.pop("_image") if user["data"] else DATASET_KINDS[dataset].image
    kind = user["kind"] if user["data"] else DATASET_KINDS[dataset].task
    objective = _reference(ctx, task, "objective", OBJECTIVE_ARGS)
    if objective is not None:
        metric, direction = _objective_metric(ctx, task)
    else:
        metric, direction = _metric(ctx, task, kind, user["data"] or dataset)
    loss = _reference(ctx, task, "loss", LOSS_ARGS)
    if loss is not None and objective is not None:
        ctx.fail("task.loss", "applies to the tuner's own training loop; with task.objective "
                 "your function computes its own loss")
    model = task.get("model", Task.model)
    if not isinstance(model, str) or (model not in MODELS and not is_reference(model)):
        ctx.fail("task.model", f"unknown model {model!r}; expected one of: {', '.join(MODELS)}, "
                 "or package.module:function / file.py:function for your own")
    if model not in MODELS:
        try:
            import_reference(model, "--model")
        except DataError as exc:
            ctx.fail("task.model", str(exc))
    if model == "cnn" and not image:
        ctx.fail("task.model", f"model 'cnn' needs an image dataset, but "
                 f"{user['data'] or dataset!r} is tabular")
    return Task(
        **user,
        dataset=dataset,
        model=model,
        epochs=_integer(ctx, task.get("epochs", Task.epochs), "task.epochs", minimum=1),
        metric=metric,
        direction=direction,
        n_samples=_integer(ctx, task.get("n_samples", Task.n_samples), "task.n_samples",
                           minimum=10),
        n_features=_integer(ctx, task.get("n_features", Task.n_features), "task.n_features",
                            minimum=1),
        loss=loss,
        objective=objective,
    )


def _reference(ctx: _Context, task: Mapping[str, Any], key: str,
               arguments: tuple[str, ...]) -> str | None:
    """A function of yours named by ``task.<key>``, imported and checked to take
    ``arguments``; None when the key is absent."""
    value = task.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not is_reference(value):
        ctx.fail(f"task.{key}", f"expected package.module:function or file.py:function, but "
                 f"got {value!r}")
    try:
        resolve(value, "", arguments)
    except DataError as exc:
        ctx.fail(f"task.{key}", str(exc))
    return value


def _direction(ctx: _Context, task: Mapping[str, Any], why: str) -> str:
    """``task.direction``, which must be given (``why`` says for what)."""
    direction = task.get("direction")
    if direction not in DIRECTIONS:
        given = "none is given" if direction is None else f"got {direction!r}"
        ctx.fail("task.direction", f"{why} needs a direction (task.direction or "
                 f"--direction: maximize or minimize), but {given}")
    return str(direction)


def _metric(ctx: _Context, task: Mapping[str, Any], kind: str, data: str) -> tuple[str, str]:
    """The metric the tuner's loop computes, and its direction."""
    metric = task.get("metric", "accuracy" if kind == "classification" else "rmse")
    if isinstance(metric, str) and is_reference(metric):
        _reference(ctx, task, "metric", METRIC_ARGS)
        return metric, _direction(ctx, task, f"a metric of yours ({metric})")
    if metric not in METRIC_KINDS:
        ctx.fail("task.metric", f"unknown metric {metric!r}; expected one of: "
                 f"{', '.join(METRIC_KINDS)}, or package.module:function / file.py:function for "
                 "your own")
    builtin = METRIC_KINDS[metric]
    if builtin.task != kind:
        ctx.fail("task.metric", f"metric {metric!r} is for {builtin.task}, but dataset "
                 f"{data!r} is {kind}")
    direction = task.get("direction", builtin.direction)
    if direction != builtin.direction:
        ctx.fail("task.direction", f"metric {metric!r} must be {builtin.direction}d, "
                 f"but got {direction!r}")
    return metric, direction


def _objective_metric(ctx: _Context, task: Mapping[str, Any]) -> tuple[str, str]:
    """With a training function of yours, ``task.metric`` names the value it returns: a
    built-in metric's name sets the direction; any other name (or a metric function's
    reference, read as its name) needs one."""
    metric = task.get("metric", "value")
    if not isinstance(metric, str) or not (metric.isidentifier() or is_reference(metric)):
        ctx.fail("task.metric", f"must name the value your objective returns, e.g. f1, but "
                 f"got {metric!r}")
    if metric in METRIC_KINDS and "direction" not in task:
        return metric, METRIC_KINDS[metric].direction
    direction = _direction(ctx, task, f"an objective of yours ({task['objective']})")
    builtin = METRIC_KINDS.get(metric)
    if builtin is not None and direction != builtin.direction:
        ctx.fail("task.direction", f"metric {metric!r} must be {builtin.direction}d, "
                 f"but got {direction!r}")
    return metric, direction


def _parse_user_data(ctx: _Context, task: Mapping[str, Any]) -> dict[str, Any]:
    """The user's data file or function, read once here so that its errors come first."""
    data = task.get("data")
    if data is None:
        for key in ("target", "kind", "features", "aux_target"):
            if key in task:
                ctx.fail(f"task.{key}", "applies only to your own data (task.data / --data)")
        return {"data": None, "target": None, "kind": None, "features": None,
                "aux_target": None}
    data = _string(ctx, data, "task.data")
    target = task.get("target")
    kind = task.get("kind")
    if kind not in (None, "classification", "regression"):
        ctx.fail("task.kind", f"expected classification or regression, but got {kind!r}")
    features = task.get("features")
    if features is not None:
        if isinstance(features, str):
            features = [f.strip() for f in features.split(",") if f.strip()]
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            ctx.fail("task.features", f"must be a list of column names, but got {features!r}")
        features = tuple(features)
    aux = task.get("aux_target")
    try:
        from tuner.data.builtin import load_user_splits

        splits = load_user_splits(data, 0, "cpu", target, kind, features, aux, os.getcwd())
    except DataError as exc:
        # Named as it was given: "--data FILE: ..." by the option, "task.data: FILE: ..." here
        given_here = exc.source is not None and "task.data" not in ctx.origins
        ctx.fail("task.data", f"{exc.source}: {exc.problem}" if given_here else str(exc))
    return {"data": data, "target": target, "kind": splits.task, "features": features,
            "aux_target": aux, "_image": splits.image_shape is not None}


def _parse_params(ctx: _Context, raw: Any, path: str) -> tuple[Param, ...]:
    params = ctx.mapping(raw, path, tuple(CATALOGUE))
    return tuple(_parse_param(ctx, name, spec, f"{path}.{name}") for name, spec in params.items())


def _check_value(ctx: _Context, rule: Rule, value: Any, path: str) -> Any:
    if value is None and rule.nullable:
        return None
    if rule.kind == "bool":
        if not isinstance(value, bool):
            ctx.fail(path, f"must be true or false, but got {value!r}")
    elif rule.kind == "choice":
        if value not in rule.options:
            ctx.fail(path, f"unknown value {value!r}; expected one of: {', '.join(rule.options)}")
    elif rule.kind == "milestones":
        return _milestones(ctx, value, path)
    else:
        if not is_number(value) or (rule.kind == "int" and not isinstance(value, int)):
            ctx.fail(path, f"must be {'an integer' if rule.kind == 'int' else 'a finite number'}"
                     f", but got {value!r}")
        if not rule.check(value):
            ctx.fail(path, f"`{rule.text}` must hold, but got {value!r}")
        if rule.kind == "float":
            value = float(value)
    return value


def _milestones(ctx: _Context, value: Any, path: str) -> str:
    """Milestones are stored as a string such as ``"10,20"`` so Optuna can choose among them."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        epochs = [int(str(item).strip()) for item in items]
    except (TypeError, ValueError):
        ctx.fail(path, f"must be an increasing list of epochs >= 1, but got {value!r}")
    if not epochs or epochs[0] < 1 or any(b <= a for a, b in itertools.pairwise(epochs)):
        ctx.fail(path, f"must be an increasing list of epochs >= 1, but got {value!r}")
    return ",".join(str(e) for e in epochs)


def _parse_param(ctx: _Context, name: str, spec: Any, path: str,
                 rule: Rule | None = None) -> Param:
    """A built-in parameter (its rule from the catalogue), or a range of yours (``rule``)."""
    rule = rule or CATALOGUE[name]
    if not isinstance(spec, Mapping):
        return Fixed(name, _check_value(ctx, rule, spec, path))
    if "choices" in spec:
        return _parse_categorical(ctx, name, spec, path, rule)
    if "value" in spec:
        ctx.mapping(spec, path, ("value",))
        return Fixed(name, _check_value(ctx, rule, spec["value"], f"{path}.value"))
    if not rule.searchable_range:
        ctx.fail(path, f"{name!r} is {rule.kind}: give a value or `choices`, not a range")
    spec = ctx.mapping(spec, path, RANGE_KEYS)
    for key in ("low", "high"):
        if key not in spec:
            ctx.fail(path, f"a range needs `low` and `high`, but `{key}` is missing")
    declared = spec.get("type", rule.kind)
    if declared != rule.kind:
        ctx.fail(f"{path}.type", f"{name!r} is {rule.kind}, but got type {declared!r}")
    low = _check_value(ctx, rule, spec["low"], f"{path}.low")
    high = _check_value(ctx, rule, spec["high"], f"{path}.high")
    if low is None or high is None:
        ctx.fail(path, f"a range needs numbers, but got (low={low!r}, high={high!r})")
    if low > high:
        ctx.fail(path, f"`low <= high` must hold, but got (low={low!r}, high={high!r})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        ctx.fail(f"{path}.log", f"must be true or false, but got {log!r}")
    if log and low <= 0:
        ctx.fail(path, f"`low > 0` must hold for a log range, but got (low={low!r})")
    step = spec.get("step")
    if step is not None:
        if not is_number(step) or step <= 0 or (rule.kind == "int" and not isinstance(step, int)):
            ctx.fail(f"{path}.step", f"`step > 0` must hold, but got {step!r}")
        if log:
            ctx.fail(path, "`step` and `log` cannot be used together")
        # Optuna would shrink the range to the last step below `high`, with a warning.
        span, d_step = Decimal(str(high)) - Decimal(str(low)), Decimal(str(step))
        if span % d_step != 0:
            last = (span // d_step) * d_step + Decimal(str(low))
            last_value = int(last) if rule.kind == "int" else float(last)
            ctx.fail(path, f"`step` must divide `high - low`, but got (low={low!r}, "
                           f"high={high!r}, step={step!r}): the last value would be "
                           f"{last_value!r}")
    if rule.kind == "int":
        return IntRange(name, low, high, log=log, step=step or 1)
    return FloatRange(name, low, high, log=log, step=None if step is None else float(step))


def _parse_categorical(ctx: _Context, name: str, spec: Mapping[str, Any], path: str,
                       rule: Rule) -> Param:
    ctx.mapping(spec, path, ("choices",))
    choices = spec["choices"]
    branches: list[tuple[Any, tuple[Param, ...]]] = []
    if isinstance(choices, Mapping):
        if name not in CONDITIONAL_PARENTS:
            ctx.fail(f"{path}.choices", f"only {' and '.join(CONDITIONAL_PARENTS)} have "
                     "conditional parameters; give a list of choices")
        values = []
        for choice, sub in choices.items():
            value = _check_value(ctx, rule, choice, f"{path}.choices")
            branches.append((value, _parse_params(ctx, sub, f"{path}.choices.{choice}")))
            values.append(value)
    elif isinstance(choices, list) and choices:
        values = [_check_value(ctx, rule, c, f"{path}.choices") for c in choices]
    else:
        ctx.fail(f"{path}.choices", f"must be a non-empty list or mapping, but got {choices!r}")
    if len(set(map(repr, values))) != len(values):
        ctx.fail(f"{path}.choices", f"choices must be distinct, but got {values!r}")
    return Categorical(name, tuple(values), tuple(branches))


def _parse_user_params(ctx: _Context, raw: Any, path: str) -> tuple[Param, ...]:
    """``user_params:`` (or a branch of one of its choices): the syntax of ``params``,
    with names and types of your own."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        ctx.fail(path, f"must be a mapping of parameter names, but got {raw!r}")
    params = []
    for name, spec in raw.items():
        where = f"{path}.{name}"
        if not isinstance(name, str) or not name.isidentifier():
            ctx.fail(where, f"a parameter's name must be a Python identifier, but got {name!r}")
        if name in CATALOGUE:
            ctx.fail(where, f"{name!r} is a built-in parameter; give it under params, or "
                     "choose another name for yours")
        if name in TRIAL_COLUMNS:
            ctx.fail(where, f"{name!r} is a column of every trial ({', '.join(TRIAL_COLUMNS)}); "
                     "choose another name")
        params.append(_parse_user_param(ctx, name, spec, where))
    return tuple(params)


def _user_scalar(ctx: _Context, value: Any, path: str) -> Any:
    """A choice of yours: what Optuna can record (null, a boolean, a number, a string)."""
    if value is not None and not isinstance(value, (bool, int, float, str)):
        ctx.fail(path, f"a choice must be null, true/false, a number or a string, but got "
                 f"{value!r}")
    if isinstance(value, float) and not is_number(value):
        ctx.fail(path, f"a choice must be finite, but got {value!r}")
    return value


def _parse_user_param(ctx: _Context, name: str, spec: Any, path: str) -> Param:
    if not isinstance(spec, Mapping):
        return Fixed(name, spec)
    if "value" in spec:
        ctx.mapping(spec, path, ("value",))
        return Fixed(name, spec["value"])
    if "choices" in spec:
        ctx.mapping(spec, path, ("choices",))
        choices = spec["choices"]
        branches: list[tuple[Any, tuple[Param, ...]]] = []
        if isinstance(choices, Mapping) and choices:
            values = [_user_scalar(ctx, c, f"{path}.choices") for c in choices]
            branches = [(value, _parse_user_params(ctx, sub, f"{path}.choices.{choice}"))
                        for value, (choice, sub) in zip(values, choices.items(), strict=True)]
        elif isinstance(choices, list) and choices:
            values = [_user_scalar(ctx, c, f"{path}.choices") for c in choices]
        else:
            ctx.fail(f"{path}.choices", f"must be a non-empty list or mapping, but got "
                     f"{choices!r}")
        if len(set(map(repr, values))) != len(values):
            ctx.fail(f"{path}.choices", f"choices must be distinct, but got {values!r}")
        return Categorical(name, tuple(values), tuple(branches))
    spec = ctx.mapping(spec, path, RANGE_KEYS)
    for key in ("low", "high"):
        if key not in spec:
            ctx.fail(path, f"a range needs `low` and `high` (or give `choices` or `value`), "
                     f"but `{key}` is missing")
    whole = all(isinstance(spec.get(k, 1), int) and not isinstance(spec.get(k, 1), bool)
                for k in ("low", "high", "step"))
    kind = spec.get("type", "int" if whole else "float")
    if kind not in ("int", "float"):
        ctx.fail(f"{path}.type", f"expected int or float, but got {kind!r}")
    text = "a number" if kind == "float" else "an integer"
    return _parse_param(ctx, name, spec, path, Rule(kind, None, text, lambda v: True))


def _check_user_names(ctx: _Context, params: tuple[Param, ...]) -> None:
    """Optuna records one distribution per name: a parameter of yours may appear in
    several branches only with the same kind, scale and choices, and never both at top
    level and in a branch."""
    top = {p.name for p in params}
    seen: dict[str, str] = {}

    def visit(param: Param, path: str, nested: bool) -> None:
        if nested and param.name in top:
            ctx.fail(path, f"{param.name!r} is also given at top level; give it once")
        shape = _shape(param)
        if not isinstance(param, Fixed) and seen.setdefault(param.name, shape) != shape:
            ctx.fail(path, f"{param.name!r} must have the same kind, log scale and choices "
                     f"wherever it appears ({seen[param.name]} elsewhere), but got {shape}")
        if isinstance(param, Categorical):
            for choice, sub in param.branches:
                for child in sub:
                    visit(child, f"{path}.choices.{choice}.{child.name}", True)

    for param in params:
        visit(param, f"user_params.{param.name}", False)


def _shape(param: Param) -> str:
    """What Optuna's distribution of a parameter is made of, for messages."""
    if isinstance(param, Categorical):
        return f"choices {list(param.choices)}"
    if isinstance(param, (FloatRange, IntRange)):
        kind = "float" if isinstance(param, FloatRange) else "int"
        return f"{kind}{' log' if param.log else ''} range"
    return "fixed"


def _check_conditionals(ctx: _Context, params: tuple[Param, ...]) -> None:
    """A hyper-parameter of an optimizer or schedule must belong to the one it is under.

    Under a branch, only that choice's hyper-parameters may appear. At top level, one
    is allowed only when every possible choice of its parent accepts it (``lr`` for
    all optimizers, ``gamma`` when the schedule is fixed to ``step``, ...).
    """
    top = {p.name: p for p in params}
    seen: dict[str, str] = {}

    for parent, accepted in CONDITIONAL_PARENTS.items():
        spec = top.get(parent)
        default = CATALOGUE[parent].default
        choices = tuple(str(c) for c in (
            spec.choices if isinstance(spec, Categorical)
            else (spec.value,) if isinstance(spec, Fixed) else (default,)))
        own = {h for hyper in accepted.values() for h in hyper}
        for param in params:
            if param.name in own and not all(param.name in accepted[c] for c in choices):
                ctx.fail(f"params.{param.name}", f"{param.name!r} applies only to "
                         f"{parent} {', '.join(c for c in accepted if param.name in accepted[c])}"
                         f"; put it under params.{parent}.choices.<{parent}>")
        if isinstance(spec, Categorical):
            for value, sub in spec.branches:
                choice = str(value)
                for param in walk(sub):
                    if param.name not in accepted[choice]:
                        ctx.fail(f"params.{parent}.choices.{choice}.{param.name}",
                                 f"{parent} {choice!r} has no hyper-parameter {param.name!r}; "
                                 f"it takes: {', '.join(accepted[choice]) or 'none'}")
                    if param.name in top:
                        ctx.fail(f"params.{parent}.choices.{choice}.{param.name}",
                                 f"{param.name!r} is also given at top level; give it once")
                    if isinstance(param, Fixed):
                        continue
                    # Optuna needs one distribution shape per name across the study.
                    shape = _shape(param)
                    if seen.setdefault(param.name, shape) != shape:
                        ctx.fail(f"params.{parent}.choices.{choice}.{param.name}",
                                 f"{param.name!r} must have the same kind, log scale and "
                                 f"choices in every branch ({seen[param.name]} elsewhere), "
                                 f"but got {shape}")


def _options(ctx: _Context, raw: Mapping[str, Any], path: str, target: Any,
             skip: tuple[str, ...] = ()) -> tuple[tuple[str, Any], ...]:
    """Keyword options for an Optuna class, checked against its constructor."""
    accepted = [p for p in inspect.signature(target).parameters if p not in ("self", *skip)]
    options = {k: v for k, v in raw.items() if k not in ("name", "wrapped")}
    signature = inspect.signature(target).parameters
    for key, value in options.items():
        if key not in accepted:
            ctx.fail(f"{path}.{key}", f"unknown setting {key!r} for {raw.get('name')!r}; "
                     f"expected one of: {', '.join(accepted)}")
        _check_option(ctx, f"{path}.{key}", value, signature[key].annotation)
    return tuple(sorted(options.items()))


# Domains of the samplers' and pruners' counts and rates, which Optuna does not always
# check itself (TPE takes `n_startup_trials: -5` and treats it as 0): (low, high, whether
# low itself is allowed).
OPTION_DOMAINS: dict[str, tuple[float, float, bool]] = {
    "n_startup_trials": (0, math.inf, True),
    "n_startup_steps": (0, math.inf, True),
    "n_warmup_steps": (0, math.inf, True),
    "n_ei_candidates": (1, math.inf, True),
    "n_min_trials": (1, math.inf, True),
    "interval_steps": (1, math.inf, True),
    "min_resource": (1, math.inf, True),
    "max_resource": (1, math.inf, True),
    "reduction_factor": (2, math.inf, True),
    "min_early_stopping_rate": (0, math.inf, True),
    "bootstrap_count": (0, math.inf, True),
    "patience": (0, math.inf, True),
    "min_delta": (0, math.inf, True),
    "popsize": (1, math.inf, True),
    "prior_weight": (0, math.inf, False),
    "sigma0": (0, math.inf, False),
    "percentile": (0, 100, True),
    "p_threshold": (0, 1, True),
}
# What a YAML value may be, by the name of a type in Optuna's annotations.
_YAML_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,), "int": (int,), "float": (int, float), "str": (str,),
    "None": (type(None),), "dict": (Mapping,), "Mapping": (Mapping,), "list": (list,),
    "Sequence": (list,),
}


def _check_option(ctx: _Context, path: str, value: Any, annotation: Any) -> None:
    """A sampler's or pruner's setting against the type its constructor declares and
    the domain in OPTION_DOMAINS, so that a wrong one fails here and not in a trial."""
    if annotation is inspect.Parameter.empty:
        return
    names = ([annotation.__name__] if isinstance(annotation, type)
             else [part.strip().split("[")[0] for part in str(annotation).split("|")])
    if not any(n in _YAML_TYPES for n in names if n != "None"):
        ctx.fail(path, f"takes a Python object ({annotation}), which a space file cannot give")
    kinds = tuple(t for n in names for t in _YAML_TYPES.get(n, ()))
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        wanted = " or ".join("null" if n == "None" else n for n in names if n in _YAML_TYPES)
        ctx.fail(path, f"must be {wanted}, but got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        ctx.fail(path, f"must be finite, but got {value!r}")
    key = path.rsplit(".", 1)[-1]
    domain = OPTION_DOMAINS.get(key)
    if domain is not None and isinstance(value, int | float) and is_number(value):
        low, high, closed = domain
        if value < low or value > high or (value == low and not closed):
            bound = (f"{key} {'>=' if closed else '>'} {low:g}" if high == math.inf
                     else f"{low:g} <= {key} <= {high:g}")
            ctx.fail(path, f"`{bound}` must hold, but got {value!r}")


def _parse_sampler(ctx: _Context, raw: Any) -> SamplerSpec:
    from tuner.space.sampling import SAMPLERS

    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        ctx.fail("sampler", f"must be a mapping with a `name`, but got {raw!r}")
    spec = dict(raw)
    name = spec.get("name", "tpe")
    if name not in SAMPLERS:
        ctx.fail("sampler.name",
                 f"unknown sampler {name!r}; expected one of: {', '.join(SAMPLERS)}")
    return SamplerSpec(name, _options(ctx, spec, "sampler", SAMPLERS[name],
                                      skip=("search_space",)))


def _parse_pruner(ctx: _Context, raw: Any, path: str, task: Task) -> PrunerSpec:
    from tuner.space.sampling import PRUNERS, build_pruner

    if raw is None:
        raw = {"name": "median"}
    if not isinstance(raw, Mapping):
        ctx.fail(path, f"must be a mapping with a `name`, but got {raw!r}")
    name = raw.get("name", "median")
    if name not in PRUNERS:
        ctx.fail(f"{path}.name", f"unknown pruner {name!r}; expected one of: {', '.join(PRUNERS)}")
    wrapped = None
    if name == "patient" and raw.get("wrapped") is not None:
        # Without `wrapped`, the patient pruner prunes on patience alone.
        wrapped = _parse_pruner(ctx, raw["wrapped"], f"{path}.wrapped", task)
    elif "wrapped" in raw:
        ctx.fail(f"{path}.wrapped", "only the `patient` pruner wraps another pruner")
    spec = PrunerSpec(name, _options(ctx, raw, path, PRUNERS[name], skip=("wrapped_pruner",)),
                      wrapped)
    _try_build(ctx, path, lambda: build_pruner(spec, epochs=task.epochs))
    if name == "hyperband":  # Optuna builds it, then splits no budget into brackets
        low, high = spec.kwargs.get("min_resource", 1), spec.kwargs.get("max_resource",
                                                                         task.epochs)
        if isinstance(low, int) and isinstance(high, int) and low > high:
            default = "" if "max_resource" in raw else ", the task's epochs by default"
            ctx.fail(path, f"`min_resource <= max_resource` must hold, but got "
                           f"(min_resource={low!r}, max_resource={high!r}{default})")
    return spec


def _try_build(ctx: _Context, path: str, build: Any) -> None:
    try:
        build()
    except (TypeError, ValueError) as exc:
        ctx.fail(path, str(exc).splitlines()[0])


def parse_engine(raw: Any, ctx: _Context | None = None) -> EngineSpec:
    """``engine: fused``, or ``engine: {name: fused, population: 64, precision: bf16,
    compile: false, loader_workers: 2}``; None: sequential, float32, not compiled."""
    ctx = ctx or _Context("--engine")
    if raw is None:
        return EngineSpec()
    keys = ("name", "population", "precision", "compile", "loader_workers")
    spec = {"name": raw} if isinstance(raw, str) else ctx.mapping(raw, "engine", keys)
    name = spec.get("name", EngineSpec.name)
    if name not in ENGINES:
        ctx.fail("engine.name", f"unknown engine {name!r}; expected one of: {', '.join(ENGINES)}")
    population = _integer(ctx, spec.get("population", EngineSpec.population),
                          "engine.population", minimum=1)
    precision = spec.get("precision", EngineSpec.precision)
    if precision not in PRECISIONS:
        ctx.fail("engine.precision", f"unknown precision {precision!r}; expected one of: "
                 f"{', '.join(PRECISIONS)}")
    compiled = spec.get("compile", EngineSpec.compile)
    if not isinstance(compiled, bool):
        ctx.fail("engine.compile", f"must be true or false, but got {compiled!r}")
    workers = spec.get("loader_workers")
    if workers is not None:
        workers = _integer(ctx, workers, "engine.loader_workers", minimum=0)
    return EngineSpec(name, population, precision, compiled, workers)


def _parse_early_stopping(ctx: _Context, raw: Any) -> EarlyStopping:
    spec = ctx.mapping(raw, "early_stopping", ("patience", "min_delta"))
    patience = spec.get("patience")
    if patience is not None:
        patience = _integer(ctx, patience, "early_stopping.patience", minimum=1)
    min_delta = spec.get("min_delta", 0.0)
    if not is_number(min_delta) or min_delta < 0:
        ctx.fail("early_stopping.min_delta", f"`min_delta >= 0` must hold, but got {min_delta!r}")
    return EarlyStopping(patience, float(min_delta))


def _check_grid(ctx: _Context, space: Space) -> None:
    from tuner.space._params import describe, grid_values

    yours = {p.name for p in walk(space.user_params)}
    for param in space.all_params():
        if not isinstance(param, Fixed) and grid_values(param) is None:
            section = "user_params" if param.name in yours else "params"
            ctx.fail(f"{section}.{param.name}", "the grid sampler needs finite values: give "
                     "`choices`, an int range without log, or a float range with `step`, "
                     f"but got {describe(param)}")
