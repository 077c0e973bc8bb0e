"""Optuna's RDB storage, minus the round trips the trial loop pays on every trial.

A trial of a small model lasts a fraction of a second, and Optuna's ask, suggest and
tell each cost a transaction or a read of the study through SQLAlchemy's ORM, about a
millisecond apiece on SQLite. Three of them repeat on every trial and have a cheaper
equivalent; everything else is Optuna's own code.

* ``study.ask`` first looks for a WAITING trial (an enqueued or retried one) by
  reloading every unfinished trial of the study. :class:`StudyStorage` first asks the
  database whether there is any WAITING trial at all (one indexed ``SELECT``), and
  only when there is does Optuna's reload run.
* The ``Trial`` that ``ask`` builds reads back the trial it has just created.
  :class:`StudyStorage` hands that first reader the :class:`~optuna.trial.FrozenTrial`
  the creation returned (a copy), instead of reading five tables again.
* ``suggest_*`` writes each parameter in an ORM session that loads the trial row.
  :class:`TunerRDBStorage` writes it with one ``SELECT`` of the trial's state and one
  ``INSERT``, after the same checks (the trial exists and is not finished, the
  distribution is compatible with the study's earlier one). The first parameter of
  each name in a process takes Optuna's own path, which looks the earlier distribution
  up in the database.
* Reading one trial back (``study.tell`` does, and the best trial's lookups):
  Optuna's ORM loads the trial row, then each of its five relationships lazily.
  :class:`TunerRDBStorage` runs the same six ``SELECT`` statements in one transaction
  without the ORM, and builds the :class:`~optuna.trial.FrozenTrial` with Optuna's own
  conversions.
* Every trial starts by looking for stale trials (dead workers' RUNNING trials): Optuna
  loads each running trial and its heartbeat as ORM objects; :class:`TunerRDBStorage`
  reads the same pairs with one joined ``SELECT`` and applies the same rule.

The rows written are Optuna's, through Optuna's table definitions, so any Optuna
version that reads this schema reads these studies; ``tests/test_storage_fast.py``
checks them against a plain ``RDBStorage`` run of the same seeded study.
"""

from __future__ import annotations

import copy
import json
import types
from collections.abc import Container, Sequence
from datetime import timedelta
from typing import Any

import optuna
from optuna import distributions
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb.models import (
    NOT_FOUND_MSG,
    TrialHeartbeatModel,
    TrialIntermediateValueModel,
    TrialModel,
    TrialParamModel,
    TrialSystemAttributeModel,
    TrialUserAttributeModel,
    TrialValueModel,
)
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import BindParameter, Integer, Select, bindparam, func, select
from sqlalchemy.exc import IntegrityError

# The statements, built once: composing a SELECT costs SQLAlchemy more than SQLite
# takes to run it.
_ID: BindParameter[int] = bindparam("trial_id", type_=Integer)
_TRIAL = select(TrialModel.number, TrialModel.state, TrialModel._datetime_start_utc,
                TrialModel._datetime_complete_utc).where(TrialModel.trial_id == _ID)


def _of_trial(*columns: Any) -> Select[Any]:
    """``columns`` of one model's rows for the trial."""
    return select(*columns).where(columns[0].class_.trial_id == _ID)


_TRIAL_ROWS = (
    _of_trial(TrialValueModel.objective, TrialValueModel.value, TrialValueModel.value_type),
    _of_trial(TrialParamModel.param_name, TrialParamModel.param_value,
              TrialParamModel.distribution_json).order_by(TrialParamModel.param_id),
    _of_trial(TrialUserAttributeModel.key, TrialUserAttributeModel.value_json),
    _of_trial(TrialSystemAttributeModel.key, TrialSystemAttributeModel.value_json),
    _of_trial(TrialIntermediateValueModel.step, TrialIntermediateValueModel.intermediate_value,
              TrialIntermediateValueModel.intermediate_value_type),
)
TRIAL_STATE = select(TrialModel.state).where(TrialModel.trial_id == _ID)
_INSERT_PARAM = TrialParamModel.__table__.insert()
_STUDY: BindParameter[int] = bindparam("study_id", type_=Integer)
_ANY_WAITING = select(TrialModel.trial_id).where(
    TrialModel.study_id == _STUDY, TrialModel.state == TrialState.WAITING).limit(1)
_RUNNING_BEATS = (select(TrialHeartbeatModel.trial_id, TrialHeartbeatModel.heartbeat)
                  .join(TrialModel, TrialModel.trial_id == TrialHeartbeatModel.trial_id)
                  .where(TrialModel.study_id == _STUDY, TrialModel.state == TrialState.RUNNING))
_NOW = select(func.now())

# Fresh trials nobody read (created WAITING by enqueue_trial, say) are forgotten past this.
_MAX_FRESH = 256


