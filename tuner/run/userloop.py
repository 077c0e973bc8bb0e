"""Your own training loop: ``tuner start --objective my_train.py:fit``.

The function is called once per trial as ``fit(config, report)`` and returns the trial's
value (or None: the best value it reported). ``config`` is the trial's
:class:`~tuner.train.config.Config` (every built-in and ``user_params`` value, the seed, the
device, the epochs, the task; ``config.resume`` after a crash). ``report(epoch, value,
**metrics)`` records an epoch and returns True when the trial should stop: the pruner
pruned it, or early stopping ran out of patience. Everything else stays the tuner's:
the study-total budget across workers, heartbeats and the retry of a dead worker's
trial, Ctrl-C, seeding before the call, storage, queries, dashboard and report.

>>> def fit(config, report):                                  # doctest: +SKIP
...     model = build(config.user["width"]).to(config.device)
...     optimizer = tuner.optimizer_for(model, config)
...     for epoch in range(1, config.epochs + 1):
...         ...                                              # your training step
...         if report(epoch, accuracy, train_loss=loss):
...             break
...     return best_accuracy

The helpers below give such a loop the catalogue's techniques with the built-in loop's
exact semantics, one line each.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from tuner.data.builtin import load_task_data
from tuner.errors import TrialFailed
from tuner.run.objective import REPORT_EVERY, TrialWriter, root_number, worker_id
from tuner.space import Space
from tuner.storage import DATABASE_ERRORS, TrialRecorder
from tuner.storage.optuna_compat import study_id_of, trial_id_of
from tuner.train.config import Config, TrialConfig, trial_config
from tuner.train.loop import EpochMetrics
from tuner.train.loop import optimizer_for as _optimizer_for
from tuner.train.metrics import Metric, is_better
from tuner.train.optim import build_scheduler
from tuner.train.regularizers import apply_max_norm, penalized_weights
from tuner.train.regularizers import penalty as weight_penalty
from tuner.train.seeding import seed_everything, trial_seed
from tuner.usercode import import_reference

__all__ = ["Reporter", "UserObjective", "optimizer_for", "penalty", "regularize_step",
           "scheduler_for"]

FORMAT = "tuner-user-checkpoint/1"
# What report() may raise that is not the function's failure: the database went away, or
# another worker took the trial for dead. The runner handles these as for its own loop.
PASSED_ON = (*DATABASE_ERRORS, optuna.exceptions.UpdateFinishedTrialError)
RESERVED = ("trial", "epoch", "value", "val_metric", "checkpoint")


# -- helpers for a loop of yours ---------------------------------------------------------

def optimizer_for(model: nn.Module, config: Config | TrialConfig) -> torch.optim.Optimizer:
    """The trial's optimizer (``optimizer`` and its hyper-parameters) over ``model``'s
    parameters, exactly as the built-in loop builds it."""
    return _optimizer_for(model, trial_config(config))


def scheduler_for(optimizer: torch.optim.Optimizer, config: Config | TrialConfig) -> Any:
    """The trial's learning-rate schedule on ``optimizer``: step it once an epoch,
    ``scheduler.step()`` (``scheduler.step(value)`` for ``plateau``)."""
    trial = trial_config(config)
    return build_scheduler(optimizer, trial.schedule, **dict(trial.schedule_hyper))


def penalty(model: nn.Module, config: Config | TrialConfig) -> torch.Tensor:
    """The L1/L2 penalty to add to your loss: ``l1 * sum|w| + (l2 / 2) * sum w^2`` over
    the weights (parameters of two or more dimensions: not biases, not batch norm), as
    the built-in loop adds it; a zero tensor when the trial has neither."""
    trial = trial_config(config)
    weights = penalized_weights(model)
    if not weights or not (trial.l1 or trial.l2):
        first = next(model.parameters(), None)
        return torch.zeros((), device=None if first is None else first.device)
    return weight_penalty(weights, trial.l1, trial.l2)


def regularize_step(model: nn.Module, config: Config | TrialConfig) -> None:
    """What follows each optimizer step: max-norm clipping of every unit's incoming
    weights to ``max_norm`` (nothing when the trial has none)."""
    trial = trial_config(config)
    if trial.max_norm is not None:
        apply_max_norm(penalized_weights(model), trial.max_norm)


# -- the report callback ----------------------------------------------------------------

def _number(name: str, value: Any) -> float:
    """A number (a Python or NumPy number, a one-element tensor) as a float."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"report(): {name} must be a number, but got "
                        f"{type(value).__name__}") from None


