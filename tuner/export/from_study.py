"""From a study to a model file and back: the payload ``tuner export`` writes and
:func:`load_model` reads.

>>> model = load_model("best.pt")            # doctest: +SKIP
>>> model.predict([[5.1, 3.5, 1.4, 0.2]])    # doctest: +SKIP
[0]

The payload holds the trial's configuration, the network's spec and weights (the
best epoch's, stored when the trial became the study's best), and the training
split's standardization; see :mod:`tuner.export.model_file` for the wrapper and the file format.

A network of yours travels with the source of its builder's file, so that the export
works from any directory on any machine with the same packages. That source is code:
:func:`load_model` runs it only with ``trust_code=True``, or when the same builder is
importable here with the same source (its SHA-256 matches); the weights are always read
with ``weights_only``.
"""

from __future__ import annotations

import ast
import importlib.machinery
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuner.catalogue import MODELS
from tuner.data.builtin import load_task_data
from tuner.errors import DataError, StudyNotFoundError, UsageError
from tuner.export.model_file import ExportedModel, fold_batchnorm, read_payload
from tuner.run.study import stored_trial
from tuner.storage import TunerStorage
from tuner.storage.optuna_compat import trial_id_of
from tuner.train.config import Config, TrialConfig
from tuner.train.models import build_model
from tuner.train.usermodel import build_user_model
from tuner.usercode import Source, import_reference, load_source, source_hash, source_of

Builder = Callable[..., nn.Module]


def build_payload(storage: TunerStorage, study: str, number: int | None = None, *,
                  fold: bool = False) -> dict[str, Any]:
    """Everything :func:`load_model` needs for trial ``number`` (default: the best)."""
    stored = stored_trial(storage, study, number)
    trial, space, config = stored.trial, stored.space, stored.config
    if space.task.objective:
        raise UsageError(f"study {study!r} trained with your own function (objective "
                         f"{space.task.objective}): the tuner holds no weights of it; save "
                         "the model from your function")
    blob = storage.load_model_blob(trial_id_of(trial))
    if blob is None:
        raise StudyNotFoundError(
            f"trial {trial.number} of study {study!r} has no stored weights: only trials that "
            f"became the study's best have them; retrain it with `tuner rerun --study {study} "
            f"--trial {trial.number}`")
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    data = load_task_data(space.task, space.seed, "cpu")
    spec = {"model": config.model, "n_features": data.n_features, "n_outputs": data.n_outputs,
            "image_shape": list(data.image_shape) if data.image_shape else None,
            "input_shape": list(data.input_shape)}
    source = None if config.model in MODELS else source_of(config.model, "--model")
    if fold:
        builder = None if source is None else import_reference(config.model, "--model")
        network = build_network(spec, config.to_dict(), builder)
        network.load_state_dict(state)
        state = fold_batchnorm(network).state_dict()
    in_memory = data.in_memory
    return {
        "config": config.to_dict(),
        "spec": spec,
        "state_dict": state,
        "folded": fold,
        "source": None if source is None else {
            "module": source.module, "filename": source.filename, "text": source.text,
            "function": source.function, "sha256": source.sha256, "reference": config.model},
        "preprocessing": {
            "task": data.task,
            # Datasets come as the network reads them: no standardization.
            "x_mean": data.x_mean.cpu() if in_memory else torch.zeros(()),  # type: ignore[union-attr]
            "x_std": data.x_std.cpu() if in_memory else torch.ones(()),  # type: ignore[union-attr]
            "y_mean": data.y_mean, "y_std": data.y_std,
            "classes": list(data.classes) if data.classes is not None else None,
            "features": list(_feature_names(space.task)),
        },
        "info": {"study": study, "trial": trial.number, "value": trial.value,
                 "metric": space.task.metric,
                 "test_metric": storage.test_metric(trial_id_of(trial)),
                 "dataset": space.task.data or space.task.dataset},
    }


