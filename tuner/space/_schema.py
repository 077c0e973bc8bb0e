"""The frozen objects a search-space file becomes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from tuner.space._params import Categorical, Param, walk


@dataclass(frozen=True)
class Task:
    """What every trial trains and how it is judged.

    ``model`` is ``mlp``, ``cnn``, or ``package.module:function`` / ``file.py:function``
    naming your own builder (see :mod:`tuner.usermodel`).
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


ENGINES = ("sequential", "fused")
PRECISIONS = ("fp32", "bf16", "fp16")


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
    seed: int = 0
    trials: int = 50
    source: str = "<memory>"
    # The mapping this space was parsed from (after overrides); it is what the
    # study database stores, so a worker elsewhere can rebuild the same space.
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def all_params(self) -> list[Param]:
        return walk(self.params)

    def fingerprint(self) -> str:
        """A short hash of everything that shapes the study; a resumed study must match.

        It is taken over the parsed objects, not the text, so equivalent files (a
        default spelled out, ``1e-3`` for ``0.001``, parameters in another order)
        match; the budget is left out.
        """
        shaping = (self.task, _canonical(self.params), self.sampler, self.pruner,
                   self.early_stopping, self.seed)
        return hashlib.sha256(repr(shaping).encode()).hexdigest()[:16]


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
