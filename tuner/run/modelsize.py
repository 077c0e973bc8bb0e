"""How large a built-in model a search space can draw, computed without building it.

:func:`largest_model` gives the parameter count (exact: ``tests/test_model_size.py``
checks it against torch) and an estimate of the memory training takes, for the largest
configuration of the space. :func:`check_model_size` refuses, before a study is
created, a space whose largest draw cannot train on the devices given: otherwise
``hidden: 100000000`` fails its first trials on an allocation of petabytes, and
``layers: 100000`` spends half a minute building a model of 400,000 modules, then most
of a minute on each batch.

>>> from tuner.space import load_space
>>> from tuner.data.builtin import load_task_data
>>> space = load_space("quick")
>>> size = largest_model(space, load_task_data(space.task, space.seed, "cpu"))
>>> size.params > 0 and size.describe().startswith("hidden=")
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.catalogue import CATALOGUE, MODELS
from tuner.errors import DataError, SpaceError
from tuner.space import Categorical, Fixed, FloatRange, IntRange, Param, walk

if TYPE_CHECKING:
    import torch

    from tuner.space import Space

# More hidden blocks than this are refused. The built-in networks are plain stacks
# without skip connections: a few dozen blocks already keep the gradient from reaching
# the first layers, and each block is 3-4 modules that every batch calls in Python.
# Building a stack and every batch through it take time in proportion to its depth:
# far deeper ones would take minutes to build and far longer to train.
MAX_LAYERS = 1000
# Below this, a draw's memory is not compared with the device's: every device trials run
# on has that much, and asking CUDA what is free creates a CUDA context in the process
# that asks (the parent of a pool of workers would hold one on each GPU for the whole run).
CHECK_FROM = 1 << 30
FLOAT = 4  # bytes: weights, gradients, optimizer state and activations are float32
# Copies of the weights an optimizer keeps (momentum; Adam's two moments; ...).
OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "adagrad": 1, "rmsprop": 1, "adam": 2,
                    "adamw": 2}
EVAL_ROWS = 8192  # rows evaluated at once (tuner.data.builtin.Splits.outputs)
SIZE_KNOBS = ("hidden", "layers", "batch_size")


@dataclass(frozen=True)
class ModelSize:
    """One configuration of a built-in model: its size knobs, its number of parameters
    and the bytes training it takes (:func:`training_bytes`)."""

    model: str
    hidden: int
    layers: int
    batch_size: int
    batchnorm: bool
    params: int
    train_bytes: int

    def describe(self) -> str:
        """``hidden=…, layers=…, batch_size=…`` (and ``batchnorm=True``)."""
        knobs = f"hidden={self.hidden}, layers={self.layers}, batch_size={self.batch_size}"
        return knobs + (", batchnorm=True" if self.batchnorm else "")


@dataclass(frozen=True)
class _Walk:
    params: int  # parameters (exact)
    saved: int  # floats per example that the backward pass keeps (estimate)
    widest: int  # floats per example of the widest activation


def _walk(model: str, *, n_features: int, n_outputs: int,
          image_shape: tuple[int, int, int] | None, hidden: int, layers: int,
          batchnorm: bool, dropout: bool = False, aux_outputs: int = 0) -> _Walk:
    """Go through the modules :class:`~tuner.train.models.MLP` or :class:`~tuner.train.models.CNN`
    would build, in their order, adding up their parameters and activations.

    A block's Linear/Conv has a bias unless batch norm follows (whose weight and bias
    are two more per unit). What the backward pass keeps of a block: the ReLU's output
    (the next layer's input), the Linear/Conv output when batch norm reads it, the
    dropout mask and output; a max-pool keeps its output and its indices (int64: two
    floats).
    """
    keeps = 1 + int(batchnorm) + 2 * int(dropout)
    shift = 2 if batchnorm else 1  # per unit: a bias, or batch norm's weight and bias
    if model == "cnn":
        if image_shape is None:
            raise DataError("model 'cnn' needs an image dataset")
        channels, height, width = image_shape
        params, saved = 0, channels * height * width
        widest = saved
        for i in range(layers):
            params += channels * hidden * 9 + shift * hidden
            out = hidden * height * width
            saved += keeps * out
            widest = max(widest, out)
            if i < 2 and min(height, width) >= 4:  # as CNN pools: twice at most
                height, width = height // 2, width // 2
                saved += 3 * hidden * height * width
            channels = hidden
        flat = channels * height * width
        return _Walk(params + flat * n_outputs + n_outputs, saved + 2 * n_outputs, widest)
    if model != "mlp":
        raise ValueError(f"not a built-in model: {model!r}")
    params, saved, widest, width = 0, n_features, n_features, n_features
    for _ in range(layers):
        params += width * hidden + shift * hidden
        saved += keeps * hidden
        widest = max(widest, hidden)
        width = hidden
    heads = n_outputs + aux_outputs
    return _Walk(params + width * heads + heads, saved + 2 * heads, widest)


def parameter_count(model: str, *, n_features: int, n_outputs: int,
                    image_shape: tuple[int, int, int] | None, hidden: int, layers: int,
                    batchnorm: bool, aux_outputs: int = 0) -> int:
    """The number of parameters of ``build_model(model, ...)`` with these arguments,
    computed without building it (dropout has none; only the MLP has an auxiliary head).

    >>> parameter_count("mlp", n_features=64, n_outputs=10, image_shape=None, hidden=128,
    ...                 layers=2, batchnorm=False)
    26122
    """
    return _walk(model, n_features=n_features, n_outputs=n_outputs, image_shape=image_shape,
                 hidden=hidden, layers=layers, batchnorm=batchnorm,
                 aux_outputs=aux_outputs if model == "mlp" else 0).params


def training_bytes(params: int, saved: int, widest: int, *, batch_size: int, n_train: int,
                   n_val: int, optimizer: str) -> int:
    """An estimate of the memory one trial holds while it trains, in bytes.

    The weights, their gradients, the optimizer's state (:data:`OPTIMIZER_STATES`) and
    the copy of the best epoch's weights, plus the larger of: a training batch's
    activations (``saved`` floats an example, and two of the widest in flight in the
    backward pass) or an evaluation chunk's (two of the widest, for the validation
    split's rows, up to :data:`EVAL_ROWS` at once). All in float32 (mixed precision
    keeps float32 weights and optimizer state). The transient copies of a checkpoint
    are not counted: a draw this estimate does not fit cannot train; one near the limit
    may still run out.
    """
    batch = min(batch_size, n_train)
    held = params * (3 + OPTIMIZER_STATES.get(optimizer, 2))
    activations = max(batch * (saved + 2 * widest), min(EVAL_ROWS, n_val) * 2 * widest)
    return FLOAT * (held + activations)


def _values(param: Param) -> list[Any]:
    """The extreme values ``param`` can take: both ends of a range, every choice."""
    if isinstance(param, Fixed):
        return [param.value]
    if isinstance(param, Categorical):
        return list(param.choices)
    if isinstance(param, IntRange):  # Optuna's highest value is on the step's grid
        return [param.low, param.low + (param.high - param.low) // param.step * param.step]
    assert isinstance(param, FloatRange)
    return [param.low, param.high]


def _drawable(space: Space, name: str) -> list[Any]:
    """The extreme values the space can give the built-in parameter ``name``, over every
    branch of every choice (its default when the space does not search it)."""
    found = [v for p in walk(space.params) if p.name == name for v in _values(p)]
    return found or [CATALOGUE[name].default]


def _rows(data: Any, split: str) -> int:
    """The rows of a split of arrays (``x_val``) or of Datasets (``val``)."""
    arrays = getattr(data, f"x_{split}", None)
    return int(arrays.shape[0]) if arrays is not None else len(getattr(data, split))


def _numbers(values: Iterable[Any]) -> list[float]:
    return [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def largest_model(space: Space, data: Any, overrides: dict[str, int] | None = None
                  ) -> ModelSize:
    """The draw of ``space``'s built-in model that takes the most memory to train on
    ``data`` (:class:`~tuner.data.builtin.Splits` or :class:`~tuner.data.datasets.DatasetSplits`, as
    :func:`tuner.data.builtin.load_task_data` gives: only their shapes are read).

    The size grows with ``hidden`` and ``batch_size``, with batch norm, dropout and the
    auxiliary head; with ``layers`` too, but for the CNN, whose one block without a
    second pooling keeps a wider head: so the largest draw is the largest ``hidden`` and
    ``batch_size`` with either end of ``layers`` and each ``batchnorm`` the space can
    draw. ``overrides`` holds knobs at given values (to tell which knob is to blame).
    """
    model = space.task.model
    fixed = overrides or {}

    def most(name: str) -> int:
        return int(fixed.get(name, max(_numbers(_drawable(space, name)))))

    layer_ends = ({fixed["layers"]} if "layers" in fixed
                  else {int(v) for v in _numbers(_drawable(space, "layers"))})
    dropout = max(_numbers(_drawable(space, "dropout")) or [0.0]) > 0
    aux = (data.aux_outputs if model == "mlp" and data.aux_train is not None
           and max(_numbers(_drawable(space, "aux_weight")) or [0.0]) > 0 else 0)
    optimizer = max((str(o) for o in _drawable(space, "optimizer")),
                    key=lambda o: OPTIMIZER_STATES.get(o, 2))
    hidden, batch_size = most("hidden"), most("batch_size")
    sizes = []
    for layers in sorted({min(layer_ends), max(layer_ends)}):
        for batchnorm in sorted({bool(b) for b in _drawable(space, "batchnorm")}):
            walked = _walk(model, n_features=data.n_features, n_outputs=data.n_outputs,
                           image_shape=data.image_shape, hidden=hidden, layers=layers,
                           batchnorm=batchnorm, dropout=dropout, aux_outputs=aux)
            need = training_bytes(walked.params, walked.saved, walked.widest,
                                  batch_size=batch_size, n_train=data.n_train,
                                  n_val=_rows(data, "val"),
                                  optimizer=optimizer)
            sizes.append(ModelSize(model, hidden, layers, batch_size, batchnorm,
                                   walked.params, need))
    return max(sizes, key=lambda s: (s.train_bytes, s.params))


def check_model_size(space: Space, data: Any, devices: Sequence[torch.device],
                     copies: int = 1) -> list[str]:
    """Refuse a space whose largest built-in model cannot train on ``devices`` (a
    :class:`~tuner.errors.SpaceError`, one line naming the parameters to lower); return
    warnings (one line each) for what may not fit.

    ``devices`` has one entry per worker (a device twice: two workers share it);
    ``copies`` is how many models a worker trains at once (the fused engine's
    population). The rule:

    * refused, whatever else runs: more than :data:`MAX_LAYERS` hidden blocks (no plain
      stack that deep trains, and building it alone takes seconds to minutes); or a
      largest draw whose estimated training memory (:func:`training_bytes`, times
      ``copies``) exceeds what a device has free now: its trials would fail on their
      first allocation, or make the machine swap;
    * warned: the largest draws of the workers on a device (one, or several that share
      it) together need more than half of its free memory. The estimate is low rather
      than high (training takes more than it, and torch needs memory of its own), so
      such a draw may not fit; but it may, or the workers may not draw their largest at
      once, so the study runs.

    A draw estimated under :data:`CHECK_FROM` is not compared with any device. Models of
    your own (``--model``) are not checked here: only built, as trials would.
    """
    if space.task.model not in MODELS:
        return []
    where = f"{space.source}: "
    most_layers = max(int(v) for v in _numbers(_drawable(space, "layers")))
    if most_layers > MAX_LAYERS:
        raise SpaceError(f"{where}params.layers: the space can draw layers={most_layers}, but "
                         f"the built-in {space.task.model} takes at most {MAX_LAYERS} hidden "
                         f"blocks (a plain stack deeper than that does not train, and is slow "
                         f"to build and to run); lower the upper bound of params.layers")
    largest = largest_model(space, data)
    need = largest.train_bytes * copies
    if need < CHECK_FROM:
        return []
    from tuner.train.device import free_memory

    workers = Counter(str(d) for d in devices)
    free = {name: free_memory(_device(name)) for name in workers}
    known = {name: n for name, n in free.items() if n is not None}
    if not known:
        return []
    device = min(known, key=lambda name: known[name])
    to_train = f"needs about {_gib(need)} to train" + (
        f" {copies} at once (engine fused)" if copies > 1 else "")
    if need > known[device]:
        names, alone = _to_blame(space, data, known[device], copies)
        keys = [f"params.{k}" for k in names]
        lower = (f"the upper bound of {' or '.join(keys)}" if alone or len(keys) == 1
                 else f"the upper bounds of {' and '.join(keys)}")
        raise SpaceError(
            f"{where}{', '.join(keys)}: the largest model the space can draw "
            f"({largest.describe()}) has {_count(largest.params)} parameters and {to_train}; "
            f"{device} has {_gib(known[device])} free: lower {lower}")
    warnings = []
    for name in sorted(known):
        together = need * workers[name]
        if 2 * together <= known[name]:
            continue
        sharing = (f"; {workers[name]} workers on {name} could need {_gib(together)} at once"
                   if workers[name] > 1 else "")
        warnings.append(f"{where}the largest model the space can draw ({largest.describe()}) "
                        f"{to_train}{sharing}, and {name} has {_gib(known[name])} free: "
                        f"its trials may run out of memory")
    return warnings


def _to_blame(space: Space, data: Any, free: int, copies: int) -> tuple[list[str], bool]:
    """The size knobs to lower, and whether lowering any one of them is enough: those
    above their defaults of which one alone, back at its default, makes the largest draw
    fit; else all of those above their defaults (else all: the data alone are too large
    for the defaults)."""
    largest = largest_model(space, data)
    above = [k for k in SIZE_KNOBS if getattr(largest, k) > CATALOGUE[k].default]
    alone = [k for k in above if copies * largest_model(
        space, data, {k: CATALOGUE[k].default}).train_bytes <= free]
    return (alone, True) if alone else (above or list(SIZE_KNOBS), False)


def _device(name: str) -> torch.device:
    import torch

    return torch.device(name)


def _count(n: int) -> str:
    return f"{n:,}" if n < 10 ** 6 else f"{n:.1e}"


def _gib(n: float) -> str:
    gib = n / 2 ** 30
    return f"{gib:.1e} GiB" if gib >= 10 ** 4 else f"{gib:.1f} GiB"