def build_network(spec: dict[str, Any], config: dict[str, Any],
                  builder: Builder | None = None) -> nn.Module:
    """The untrained network of a payload, as :func:`tuner.train.loop.build_for` builds it
    (a network of yours by ``builder``, default: its reference imported here)."""
    if spec["model"] not in MODELS:
        shape = tuple(spec.get("input_shape") or (spec["n_features"],))
        return build_user_model(spec["model"], Config(TrialConfig.from_dict(config)), shape,
                                spec["n_outputs"], builder)
    shape = spec["image_shape"]
    return build_model(spec["model"], n_features=spec["n_features"], n_outputs=spec["n_outputs"],
                       image_shape=tuple(shape) if shape else None, hidden=config["hidden"],
                       layers=config["layers"], dropout=config["dropout"],
                       dropout_kind=config["dropout_kind"], batchnorm=config["batchnorm"])


def load_model(path: str | Path, *, trust_code: bool = False) -> ExportedModel:
    """A model file written by ``tuner export``, as a module in eval mode that takes raw
    features (see :class:`~tuner.export.model_file.ExportedModel`).

    A network of yours is built by the builder's source the file carries, which is code:
    only with ``trust_code=True``, or when the same builder is importable here with the
    same source; otherwise a :class:`~tuner.errors.DataError` says so.

    >>> model = load_model("best.pt")   # doctest: +SKIP
    >>> model.predict(x_raw)            # doctest: +SKIP
    """
    payload = read_payload(path)
    _check_payload(payload, str(path))
    builder = _builder(payload, str(path), trust_code)
    network = build_network(payload["spec"], payload["config"], builder)
    if payload.get("folded"):
        # Folding a fresh network gives the folded layout; the file holds folded weights.
        network = fold_batchnorm(network)
    try:
        network.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, KeyError) as exc:
        # torch's message: a heading, then one line per mismatch; the first says which.
        lines = [line.strip() for line in str(exc).strip().splitlines()] or [repr(exc)]
        raise DataError(f"--model {path}: its weights do not fit its network (the file was "
                        f"altered, or its builder changed): {lines[min(1, len(lines) - 1)]}"
                        ) from None
    pre = payload["preprocessing"]
    shape = payload["spec"].get("input_shape")
    return ExportedModel(network, task=pre["task"], x_mean=pre["x_mean"], x_std=pre["x_std"],
                         y_mean=pre["y_mean"], y_std=pre["y_std"], classes=pre["classes"],
                         config=payload["config"], info=payload["info"],
                         input_shape=tuple(shape) if builder is not None and shape else None
                         ).eval()


def _check_payload(payload: dict[str, Any], path: str) -> None:
    """Refuse, in one line, a model file whose parts are missing or do not agree (a file
    altered after export, or not one of ours)."""
    spec, pre = payload.get("spec"), payload.get("preprocessing")

    def fail(what: str) -> None:
        raise DataError(f"--model {path}: {what} (the file was altered, or is not a tuner "
                        "export)")

    if not isinstance(spec, dict) or not isinstance(pre, dict) or not isinstance(
            payload.get("config"), dict) or not isinstance(payload.get("state_dict"), dict):
        fail("it lacks its network's spec, config, weights or preprocessing")
    assert isinstance(spec, dict) and isinstance(pre, dict)
    if not isinstance(spec.get("model"), str) or not all(
            isinstance(spec.get(k), int) and spec[k] >= 1 for k in ("n_features", "n_outputs")):
        fail(f"its network's spec is malformed: {spec!r:.200}")
    if pre.get("task") not in ("classification", "regression") or not all(
            isinstance(pre.get(k), torch.Tensor) for k in ("x_mean", "x_std")):
        fail("its preprocessing is malformed")
    classes = pre.get("classes")
    if pre["task"] == "classification" and classes is not None and (
            not isinstance(classes, list) or len(classes) != spec["n_outputs"]):
        count = len(classes) if isinstance(classes, list) else type(classes).__name__
        fail(f"it names {count} classes for a network of {spec['n_outputs']} outputs")


