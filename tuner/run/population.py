"""Running a study with the fused engine: ``population`` trials at a time, one batched model.

Trials are claimed from the study's budget as the sequential runner claims them
(:func:`tuner.run.runner.claim`), up to ``population`` at once, and handed to
:func:`tuner.fused.train_population`. Each member is still a trial of its own: every
epoch it reports to its own Optuna trial (so its pruner decides on it), it stops early
on its own, and when it finishes it is recorded and told like a sequential trial
(:meth:`tuner.run.objective.Objective.conclude`). Its slot is then refilled with a newly
claimed trial while the budget has room. One heartbeat thread beats for every member.

A trial the fused engine cannot train (an optimizer setting it does not implement, an
auxiliary head) is trained by the sequential objective when it is claimed. Members are
checkpointed every ``checkpoint_every`` seconds in the sequential engine's format, and
the retry of a member whose worker died is resumed from its checkpoint by the
sequential objective.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from tuner.data.builtin import Splits, load_task_data
from tuner.errors import TunerError, UsageError
from tuner.fused import MemberResult, PopulationHooks, train_population, unsupported_reason
from tuner.run import runner
from tuner.run.heartbeat import Heartbeat
from tuner.run.objective import Objective, TrialWriter, root_number, worker_id
from tuner.space import Space
from tuner.space.sampling import one_population
from tuner.storage import TunerStorage
from tuner.storage.optuna_compat import (
    read_trial,
    storage_of,
    study_id_of,
    trial_id_of,
    wrapped_pruner_of,
)
from tuner.train.config import TrialConfig
from tuner.train.loop import Checkpoint, EpochMetrics, build_for
from tuner.train.metrics import METRICS
from tuner.train.seeding import trial_seed


@dataclass
class _Member:
    """A claimed trial in the population."""

    trial: optuna.Trial
    config: TrialConfig
    writer: TrialWriter
    lost: bool = False  # failed elsewhere as stale: its result is dropped
    done: bool = False
    checkpointed: bool = False


class _EpochView:
    """The study as its pruner sees it while one epoch's members are decided: the trials
    as read once for all of them (``Trial.should_prune`` reads them for each member,
    and a read of K running trials costs O(K)). Everything else is the study's own."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        self._study = study
        self._trials = trials

    def get_trials(self, deepcopy: bool = True,
                   states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def _reads_only(pruner: optuna.pruners.BasePruner | None) -> bool:
    """Whether ``pruner`` decides on a snapshot of the study as it would on the study:
    successive halving (and Hyperband, made of it) records each trial's rung in the
    study as it decides, and the trials decided after it must see that."""
    while isinstance(pruner, optuna.pruners.PatientPruner):
        pruner = wrapped_pruner_of(pruner)
    return not isinstance(pruner, (optuna.pruners.SuccessiveHalvingPruner,
                                   optuna.pruners.HyperbandPruner))


def check_fusable(space: Space) -> None:
    """Refuse a space the fused engine cannot train at all, before anything is written."""
    task = space.task
    why = (f"the space's training function (objective {task.objective}) is yours"
           if task.objective else
           f"the space's model is {task.model!r}" if task.model != "mlp" else
           f"the space's loss is yours ({task.loss})" if task.loss else
           f"the space's metric is yours ({task.metric})" if task.metric not in METRICS else
           "the data are Datasets, read batch by batch"
           if not load_task_data(task, 0, "cpu").in_memory else None)  # cached: as checked
    if why is not None:
        raise UsageError(f"--engine fused trains the built-in mlp on arrays with the built-in "
                         f"losses and metrics, but {why}; use --engine sequential")


class PopulationRun:
    """One worker's fused run of a study, until the budget, the timeout or ``max_trials``.

    Built by :func:`tuner.run.runner.run_study` for ``engine: fused``; :meth:`run` returns
    the stop reason and :attr:`ran` the trials run here to the end.
    """

    def __init__(self, study: optuna.Study, storage: TunerStorage, objective: Objective,
                 budget: int, population: int, *, deadline: float | None = None,
                 max_trials: int | None = None,
                 on_progress: Callable[[FrozenTrial], None] | None = None) -> None:
        self.study = study
        self.storage = storage
        self.objective = objective
        self.budget = budget
        self.population = population
        self.deadline = deadline
        self.max_trials = max_trials
        self.on_progress = on_progress
        self.ran = 0
        self.failures = 0
        self.members: list[_Member] = []
        self.heartbeat = Heartbeat(storage_of(study))
        self.backoff = runner.Backoff(storage)
        self.prunes = not isinstance(study.pruner, optuna.pruners.NopPruner)
        self.snapshot_safe = _reads_only(study.pruner)

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> str:
        """Train populations until there is nothing left to claim; the stop reason."""
        check_fusable(self.objective.space)
        data = self.objective.data()
        assert isinstance(data, Splits)  # check_fusable refuses Datasets
        waiting_since: float | None = None
        # One heartbeat thread for the whole run: it beats for whichever trials are
        # claimed, from the moment they are claimed (sampling 64 configs takes seconds).
        with self.heartbeat:
            while True:
                reason = self._stop_reason()
                if reason is not None:
                    return reason
                if self.failures >= runner.MAX_CONSECUTIVE_FAILURES:
                    raise TunerError(f"{self.failures} trials in a row failed; the last "
                                     f"error: {runner.last_error(self.study)}")
                ran = self.ran
                try:
                    claimed = self._claim(self._room())
                except BaseException:
                    self._abandon()
                    raise
                if claimed is runner.Claim.FULL:
                    return "budget" if self.ran else "already_done"
                if isinstance(claimed, list) and claimed:
                    waiting_since = None
                    self._train(claimed, data)
                elif self.ran > ran:  # every trial claimed trained sequentially
                    waiting_since = None
                else:
                    # The rest of the budget runs elsewhere (or the database is away).
                    waiting_since = waiting_since or time.monotonic()
                    if time.monotonic() - waiting_since > runner.MAX_WAIT:
                        return "budget"
                    time.sleep(runner.WAIT_POLL)

    def _train(self, configs: list[TrialConfig], data: Splits) -> None:
        """One population, refilled as members finish, until nothing more is claimed."""
        first = self.members[0].trial.number
        try:
            hooks = PopulationHooks(report=self._report, finish=self._finish_all,
                                    refill=self._refill, checkpoint=self._checkpoint,
                                    checkpoint_every=self.objective.checkpoint_every)
            train_population(configs, data, metric=self.objective.metric, hooks=hooks,
                             population=self.population,
                             seed=trial_seed(self.objective.space.seed, first),
                             precision=self.objective.precision)
        except runner.DATABASE_ERRORS as exc:
            # The members' heartbeats stop: once the database is back they are failed as
            # stale and retried, like a dead worker's.
            self._abandon(fail=False)
            self.backoff.failed(exc)
        except RuntimeError as exc:  # e.g. out of memory: the population's trials fail
            self._fail_live(str(exc).strip().splitlines()[0][:500])
        except BaseException:
            self._abandon()
            raise
        finally:
            self._abandon(fail=False)

    def _stop_reason(self) -> str | None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "timeout"
        if self.max_trials is not None and self.ran >= self.max_trials:
            return "max_trials"
        return None

    def _room(self) -> int:
        live = sum(not m.done for m in self.members)
        cap = self.population - live
        if self.max_trials is not None:
            cap = min(cap, self.max_trials - self.ran - live)
        return cap

    # -- claiming ----------------------------------------------------------------------

    def _claim(self, n: int) -> list[TrialConfig] | runner.Claim:
        """Up to ``n`` new members' configs; the trials the fused engine cannot train are
        trained here, one by one, by the sequential objective."""
        if n <= 0:
            return []
        try:
            claimed = runner.claim(self.study, self.storage, self.budget, n)
        except runner.DATABASE_ERRORS as exc:
            self.backoff.failed(exc)
            return []
        if isinstance(claimed, runner.Claim):
            return claimed
        self.backoff.reset()
        for trial in claimed:
            self.heartbeat.add(trial_id_of(trial))
        with one_population(self.study.sampler):
            return self._configs(claimed)

    def _configs(self, claimed: list[optuna.Trial]) -> list[TrialConfig]:
        """The claimed trials' configs, sampled as one population."""
        configs = []
        for i, trial in enumerate(claimed):
            try:
                config = self.objective.config(trial, root_number(trial))
                if (unsupported_reason(config) is not None or config.aux_weight
                        or self._has_checkpoint(trial)):
                    self.heartbeat.discard(trial_id_of(trial))  # run_trial beats for it
                    self._record(runner.run_trial(self.study, trial, self.objective))
                    continue
            except runner.DATABASE_ERRORS as exc:
                # Left RUNNING without beats: failed as stale and retried once it is back.
                self.heartbeat.discard(trial_id_of(trial))
                self.backoff.failed(exc)
                continue
            except BaseException:
                # Ctrl-C or an error while sampling: this trial and those after it will
                # not run (run_trial has told its own; telling it again changes nothing).
                runner.fail_untold(self.study, claimed[i:])
                for untold in claimed[i:]:
                    self.heartbeat.discard(trial_id_of(untold))
                raise
            writer = TrialWriter(trial, self.storage, self.objective.report_every)
            writer.set_user_attr("seed", config.seed)
            writer.set_user_attr("engine", "fused")
            writer.set_user_attr("worker", worker_id())
            self.objective.record_how(writer, compiled=False)  # the fused step is not
            self.members.append(_Member(trial, config, writer))
            configs.append(config)
        return configs

    def _refill(self, free: int) -> Sequence[TrialConfig]:
        if self._stop_reason() is not None:
            return []
        claimed = self._claim(min(free, self._room()))
        return [] if isinstance(claimed, runner.Claim) else claimed

    # -- the engine's hooks ------------------------------------------------------------

    def _report(self, rows: Sequence[tuple[int, EpochMetrics]]) -> list[int]:
        """One epoch of a group: every member's value, and the members to prune.

        Optuna's ``trial.report`` and ``should_prune`` would cost a transaction and a
        read of every running trial per member: K of each per epoch. Here the values go
        in one transaction and the pruner decides for every member on one read. A member
        that another worker failed as stale (and queued a retry of) is dropped: pruned
        here, never told.
        """
        members = [self.members[i] for i, _ in rows]
        if not self.prunes:
            for member, (_, metrics) in zip(members, rows, strict=True):
                try:
                    member.writer(metrics)  # kept for the trial's end, or written now
                except optuna.exceptions.UpdateFinishedTrialError:
                    member.lost = True
            return [i for i, _ in rows if self.members[i].lost]
        lost = self.storage.write_values({trial_id_of(m.trial): (metrics.epoch, metrics.val_metric)
                                          for m, (_, metrics) in zip(members, rows, strict=True)})
        trials = self.study.get_trials(deepcopy=False)
        frozen = {trial_id_of(t): t for t in trials}
        # Pruners read the study through its public methods: the view stands in for it.
        view = cast(optuna.Study, _EpochView(self.study, trials))
        pruned = []
        for member, (i, _) in zip(members, rows, strict=True):
            trial_id = trial_id_of(member.trial)
            try:
                member.lost = member.lost or trial_id in lost
                if member.lost:
                    pruned.append(i)
                elif self.snapshot_safe:
                    if self.study.pruner.prune(view, frozen[trial_id]):
                        pruned.append(i)
                elif self.study.pruner.prune(  # Trial.should_prune, on the values written
                        self.study, read_trial(self.study, trial_id)):
                    pruned.append(i)
            except optuna.exceptions.UpdateFinishedTrialError:  # a pruner's own write
                member.lost = True
                pruned.append(i)
        return pruned

    def _has_checkpoint(self, trial: optuna.Trial) -> bool:
        """A retry of a trial that was checkpointed: the sequential objective resumes it
        (its population's batch order and dropout draws are gone with its worker)."""
        root = root_number(trial)
        return root != trial.number and self.storage.load_checkpoint(
            study_id_of(self.study), root) is not None

    def _checkpoint(self, member_id: int, checkpoint: Checkpoint) -> None:
        member = self.members[member_id]
        trial_id = trial_id_of(member.trial)
        # A member that another worker failed as stale must not replace the checkpoint
        # its retry resumes from: it is dropped at its next report instead.
        if member.lost or read_trial(self.study, trial_id).state != TrialState.RUNNING:
            member.lost = True
            return
        try:
            # A retry re-reports the checkpoint's epochs: they must be recorded first.
            member.writer.flush()
        except optuna.exceptions.UpdateFinishedTrialError:  # failed since the read
            member.lost = True
            return
        self.storage.save_checkpoint(study_id_of(self.study), root_number(member.trial),
                                     checkpoint.epoch, checkpoint.to_bytes())
        member.checkpointed = True

    def _finish_all(self, finished: Sequence[tuple[int, MemberResult]]) -> None:
        """The members a group finished at one epoch: their rows in one transaction
        (``record_trials``: a transaction per member was a noticeable share of a member's
        protocol), then each is settled and told as the sequential objective's trials."""
        members = [(self.members[i], result) for i, result in finished]
        live = [(m, r) for m, r in members if not m.lost]
        # Done once written: if the write fails (Ctrl-C, the database away), they are
        # still members in training, which _abandon tells FAIL (retried on resume).
        lost = self.storage.record_trials([
            self.objective.trial_rows(m.trial, m.config, r, m.writer) for m, r in live])
        for member, _ in members:
            member.done = True
        for member, result in live:
            def settle(member: _Member = member, result: MemberResult = result) -> float:
                if trial_id_of(member.trial) in lost:  # failed as stale elsewhere meanwhile
                    raise optuna.exceptions.UpdateFinishedTrialError(
                        f"trial #{member.trial.number} has already finished")
                return self.objective.settle(member.trial, result,
                                             lambda: self._model(member.config, result),
                                             checkpointed=member.checkpointed)

            self._record(runner.tell_outcome(self.study, member.trial, settle))
        # Beating stops once the trials are told (or dropped).
        for member, _ in members:
            self.heartbeat.discard(trial_id_of(member.trial))

    def _model(self, config: TrialConfig, result: MemberResult) -> nn.Module:
        model = build_for(config, self.objective.data())
        model.load_state_dict(result.state_dict)
        return model

    def _record(self, frozen: FrozenTrial) -> None:
        self.ran += 1
        self.failures = self.failures + 1 if frozen.state == TrialState.FAIL else 0
        if self.on_progress is not None:
            self.on_progress(frozen)

    def _fail_live(self, error: str | None) -> None:
        """An error failed the population: every member still training is told FAIL (the
        study retries them on resume). It counts as one failure, not one per member."""
        failures = self.failures
        for member in self.members:
            if member.done or member.lost:
                continue
            member.done = True
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError,
                                     *runner.DATABASE_ERRORS):
                if error is not None:
                    member.trial.set_user_attr("error", error)
                self._record(self.study.tell(member.trial, state=TrialState.FAIL,
                                             skip_if_finished=True))
            self.heartbeat.discard(trial_id_of(member.trial))
        self.failures = failures + 1

    def _abandon(self, fail: bool = True) -> None:
        """The population is over: with ``fail`` (Ctrl-C, an unexpected error), its
        members still training are told FAIL; in any case nothing beats for them any
        more, so a member left RUNNING (the database was away) goes stale and is retried."""
        if fail:
            runner.fail_untold(self.study, [m.trial for m in self.members
                                            if not (m.done or m.lost)])
        for member in self.members:
            self.heartbeat.discard(trial_id_of(member.trial))
        self.members = []