class Reporter:
    """``report(epoch, value, *, checkpoint=None, **metrics) -> bool``: what a training
    function of yours calls after each epoch.

    ``value`` is the epoch's validation value (what the pruner and early stopping read);
    ``metrics`` are further per-epoch numbers: ``train_loss``, ``val_loss``, ``lr`` and
    ``seconds`` fill the tuner's columns, any other name is kept as a metric of its own
    (``tuner curves`` shows them). ``checkpoint``, any object ``torch.save`` writes and
    ``torch.load(weights_only=True)`` reads back (state dicts, tensors, numbers, strings,
    lists, dicts), is kept at most every ``checkpoint_every`` seconds; a retry of the trial
    after a crash gets the last one as ``config.resume``.
    """

    def __init__(self, writer: TrialWriter, metric: Metric, *, patience: int | None,
                 min_delta: float, history: list[EpochMetrics],
                 save: Callable[[int, bytes], None], checkpoint_every: float,
                 device: torch.device | None = None) -> None:
        self.writer = writer
        self.device = device or torch.device("cpu")
        self.metric = metric
        self.patience = patience
        self.min_delta = min_delta
        self.history = list(history)
        self.save = save
        self.checkpoint_every = checkpoint_every
        self.pruned = False
        self.stopped_early = False
        self.best_epoch = 0
        self.best_value = math.nan
        for past in self.history:
            self._track(past)
        self._last = time.perf_counter()
        self._saved_at = time.monotonic()
        self._checked = False  # whether a checkpoint has been read back once

    def _track(self, metrics: EpochMetrics) -> None:
        best = None if not self.best_epoch else self.best_value
        if is_better(self.metric, metrics.val_metric, best, self.min_delta):
            self.best_epoch, self.best_value = metrics.epoch, metrics.val_metric

    def __call__(self, *args: Any, checkpoint: Any = None, **metrics: Any) -> bool:
        epoch, value = self._epoch_and_value(args, metrics)
        last = self.history[-1].epoch if self.history else 0
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch <= last:
            raise ValueError(f"report(): epoch must be an integer > {last} (the last "
                             f"reported), but got {epoch!r}")
        number = _number("value", value)
        for name in metrics:
            if name in RESERVED or not name.isidentifier() or len(name) > 64:
                raise ValueError(f"report(): {name!r} cannot name a metric (reserved: "
                                 f"{', '.join(RESERVED)}; at most 64 characters)")
        given = {name: _number(name, v) for name, v in metrics.items()}
        now = time.perf_counter()
        seconds = given.pop("seconds", now - self._last)
        self._last = now
        row = EpochMetrics(epoch, given.pop("train_loss", math.nan),
                           given.pop("val_loss", math.nan), number, given.pop("lr", math.nan),
                           seconds, tuple(sorted(given.items())))
        self.history.append(row)
        self._track(row)
        stop = self.writer(row)  # reports the value; True: the pruner pruned the trial
        self.pruned = self.pruned or stop
        if not self.pruned and self.patience is not None and (
                epoch - self.best_epoch >= self.patience):
            self.stopped_early = True
        if checkpoint is not None and not (self.pruned or self.stopped_early):
            due = time.monotonic() - self._saved_at >= self.checkpoint_every
            if due or not self._checked:  # the first is checked, due or not
                blob = self._serialize(epoch, checkpoint)
                if due:
                    self.save(epoch, blob)
                    self._saved_at = time.monotonic()
        return self.pruned or self.stopped_early

    @staticmethod
    def _epoch_and_value(args: tuple[Any, ...], metrics: dict[str, Any]) -> tuple[Any, Any]:
        """``report(epoch, value, ...)`` or ``report(epoch=..., value=..., ...)``: the two
        taken out of ``metrics``, each given once."""
        if len(args) > 2:
            raise TypeError(f"report(epoch, value, **metrics) takes 2 positional arguments, "
                            f"but got {len(args)}")
        given = dict(zip(("epoch", "value"), args, strict=False))
        for key in ("epoch", "value"):
            if key in metrics:
                if key in given:
                    raise ValueError(f"report(): {key!r} is given twice (it is the trial's "
                                     "own; name your metric otherwise)")
                given[key] = metrics.pop(key)
        missing = [key for key in ("epoch", "value") if key not in given]
        if missing:
            raise TypeError(f"report() needs the epoch and its value, but got no "
                            f"{' and no '.join(missing)}")
        return given["epoch"], given["value"]

    def _serialize(self, epoch: int, state: Any) -> bytes:
        """The checkpoint as bytes; the first is read back at once, so that one the safe
        loader refuses fails now, not hours later when a retry needs it."""
        buffer = io.BytesIO()
        try:
            torch.save({"format": FORMAT, "epoch": epoch, "state": state,
                        "history": [tuple(vars(m).values()) for m in self.history],
                        "rng": rng_states(self.device)}, buffer)
        except Exception as exc:  # what pickle cannot write
            raise TypeError(f"report(checkpoint=...): torch.save cannot write the checkpoint "
                            f"({type(exc).__name__}: {exc})") from None
        blob = buffer.getvalue()
        if not self._checked:  # what cannot be read back safely is refused at once
            try:
                torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            except Exception as exc:  # what torch's safe loader refuses
                raise TypeError(f"report(checkpoint=...): the checkpoint cannot be read back "
                                f"with torch.load(weights_only=True) ({type(exc).__name__}); "
                                "give state dicts, tensors, numbers, strings, lists and "
                                "dicts") from None
            self._checked = True
        return blob

    def value(self, returned: Any, reference: str) -> float:
        """The trial's value: what the function returned, or (None) the best reported."""
        if returned is None:
            if not self.best_epoch:
                raise TrialFailed(f"objective {reference}: returned None and reported no "
                                  "finite value; return the trial's value")
            return self.best_value
        try:
            number = _number("the returned value", returned)
        except TypeError:
            raise TrialFailed(f"objective {reference}: must return the trial's value (a "
                              f"number, or None), but returned {type(returned).__name__}"
                              ) from None
        if not math.isfinite(number):
            raise TrialFailed(f"objective {reference}: returned {number} (the trial's value "
                              "must be a finite number)")
        return number


