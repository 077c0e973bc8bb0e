"""The Optuna objective: thin glue between the search space, the training loop and the trial."""

from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import torch

from tuner.data.builtin import load_task_data
from tuner.errors import TrialFailed, TunerError
from tuner.space import Space
from tuner.storage import DATABASE_ERRORS, TrialRecorder
from tuner.storage.optuna_compat import frozen_trial_of, study_id_of, trial_id_of
from tuner.train.config import TrialConfig
from tuner.train.loop import (
    Checkpoint,
    Data,
    EpochMetrics,
    TrainResult,
    build_for,
    compile_model,
    evaluate_split,
    train,
    uncompile_model,
)
from tuner.train.metrics import is_better, task_loss, task_metric
from tuner.train.seeding import seed_everything, trial_seed

# Without a pruner, per-epoch reports are written at most this often (seconds).
REPORT_EVERY = 1.0


def worker_id() -> str:
    """Who runs a trial, recorded on it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def state_bytes(model: torch.nn.Module) -> bytes:
    """The model's weights as ``torch.save`` bytes, on the CPU (read with weights_only)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def root_number(trial: optuna.Trial) -> int:
    """The number of the trial this one retries (the first of a chain), or its own."""
    # The trial as Optuna read it when it was asked for: a retry is created with its
    # system attributes, so there is no need to read it again.
    return int(frozen_trial_of(trial).system_attrs.get("failed_trial", trial.number))


