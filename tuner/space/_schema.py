"""The frozen objects a search-space file becomes."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.space._params import Categorical, Param, sample, walk

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Task:
    """What every trial trains and how it is judged.

    ``model`` is ``mlp``, ``cnn``, or ``package.module:function`` / ``file.py:function``
    naming your own builder (see :mod:`tuner.train.usermodel`). ``metric`` is a built-in
    metric's name or a function of yours (``metric(outputs, targets) -> float``, with
    ``direction``); ``loss`` a function of yours (``loss(outputs, targets) -> tensor``)
    in place of the built-in data loss. ``objective`` names a training function of
    yours, ``fn(config, report) -> value``, that replaces the tuner's loop (see
    :mod:`tuner.run.userloop`); its ``metric`` is the name of the value it returns.
    """

    dataset: str = "digits"
    model: str = "mlp"
    epochs: int = 20
    metric: str = "accuracy"
    direction: str = "maximize"
    # Size of the synthetic datasets; ignored by the scikit-learn ones.
    n_samples: int = 2000
    n_features: int = 20
    # Your own data instead of `dataset`: a file (CSV, NPZ, Parquet) or a function.
    data: str | None = None
    target: str | None = None
    kind: str | None = None  # classification or regression (inferred from the target)
    features: tuple[str, ...] | None = None
    aux_target: str | None = None
    # Added after the fields above: left out of fingerprints while at their defaults, so
    # that the studies created before them resume (see `_stable_repr`).
    loss: str | None = None
    objective: str | None = None


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class PrunerSpec:
    name: str = "median"
    options: tuple[tuple[str, Any], ...] = ()
    wrapped: PrunerSpec | None = None  # the inner pruner of `patient`

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class EarlyStopping:
    """Stop a trial when the validation metric has not improved by more than
    ``min_delta`` for ``patience`` epochs (``None``: never stop early)."""

    patience: int | None = None
    min_delta: float = 0.0


@dataclass(frozen=True)
class EngineSpec:
    """How trials are trained: one at a time (``sequential``), or ``population`` at once
    as one batched model (``fused``, see :mod:`tuner.fused`); in float32, or with the
    matrix products in bfloat16 or float16 (``precision: bf16`` or ``fp16``, mixed
    precision; float16 with loss scaling). ``compile: true`` compiles the model of each
    trial trained one at a time with ``torch.compile`` (the fused engine's step is its
    own batched code and is not compiled).

    It is not part of the study's fingerprint: a study started with one engine may be
    resumed, or joined by workers, with the other.
    """

    name: str = "sequential"
    population: int = 32
    precision: str = "fp32"
    compile: bool = False
    # Loader processes for Datasets (tuner.data.datasets); None: 0 on a CPU, a few on a GPU.
    loader_workers: int | None = None


@dataclass(frozen=True)
class Space:
    """A parsed, validated search space. Build one with :func:`tuner.load_space`."""

    name: str
    description: str
    task: Task
    params: tuple[Param, ...]
    sampler: SamplerSpec
    pruner: PrunerSpec
    early_stopping: EarlyStopping
    engine: EngineSpec = EngineSpec()
    # Parameters of yours (`user_params:`), for your model builder or training function.
    user_params: tuple[Param, ...] = ()
    seed: int = 0
    trials: int = 50
    source: str = "<memory>"
    # The mapping this space was parsed from (after overrides); it is what the
    # study database stores, so a worker elsewhere can rebuild the same space.
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def all_params(self) -> list[Param]:
        """Every parameter, built-in and yours, conditionals included."""
        return walk(self.params + self.user_params)

    def sample(self, trial: optuna.Trial) -> tuple[dict[str, Any], dict[str, Any]]:
        """Draw a trial's values: the built-in parameters', and those of ``user_params``."""
        return sample(self.params, trial), sample(self.user_params, trial)

    def fingerprint(self) -> str:
        """A short hash of everything that shapes the study; a resumed study must match.

        It is taken over the parsed objects, not the text, so equivalent files (a
        default spelled out, ``1e-3`` for ``0.001``, parameters in another order)
        match; the budget is left out.
        """
        shaping: tuple[Any, ...] = (_stable_repr(self.task), _canonical(self.params),
                                    self.sampler, self.pruner, self.early_stopping, self.seed)
        if self.user_params:
            shaping += (_canonical(self.user_params),)
        return hashlib.sha256(repr(shaping).encode()).hexdigest()[:16]


class _Repr(str):
    """A string that is its own repr, to splice into a repr unchanged."""

    def __repr__(self) -> str:
        return str(self)


# Fields added to Task since its first studies: in a fingerprint only when set.
_LATER_TASK_FIELDS = ("loss", "objective")


def _stable_repr(task: Task) -> _Repr:
    """The task's repr, without the later fields that keep their defaults: it is what a
    study created before they existed recorded, so such a study still resumes."""
    shown = [f"{f.name}={getattr(task, f.name)!r}" for f in dataclasses.fields(task)
             if f.name not in _LATER_TASK_FIELDS or getattr(task, f.name) != f.default]
    return _Repr(f"Task({', '.join(shown)})")


def _canonical(params: tuple[Param, ...]) -> list[Any]:
    """Parameters sorted by name at every level; the order of choices is kept (it matters)."""
    out: list[Any] = []
    for param in sorted(params, key=lambda p: p.name):
        if isinstance(param, Categorical):
            branches = [(choice, _canonical(sub)) for choice, sub in param.branches]
            out.append((param.name, param.choices, branches))
        else:
            out.append(param)
    return out
