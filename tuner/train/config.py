"""The resolved configuration of one trial: every knob with its value, nothing searched.

:class:`TrialConfig` is what the training loop reads. :class:`Config` is what code of
yours receives (a model builder, a training function): the same values, read as
``config.hidden`` or ``config["hidden"]``, your ``user_params`` as ``config.user``, and
the trial's seed, device, epochs and task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.catalogue import CATALOGUE, OPTIMIZER_HYPER, SCHEDULE_HYPER

if TYPE_CHECKING:
    import torch

    from tuner.space import Task


class UserParams(Mapping[str, Any]):
    """The values of a trial's ``user_params``: a read-only mapping.

    >>> user = UserParams({"width_mult": 1.5})
    >>> user["width_mult"]
    1.5
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values = dict(values or {})

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            known = ", ".join(self._values) or "none (the space has no user_params)"
            raise KeyError(f"no user parameter {name!r} in this trial; it has: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(repr(sorted(self._values.items())))

    def __repr__(self) -> str:
        return f"UserParams({self._values!r})"


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
    # The trial's `user_params` values: read by your model builder or training function.
    user: UserParams = field(default_factory=UserParams)

    @property
    def lr(self) -> float:
        """The optimizer's (initial) learning rate."""
        return float(dict(self.optimizer_hyper)["lr"])

    @classmethod
    def from_values(cls, values: Mapping[str, Any], *, epochs: int, seed: int = 0,
                    maximize: bool = True, model: str = "mlp", patience: int | None = None,
                    min_delta: float = 0.0,
                    user: Mapping[str, Any] | None = None) -> TrialConfig:
        """Resolve sampled parameter values (names as in the search space) into a config;
        ``user`` holds the values of the space's ``user_params``."""
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
            patience=patience, min_delta=min_delta, user=UserParams(user),
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data (``user`` as a dict)."""
        return {**asdict(self), "user": dict(self.user)}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> TrialConfig:
        """The config :meth:`to_dict` gave (as an export file keeps it)."""
        known = {f: v for f, v in fields.items() if f in cls.__dataclass_fields__}
        known["user"] = UserParams(known.get("user"))
        for name in ("optimizer_hyper", "schedule_hyper"):
            if name in known:
                known[name] = tuple(tuple(pair) for pair in known[name])
        return cls(**known)


class Config(Mapping[str, Any]):
    """A trial's configuration, as code of yours receives it.

    Every built-in value is an attribute and a key (``config.dropout``,
    ``config["dropout"]``, ``config.lr``); ``config.user`` holds your ``user_params``;
    ``config.params`` every value the sampler drew, by its name in the space. A training
    function of yours (``--objective``) also gets the trial's ``number``, ``device``,
    ``task`` and, when the trial resumes after a crash, ``resume`` (the last checkpoint
    it reported) and ``resume_epoch``; ``config.data()`` loads the task's data as the
    tuner's loop would (arrays on the device, or your Datasets).

    >>> config = Config(TrialConfig(epochs=5, hidden=32, user=UserParams({"k": 3})))
    >>> config.hidden, config["epochs"], config.user["k"]
    (32, 5, 3)
    """

    def __init__(self, trial: TrialConfig, *, device: torch.device | str = "cpu",
                 task: Task | None = None, number: int | None = None,
                 params: Mapping[str, Any] | None = None, resume: Any = None,
                 resume_epoch: int = 0, data: Callable[[], Any] | None = None) -> None:
        self.trial = trial
        self.device = device
        self.task = task
        self.number = number
        self.params: Mapping[str, Any] = UserParams(params)
        self.resume = resume
        self.resume_epoch = resume_epoch
        self._load = data
        self._fields = trial.to_dict()

    def data(self) -> Any:
        """The task's data, loaded once per process: a :class:`~tuner.data.builtin.Splits` of
        tensors on the device, or your Datasets (:class:`~tuner.data.datasets.DatasetSplits`)."""
        if self._load is None:
            raise RuntimeError("this config carries no data (only a training function's "
                               "config does)")
        return self._load()

    @property
    def user(self) -> UserParams:
        return self.trial.user

    @property
    def seed(self) -> int:
        return self.trial.seed

    @property
    def epochs(self) -> int:
        return self.trial.epochs

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "trial":
            raise AttributeError(name)
        return getattr(self.trial, name)

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        number = "" if self.number is None else f"trial {self.number}, "
        return f"Config({number}seed {self.seed}, device {self.device}, user {dict(self.user)})"


def trial_config(config: TrialConfig | Config) -> TrialConfig:
    """The :class:`TrialConfig` behind either kind of config."""
    return config.trial if isinstance(config, Config) else config


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