def _builder(payload: dict[str, Any], path: str, trust_code: bool) -> Builder | None:
    """The builder of a network of yours (None: a built-in one), decided without running
    code the user has not trusted."""
    reference = payload["spec"]["model"]
    if reference in MODELS:
        return None
    embedded = payload.get("source")
    if not isinstance(embedded, dict):  # exported before sources were embedded
        if trust_code:
            return import_reference(reference, "--model")
        raise DataError(f"--model {path}: its network is built by {reference}, which the file "
                        "names but does not carry (an export from an older tuner); pass "
                        "--trust-code (trust_code=True) to import that builder from here")
    try:
        source = Source(str(embedded["module"]), str(embedded["filename"]),
                        str(embedded["text"]), str(embedded["function"]))
    except KeyError as exc:
        raise DataError(f"--model {path}: the builder's source it carries lacks {exc} (the "
                        "file was altered)") from None
    if embedded.get("sha256") != source.sha256:
        raise DataError(f"--model {path}: the builder's source it carries does not match the "
                        f"SHA-256 recorded with it ({str(embedded.get('sha256'))[:12]}, but the "
                        f"source's is {source.sha256[:12]}): the file was altered after export")
    local = _local_source(reference, source)
    if local == "same":
        return import_reference(reference, "--model")
    if trust_code:
        return load_source(source)
    here = f" ({local} here has other source)" if local not in ("same", "") else ""
    raise DataError(f"--model {path}: it carries the source of its network's builder "
                    f"({source.filename}, function {source.function}, sha256 "
                    f"{source.sha256[:12]}), and loading it runs that code: pass --trust-code "
                    "(trust_code=True) if you trust where the file came from, or load it "
                    f"where {reference} is importable with that same source{here}")


def _local_source(reference: str, source: Source) -> str:
    """``same`` when ``reference`` names, here, a file that is exactly the embedded
    ``source`` (same name, same function, same SHA-256), found without importing
    anything: only then may it be imported without the user's trust; the file's name when
    it is there with other text; empty otherwise. The file's text is checked to define the
    function at top level, so that a file of known contents that defines no such builder
    (a module of Python's, say) is never imported for it."""
    module, _, function = reference.rpartition(":")
    if function != source.function:
        return ""
    if module.endswith(".py"):
        file: str | None = module
    elif module != source.module or module.split(".")[0] in sys.stdlib_module_names:
        return ""
    else:
        file = _module_file(module)
    if file is None or Path(file).name != source.filename or Path(file).stem == "__main__":
        return ""
    try:
        text = Path(file).read_text()
    except (OSError, UnicodeDecodeError):
        return ""
    if source_hash(text) != source.sha256:
        return file
    return "same" if _defines(text, function) else ""


def _module_file(name: str) -> str | None:
    """The file of module ``name`` (``pkg.mod``), looked up on ``sys.path`` without
    importing it or its packages (whose ``__init__`` would run)."""
    path: list[str] | None = None
    spec = None
    for part in name.split("."):
        try:
            spec = importlib.machinery.PathFinder.find_spec(part, path)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        path = list(spec.submodule_search_locations or [])
    return spec.origin if spec is not None else None


def _defines(text: str, function: str) -> bool:
    """Whether source ``text`` defines ``function`` at its top level."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == function
               for node in tree.body)


def payload_features(payload: dict[str, Any]) -> tuple[list[str], int]:
    """The feature names a model was trained with (empty when unknown), and their number."""
    return list(payload["preprocessing"].get("features") or []), int(payload["spec"]["n_features"])


def _feature_names(task: Any) -> tuple[str, ...]:
    """The columns of a user's table the model reads (none for built-in datasets, NPZ
    files and functions: their features have no names)."""
    if not task.data:
        return ()
    if task.features:
        return tuple(task.features)
    from tuner.data.files import DataSpec, read_user_data
    from tuner.errors import DataError

    try:
        arrays = read_user_data(DataSpec(task.data, task.target, task.kind, None,
                                         task.aux_target))
    except DataError:
        return ()
    return getattr(arrays, "feature_names", ())  # Datasets' items have no named columns