def rng_states(device: torch.device) -> dict[str, Any]:
    """Every generator a loop of yours may draw from (torch's, CUDA's, NumPy's, Python's),
    as what ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)),
        "random": (int(version), list(words), gauss)}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, Any], device: torch.device) -> None:
    """Put back what :func:`rng_states` took: a resumed loop draws what it would have."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, words, gauss = states["random"]
    random.setstate((version, tuple(words), gauss))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


# -- the objective ------------------------------------------------------------------------

class UserObjective:
    """Run one trial of ``space`` through the training function ``space.task.objective``
    (see the module's docstring) on ``device``, recording it in ``storage``.

    >>> objective = UserObjective(space, storage, torch.device("cpu"))   # doctest: +SKIP
    >>> study.optimize(objective, n_trials=3)                            # doctest: +SKIP
    """

    def __init__(self, space: Space, storage: TrialRecorder, device: torch.device,
                 checkpoint_every: float = 30.0, report_every: float = REPORT_EVERY) -> None:
        assert space.task.objective is not None
        self.space = space
        self.storage = storage
        self.device = device
        self.checkpoint_every = checkpoint_every
        self.report_every = report_every
        self.reference = space.task.objective
        self.function = import_reference(self.reference, "--objective")
        self.metric = Metric(space.task.metric, "any", space.task.direction)

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _data(self) -> Any:
        task = self.space.task
        return load_task_data(task, self.space.seed, str(self.device)).with_workers(
            self.space.engine.loader_workers)

    def _run(self, trial: optuna.Trial) -> float:
        study_id, root = study_id_of(trial.study), root_number(trial)
        values, user = self.space.sample(trial)
        task, early = self.space.task, self.space.early_stopping
        seed = trial_seed(self.space.seed, root)
        resumed = self._resume(study_id, root, trial)
        config = Config(
            TrialConfig.from_values(values, epochs=task.epochs, seed=seed,
                                    maximize=self.metric.maximize, model=task.model,
                                    patience=early.patience, min_delta=early.min_delta,
                                    user=user),
            device=self.device, task=task, number=trial.number, params={**values, **user},
            resume=None if resumed is None else resumed["state"],
            resume_epoch=0 if resumed is None else int(resumed["epoch"]), data=self._data)
        writer = TrialWriter(trial, self.storage, self.report_every)
        writer.set_user_attr("seed", seed)
        writer.set_user_attr("worker", worker_id())
        saved = resumed is not None

        def save(epoch: int, blob: bytes) -> None:
            nonlocal saved
            writer.flush()  # a retry re-reports the checkpoint's epochs: recorded first
            self.storage.save_checkpoint(study_id, root, epoch, blob)
            saved = True

        history = [] if resumed is None else [EpochMetrics(*row) for row in resumed["history"]]
        report = Reporter(writer, self.metric, patience=early.patience,
                          min_delta=early.min_delta, history=history, save=save,
                          checkpoint_every=self.checkpoint_every, device=self.device)
        seed_everything(seed)
        if resumed is not None and "rng" in resumed:  # the random streams go on too
            set_rng_states(resumed["rng"], self.device)
        try:
            try:
                returned = self.function(config, report)
            except optuna.TrialPruned:
                report.pruned, returned = True, None
            value = math.nan if report.pruned else report.value(returned, self.reference)
        except BaseException as exc:
            with contextlib.suppress(Exception):  # keep the epochs that were reported
                writer.flush()
            if isinstance(exc, PASSED_ON):  # the runner's to handle (a database away, ...)
                raise
            if isinstance(exc, Exception) and not isinstance(exc, TrialFailed):
                exc = TrialFailed(f"objective {self.reference}: raised {type(exc).__name__}: "
                                  f"{exc}".strip())
            if isinstance(exc, RuntimeError):  # the trial fails; the study goes on
                trial.set_user_attr("error", str(exc).strip().splitlines()[0][:500])
                raise exc from None
            raise
        outcome = ("pruned" if report.pruned else
                   "early_stopped" if report.stopped_early else "completed")
        pending, attrs = writer.take()
        self.storage.record_trial(trial_id=trial_id_of(trial), study_id=study_id, seed=seed,
                                  best_epoch=report.best_epoch or None, outcome=outcome,
                                  device=str(self.device), history=report.history,
                                  trial=trial, values=pending, user_attrs=attrs)
        if saved:
            self.storage.delete_checkpoint(study_id, root)
        if report.pruned:
            raise optuna.TrialPruned(f"pruned at epoch {len(report.history)}")
        return value

    def _resume(self, study_id: int, root: int, trial: optuna.Trial) -> dict[str, Any] | None:
        """The checkpoint of the trial this one retries, re-reported to it, or None."""
        if root == trial.number:
            return None
        blob = self.storage.load_checkpoint(study_id, root)
        if blob is None:
            return None
        # weights_only: a checkpoint from the database is data, never code to run.
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            return None  # not a checkpoint of a training function: start afresh
        for row in state["history"]:
            trial.report(EpochMetrics(*row).val_metric, EpochMetrics(*row).epoch)
        trial.set_user_attr("resumed_from_epoch", int(state["epoch"]))
        return state