class TunerRDBStorage(optuna.storages.RDBStorage):
    """:class:`optuna.storages.RDBStorage` with a cheaper parameter write, trial read and
    stale-trial check (see the module)."""

    def get_trial(self, trial_id: int) -> FrozenTrial:
        key = {"trial_id": trial_id}
        with self.engine.connect() as conn:  # one transaction: one consistent snapshot
            row = conn.execute(_TRIAL, key).first()
            if row is None:
                raise KeyError(NOT_FOUND_MSG)
            values, params, user, system, steps = (conn.execute(statement, key).all()
                                                   for statement in _TRIAL_ROWS)
        number, state, start, complete = row
        objective_values: list[float] | None = None
        if values:
            objective_values = [0.0] * len(values)
            for objective, value, kind in values:
                objective_values[objective] = TrialValueModel.stored_repr_to_value(value, kind)
        dists = {name: distributions.json_to_distribution(text) for name, _, text in params}
        return FrozenTrial(
            number=number, state=state, value=None, values=objective_values,
            datetime_start=_local_time("start", start),
            datetime_complete=_local_time("complete", complete),
            params={name: dists[name].to_external_repr(value) for name, value, _ in params},
            distributions=dists,
            user_attrs={key: json.loads(text) for key, text in user},
            system_attrs={key: json.loads(text) for key, text in system},
            intermediate_values={
                step: TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind)
                for step, value, kind in steps},
            trial_id=trial_id)

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: distributions.BaseDistribution,
                         previous_distribution: distributions.BaseDistribution | None) -> None:
        if previous_distribution is None:  # Optuna's path looks the study's one up
            super()._set_trial_param(trial_id, param_name, param_value_internal, distribution,
                                     previous_distribution)
            return
        distributions.check_distribution_compatibility(previous_distribution, distribution)
        try:
            with self.engine.begin() as conn:
                state = conn.execute(TRIAL_STATE, {"trial_id": trial_id}).scalar()
                if state is None:
                    raise KeyError(f"No trial with trial_id {trial_id} exists.")
                self.check_trial_is_updatable(trial_id, state)
                conn.execute(_INSERT_PARAM, {
                    "trial_id": trial_id, "param_name": param_name,
                    "param_value": param_value_internal,
                    "distribution_json": distributions.distribution_to_json(distribution)})
        except IntegrityError as exc:  # as Optuna's session reports it
            raise optuna.exceptions.StorageInternalError(
                f"An exception is raised during the commit. {exc!r}") from exc

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """RUNNING trials of the study whose last heartbeat is older than the grace period
        (by the database's clock); a trial that never beat is never stale."""
        assert self.heartbeat_interval is not None
        grace = timedelta(seconds=self.grace_period if self.grace_period is not None
                          else 2 * self.heartbeat_interval)
        with self.engine.begin() as conn:
            now = conn.execute(_NOW).scalar()
            assert now is not None
            now = now.replace(tzinfo=None)  # naive, as Optuna stores the heartbeats
            beats = conn.execute(_RUNNING_BEATS, {"study_id": study_id}).all()
        return [trial_id for trial_id, beat in beats if now - beat > grace]


def _local_time(which: str, utc: Any) -> Any:
    """A stored (naive UTC) time as Optuna's ``TrialModel.datetime_<which>`` returns it."""
    prop = vars(TrialModel)[f"datetime_{which}"]
    return prop.fget(types.SimpleNamespace(**{f"_datetime_{which}_utc": utc}))


class StudyStorage(_CachedStorage):
    """Optuna's cached storage over a :class:`TunerRDBStorage`, which studies run on.

    ``optuna.create_study`` and ``load_study`` take it as it is (they wrap a bare
    ``RDBStorage`` in a plain ``_CachedStorage``).
    """

    def __init__(self, backend: TunerRDBStorage) -> None:
        super().__init__(backend)
        self._fresh: dict[int, FrozenTrial] = {}

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        with self._lock:
            _, number = self._trial_id_to_study_id_and_number[trial_id]
            if len(self._fresh) >= _MAX_FRESH:
                self._fresh.clear()
            self._fresh[trial_id] = copy.deepcopy(self._studies[study_id].trials[number])
        return trial_id

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            fresh = self._fresh.pop(trial_id, None)
        return fresh if fresh is not None else super().get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if isinstance(states, Sequence) and tuple(states) == (TrialState.WAITING,):
            with self._backend.engine.connect() as conn:
                waiting = conn.execute(_ANY_WAITING, {"study_id": study_id}).first()
            if waiting is None:
                return []
        return super().get_all_trials(study_id, deepcopy, states)

    # Any write to a trial makes the copy taken at its creation stale.

    def _written(self, trial_id: int) -> None:
        with self._lock:
            self._fresh.pop(trial_id, None)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: distributions.BaseDistribution) -> None:
        self._written(trial_id)
        super().set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        self._written(trial_id)
        return super().set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        self._written(trial_id)
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._written(trial_id)
        super().set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._written(trial_id)
        super().set_trial_system_attr(trial_id, key, value)