def out_of_memory(exc: BaseException, config: TrialConfig, doing: str) -> str | None:
    """A trial's error message when ``exc`` is running out of memory (torch's, on a GPU
    or the CPU, or Python's), with the allocation that failed and the model's size
    knobs; None for any other error."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if not (isinstance(exc, MemoryError | torch.OutOfMemoryError)
            or "out of memory" in text.lower() or "can't allocate memory" in text):
        return None
    asked = re.search(r"(?:allocate|allocating) (\d+) bytes", text)
    gib = re.search(r"allocate ([\d.]+ [KMGT]iB)", text)
    size = (f" ({int(asked.group(1)) / 2 ** 30:.1f} GiB in one allocation)" if asked
            else f" ({gib.group(1)} in one allocation)" if gib else "")
    knobs = ", ".join(f"{k}={getattr(config, k)}" for k in ("hidden", "layers", "batch_size")
                      if getattr(config, k, None) is not None)
    return (f"ran out of memory {doing} the model{size} with {knobs}: {first}"[:500])


def _outcome(result: TrainResult) -> str:
    return ("diverged" if result.diverged else "pruned" if result.pruned
            else "early_stopped" if result.stopped_early else "completed")


class TrialWriter:
    """What a running trial adds to its Optuna trial: the validation metric of every
    epoch (this is the training loop's ``report`` callback) and user attributes.

    With a pruner, every epoch is reported at once and the pruner decides on it. With
    none (``NopPruner``), nothing reads the values before the trial ends, so they wait,
    with the attributes, and are written together: at most once every ``every``
    seconds, and by :meth:`flush`. On SQLite, each Optuna ``trial.report`` is a
    transaction through its ORM, a noticeable share of a small model's epoch; a batch
    of every epoch of a short trial costs about as much as one of them.
    """

    def __init__(self, trial: optuna.Trial, recorder: TrialRecorder,
                 every: float = REPORT_EVERY) -> None:
        self.trial = trial
        self.recorder = recorder
        self.every = every
        self.prunes = not isinstance(trial.study.pruner, optuna.pruners.NopPruner)
        self._values: list[tuple[int, float]] = []
        self._attrs: dict[str, Any] = {}
        self._last = time.monotonic()

    def set_user_attr(self, key: str, value: Any) -> None:
        self._attrs[key] = value

    def __call__(self, metrics: EpochMetrics) -> bool:
        if self.prunes:
            self.trial.report(metrics.val_metric, metrics.epoch)
            return self.trial.should_prune()
        self._values.append((metrics.epoch, metrics.val_metric))
        if time.monotonic() - self._last >= self.every:
            self.flush()
        return False

    def take(self) -> tuple[list[tuple[int, float]], dict[str, Any]]:
        """What is waiting, handed over to be written with something else (and forgotten
        here)."""
        waiting = self._values, self._attrs
        self._values, self._attrs = [], {}
        return waiting

    def flush(self) -> None:
        """Write what is waiting."""
        if self._values or self._attrs:
            self.recorder.write_trial(self.trial, self._values, self._attrs)
            self._values, self._attrs = [], {}
        self._last = time.monotonic()


class Objective:
    """Train one trial of ``space`` on ``device`` and record it in ``storage``.

    The validation metric of every epoch becomes an intermediate value of the Optuna
    trial (see :class:`TrialWriter`); the value returned is the best epoch's. Only a
    trial that becomes (or ties) the study's best is evaluated on the test split. A trial saves
    a checkpoint every ``checkpoint_every`` seconds of training; a retry of a trial
    whose worker died resumes from it, re-reporting the epochs already done.

    ``storage`` is a :class:`~tuner.storage.TunerStorage` for a study database, or a
    :class:`~tuner.storage.MemoryRecorder` with Optuna's in-memory storage.
    """

    def __init__(self, space: Space, storage: TrialRecorder, device: torch.device,
                 checkpoint_every: float = 30.0, report_every: float = REPORT_EVERY,
                 precision: str = "fp32", compile: bool = False) -> None:
        self.space = space
        self.precision = precision
        self.compile = compile
        self.storage = storage
        self.device = device
        self.checkpoint_every = checkpoint_every
        self.report_every = report_every
        self.metric = task_metric(space.task)
        self.loss = task_loss(space.task)
        # The best value read from each study so far: the study's best can only be as
        # good or better, so a trial that does not beat it needs no query.
        self._known_best: dict[int, float] = {}

    def record_how(self, writer: TrialWriter, compiled: bool | None = None) -> None:
        """A trial's precision and compilation, where not the defaults (fp32, eager) or
        where the trial already carries them (a retry inherits its failed original's
        attributes): ``tuner rerun`` replays in that precision and knows what will not
        replay."""
        compiled = self.compile if compiled is None else compiled
        inherited = writer.trial.user_attrs
        if self.precision != "fp32" or "precision" in inherited:
            writer.set_user_attr("precision", self.precision)
        if compiled or "compiled" in inherited:
            writer.set_user_attr("compiled", compiled)

    def data(self) -> Data:
        task = self.space.task
        data = load_task_data(task, self.space.seed, str(self.device))
        return data.with_workers(self.space.engine.loader_workers)

    def config(self, trial: optuna.Trial, number: int) -> TrialConfig:
        values, user = self.space.sample(trial)
        task, early = self.space.task, self.space.early_stopping
        return TrialConfig.from_values(
            values, epochs=task.epochs, seed=trial_seed(self.space.seed, number),
            maximize=self.metric.maximize, model=task.model, patience=early.patience,
            min_delta=early.min_delta, user=user)

    def check_model(self, draws: int = 5, *, devices: Sequence[torch.device] | None = None,
                    copies: int = 1) -> list[str]:
        """:func:`tuner.run.precheck.check_model` of this objective's space, on its device
        by default.

        >>> from tuner.space import load_space
        >>> from tuner.storage import MemoryRecorder
        >>> Objective(load_space("quick"), MemoryRecorder(), torch.device("cpu")).check_model()
        []
        """
        from tuner.run.precheck import check_model

        return check_model(self.space, devices=devices or [self.device], copies=copies,
                           draws=draws)

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        finally:
            self._release()

    def _run(self, trial: optuna.Trial) -> float:
        study_id = study_id_of(trial.study)
        root = root_number(trial)
        config = self.config(trial, root)
        data = self.data()
        seed_everything(config.seed)
        writer = TrialWriter(trial, self.storage, self.report_every)
        writer.set_user_attr("seed", config.seed)
        writer.set_user_attr("worker", worker_id())
        self.record_how(writer)
        try:
            model = build_for(config, data)
        except (RuntimeError, MemoryError) as exc:
            raise self._failed(trial, TrialFailed(out_of_memory(exc, config, "building")
                                                  or str(exc).strip())) from None
        if self.compile:
            compile_model(model)
        resume = self._resume(study_id, root, trial)
        saved = resume is not None

        def save(checkpoint: Checkpoint) -> None:
            nonlocal saved
            # A retry re-reports the checkpoint's epochs: they must be recorded first.
            writer.flush()
            self.storage.save_checkpoint(study_id, root, checkpoint.epoch, checkpoint.to_bytes())
            saved = True

        try:
            try:
                result = train(model, data, config, metric=self.metric, report=writer,
                               resume=resume, checkpoint=save,
                               checkpoint_every=self.checkpoint_every, precision=self.precision,
                               loss=self.loss)
            except BaseException as exc:
                # Keep the epochs that were trained; the original error is the one to raise.
                with contextlib.suppress(Exception):
                    writer.flush()
                if isinstance(exc, Exception) and not isinstance(
                        exc, (RuntimeError, TunerError, *DATABASE_ERRORS)):
                    # What data or code of yours raised mid-trial (a label out of range,
                    # say): that trial fails with it, as a RuntimeError does.
                    raise self._failed(trial, TrialFailed(
                        f"{type(exc).__name__}: {exc}".strip())) from exc
                oom = out_of_memory(exc, config, "training")
                if oom is not None:
                    raise self._failed(trial, TrialFailed(oom)) from None
                if isinstance(exc, RuntimeError):  # the trial fails with its message
                    self._failed(trial, exc)
                raise
            return self.conclude(trial, config, result, lambda: model, writer,
                                 checkpointed=saved)
        finally:
            if self.compile:
                uncompile_model(model)

    @staticmethod
    def _failed(trial: optuna.Trial, exc: BaseException) -> BaseException:
        """Record why ``trial`` fails (the first line of ``exc``) on it; ``exc``."""
        trial.set_user_attr("error", str(exc).strip().splitlines()[0][:500])
        return exc

    def conclude(self, trial: optuna.Trial, config: TrialConfig, result: TrainResult,
                 trained: Callable[[], torch.nn.Module], writer: TrialWriter, *,
                 checkpointed: bool = False) -> float:
        """Record a trained trial; return its value, or raise ``TrialPruned``.

        What ``writer`` still holds is written with the trial's own rows, in one write.
        ``trained()`` gives the model holding the best epoch's weights; it is called only
        when the trial becomes (or ties) the study's best (to evaluate the test split and
        keep the weights). The fused engine writes the rows of the members it finishes
        together (:meth:`trial_rows`, ``TunerStorage.record_trials``), then settles each.
        """
        self.storage.record_trial(**self.trial_rows(trial, config, result, writer))
        return self.settle(trial, result, trained, checkpointed=checkpointed)

    def trial_rows(self, trial: optuna.Trial, config: TrialConfig, result: TrainResult,
                   writer: TrialWriter) -> dict[str, Any]:
        """``record_trial``'s arguments for a trained trial: its rows, and what ``writer``
        still holds (handed over)."""
        values, attrs = writer.take()
        return dict(trial_id=trial_id_of(trial), study_id=study_id_of(trial.study),
                    seed=config.seed, best_epoch=result.best_epoch or None,
                    outcome=_outcome(result), device=str(self.device), history=result.history,
                    trial=trial, values=values, user_attrs=attrs)

    def settle(self, trial: optuna.Trial, result: TrainResult,
               trained: Callable[[], torch.nn.Module], *, checkpointed: bool = False) -> float:
        """What follows a recorded trial (see :meth:`conclude`): its checkpoint goes, a
        new best gets its test metric and weights; its value, or ``TrialPruned``."""
        if checkpointed:
            self.storage.delete_checkpoint(study_id_of(trial.study), root_number(trial))
        if result.pruned or result.diverged or not result.best_epoch:
            raise optuna.TrialPruned(f"{_outcome(result)} at epoch {len(result.history)}")
        if self._is_new_best(trial.study, result.best_metric):
            model = trained()
            data = self.data()
            if data.has("test"):
                _, test_metric = evaluate_split(model, data, "test", self.metric, self.loss,
                                                self.space.task.model)
                self.storage.set_test_metric(trial_id_of(trial), float(test_metric))
            self.storage.save_model(trial_id_of(trial), state_bytes(model))
        return result.best_metric

    def _resume(self, study_id: int, root: int, trial: optuna.Trial) -> Checkpoint | None:
        if root == trial.number:
            return None
        blob = self.storage.load_checkpoint(study_id, root)
        if blob is None:
            return None
        checkpoint = Checkpoint.from_bytes(blob)
        # The retried trial's curve continues where the dead one stopped.
        for metrics in checkpoint.history:
            trial.report(metrics.val_metric, metrics.epoch)
        trial.set_user_attr("resumed_from_epoch", checkpoint.epoch)
        return checkpoint

    def _release(self) -> None:
        """Give cached device memory back between trials (the data copy stays).

        Only the young generations are collected (a trial's own cycles, if any, are
        young): a full collection walks every object of the worker (torch, Optuna and
        its cached trials: hundreds of thousands), far longer than generations 0 and 1
        take; it was paid per trial on a GPU.
        """
        if self.device.type == "cuda":
            gc.collect(1)
            torch.cuda.empty_cache()

    def _is_new_best(self, study: optuna.Study, value: float) -> bool:
        """Whether ``value`` equals or beats the study's best so far. A tie counts: which
        of tied trials Optuna calls the best is up to the database's row order, and
        whichever it is must have its test metric and weights."""
        def at_least(best: float) -> bool:
            return value == best or is_better(self.metric, value, best)

        known = self._known_best.get(study_id_of(study))
        if known is not None and not at_least(known):
            return False
        try:
            best = study.best_value
        except ValueError:  # no complete trial yet
            return True
        self._known_best[study_id_of(study)] = best
        return at_least(best)
