"""The resolved configuration of one trial: every knob with its value, nothing searched."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tuner.space._catalogue import CATALOGUE, OPTIMIZER_HYPER, SCHEDULE_HYPER


@dataclass(frozen=True)
class TrialConfig:
    """What the training loop needs. Defaults come from the search-space catalogue."""

    epochs: int
    seed: int = 0
    maximize: bool = True  # direction of the validation metric
    model: str = "mlp"
    hidden: int = CATALOGUE["hidden"].default
    layers: int = CATALOGUE["layers"].default
    batch_size: int = CATALOGUE["batch_size"].default
    dropout: float = 0.0
    dropout_kind: str = "bernoulli"
    batchnorm: bool = False
    l1: float = 0.0
    l2: float = 0.0
    input_noise: float = 0.0
    augment: bool = False
    max_norm: float | None = None
    aux_weight: float = 0.0
    optimizer: str = "adam"
    optimizer_hyper: tuple[tuple[str, Any], ...] = (("lr", 1e-3),)
    schedule: str = "none"
    schedule_hyper: tuple[tuple[str, Any], ...] = ()
    patience: int | None = None  # early stopping; None: never
    min_delta: float = 0.0

    @classmethod
    def from_values(cls, values: Mapping[str, Any], *, epochs: int, seed: int = 0,
                    maximize: bool = True, model: str = "mlp", patience: int | None = None,
                    min_delta: float = 0.0) -> TrialConfig:
        """Resolve sampled parameter values (names as in the search space) into a config."""
        def get(name: str) -> Any:
            return values.get(name, CATALOGUE[name].default)

        optimizer, schedule = get("optimizer"), get("schedule")
        return cls(
            epochs=epochs, seed=seed, maximize=maximize, model=model,
            hidden=get("hidden"), layers=get("layers"), batch_size=get("batch_size"),
            dropout=get("dropout"), dropout_kind=get("dropout_kind"), batchnorm=get("batchnorm"),
            l1=get("l1"), l2=get("l2"), input_noise=get("input_noise"), augment=get("augment"),
            max_norm=get("max_norm"), aux_weight=get("aux_weight"), optimizer=optimizer,
            optimizer_hyper=_optimizer_hyper(optimizer, values),
            schedule=schedule,
            schedule_hyper=_schedule_hyper(schedule, values, epochs, maximize),
            patience=patience, min_delta=min_delta,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _optimizer_hyper(name: str, values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Search-space names to torch's: ``beta1``/``beta2`` become ``betas``."""
    given = {h: values[h] for h in OPTIMIZER_HYPER[name] if h in values}
    hyper: dict[str, Any] = {"lr": given.pop("lr", CATALOGUE["lr"].default)}
    if "beta1" in given or "beta2" in given:
        hyper["betas"] = (given.pop("beta1", CATALOGUE["beta1"].default),
                          given.pop("beta2", CATALOGUE["beta2"].default))
    hyper.update(given)
    return tuple(sorted(hyper.items()))


def _schedule_hyper(name: str, values: Mapping[str, Any], epochs: int,
                    maximize: bool) -> tuple[tuple[str, Any], ...]:
    hyper = {h: values.get(h, CATALOGUE[h].default) for h in SCHEDULE_HYPER[name]}
    if "milestones" in hyper:
        spec = hyper["milestones"]
        items = spec.split(",") if isinstance(spec, str) else spec
        hyper["milestones"] = [int(m) for m in items]
    if name == "cosine" and hyper.get("T_max") is None:
        hyper["T_max"] = epochs
    if name == "plateau":
        hyper["mode"] = "max" if maximize else "min"
    return tuple(sorted(hyper.items()))
