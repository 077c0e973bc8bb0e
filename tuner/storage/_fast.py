"""Optuna's RDB storage, minus the round trips the trial loop pays on every trial.

A trial of a small model lasts a fraction of a second, and Optuna's ask, suggest and
tell each cost a transaction or a read of the study through SQLAlchemy's ORM. The calls
below repeat on every trial (or every suggestion) and have a cheaper equivalent;
everything else is Optuna's own code.

* ``study.ask`` first looks for a WAITING trial (an enqueued or retried one) by
  reloading every unfinished trial of the study. :class:`StudyStorage` first asks the
  database whether there is any WAITING trial at all (one indexed ``SELECT``), and
  only when there is does Optuna's reload run.
* The ``Trial`` that ``ask`` builds reads back the trial it has just created.
  :class:`StudyStorage` hands that first reader the :class:`~optuna.trial.FrozenTrial`
  the creation returned (a copy) once one ``SELECT`` has shown that the trial is still
  as created (RUNNING since the same start, nothing written to it: another process may
  have changed it in between), instead of the six of a full read.
* ``ask`` creates the trial, and ``tell`` sets its state and values, each in an ORM
  session that loads the study or trial row under a row lock. :class:`TunerRDBStorage`
  runs the same statements under the same lock (``FOR UPDATE``) in one Core
  transaction, with Optuna's checks and return values.
  Creating a trial from a template (an enqueued or retried one) is Optuna's code.
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
* Refreshing the cache of the study's trials (``study.trials``, and every suggestion of
  TPE with constant liar, which rereads each running trial): Optuna builds ORM objects
  of every row; :class:`TunerRDBStorage` reads the same rows with six ``SELECT``
  statements, falling back to Optuna's code where the database refuses
  the statement (too many ids in an ``IN`` list).
* Every running trial beats (a worker's first beat for a trial is on its main thread):
  :class:`TunerRDBStorage` updates or inserts Optuna's heartbeat row with one statement.
* Every trial starts by looking for stale trials (dead workers' RUNNING trials): Optuna
  loads each running trial and its heartbeat as ORM objects; :class:`TunerRDBStorage`
  reads the same pairs with one joined ``SELECT`` and applies the same rule.

The rows written are Optuna's, through Optuna's table definitions, so any Optuna
version that reads this schema reads these studies; ``tests/test_storage_fast.py``
checks them against a plain ``RDBStorage`` run of the same seeded study.

Overriding those private methods, and reading the cache's private state through
``self``, is what subclassing Optuna's storages takes; everything else of Optuna's
private API used here (its ORM models, its cache class) comes through
:mod:`tuner.storage.optuna_compat`, whose tests pin what these classes override and read.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import defaultdict
from collections.abc import Container, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import optuna
from optuna import distributions
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import (
    BindParameter,
    Integer,
    Select,
    bindparam,
    create_engine,
    func,
    or_,
    orm,
    select,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from tuner.storage.optuna_compat import (
    NOT_FOUND_MSG,
    TRIAL_COMPLETE_UTC,
    TRIAL_START_UTC,
    CachedStorage,
    StudyModel,
    TrialHeartbeatModel,
    TrialIntermediateValueModel,
    TrialModel,
    TrialParamModel,
    TrialSystemAttributeModel,
    TrialUserAttributeModel,
    TrialValueModel,
    lazy_version_manager,
    local_time,
    trial_id_of,
)

# The statements, built once: composing a SELECT costs SQLAlchemy more than SQLite
# takes to run it.
_ID: BindParameter[int] = bindparam("trial_id", type_=Integer)
_TRIAL_COLUMNS = (TrialModel.trial_id, TrialModel.number, TrialModel.state,
                  TRIAL_START_UTC, TRIAL_COMPLETE_UTC)
_TRIAL = select(*_TRIAL_COLUMNS).where(TrialModel.trial_id == _ID)


# The rows of a trial's five child tables; each statement's first column is the trial id.
_CHILD_COLUMNS = (
    (TrialValueModel.trial_id, TrialValueModel.objective, TrialValueModel.value,
     TrialValueModel.value_type),
    (TrialParamModel.trial_id, TrialParamModel.param_name, TrialParamModel.param_value,
     TrialParamModel.distribution_json),
    (TrialUserAttributeModel.trial_id, TrialUserAttributeModel.key,
     TrialUserAttributeModel.value_json),
    (TrialSystemAttributeModel.trial_id, TrialSystemAttributeModel.key,
     TrialSystemAttributeModel.value_json),
    (TrialIntermediateValueModel.trial_id, TrialIntermediateValueModel.step,
     TrialIntermediateValueModel.intermediate_value,
     TrialIntermediateValueModel.intermediate_value_type),
)


def _children(conditions: Sequence[Any] | None = None) -> tuple[Select[Any], ...]:
    """The five child-table statements: for the trial ``_ID``, or, with ``conditions``,
    for the trials they select (on the trials table, joined). Parameters come in the
    order they were set, as Optuna sorts them."""
    out = []
    for columns in _CHILD_COLUMNS:
        trial_id = columns[0]
        statement = (select(*columns).where(trial_id == _ID) if conditions is None else
                     select(*columns).join(TrialModel, TrialModel.trial_id == trial_id)
                     .where(*conditions))
        if trial_id.class_ is TrialParamModel:
            statement = statement.order_by(TrialParamModel.param_id)
        out.append(statement)
    return tuple(out)


_TRIAL_ROWS = _children()
TRIAL_STATE = select(TrialModel.state).where(TrialModel.trial_id == _ID)
_INSERT_PARAM = TrialParamModel.__table__.insert()
_STUDY: BindParameter[int] = bindparam("study_id", type_=Integer)
_ANY_WAITING = select(TrialModel.trial_id).where(
    TrialModel.study_id == _STUDY, TrialModel.state == TrialState.WAITING).limit(1)
_RUNNING_BEATS = (select(TrialHeartbeatModel.trial_id, TrialHeartbeatModel.heartbeat)
                  .join(TrialModel, TrialModel.trial_id == TrialHeartbeatModel.trial_id)
                  .where(TrialModel.study_id == _STUDY, TrialModel.state == TrialState.RUNNING))
_NOW = select(func.now())
_STUDY_EXISTS = select(StudyModel.study_id).where(StudyModel.study_id == _STUDY)
# A trial's state and times, and whether each child table has a row of it.
_AS_CREATED = select(TrialModel.state, TRIAL_START_UTC, TRIAL_COMPLETE_UTC,
                     *(select(columns[0]).where(columns[0] == _ID).exists()
                       for columns in _CHILD_COLUMNS)).where(TrialModel.trial_id == _ID)
# Trial creation and state changes, with the row locks Optuna's sessions take (FOR
# UPDATE; SQLite serializes writers instead and omits the clause).
_LOCK_STUDY = _STUDY_EXISTS.with_for_update()
_LOCK_TRIAL = TRIAL_STATE.with_for_update()
_INSERT_TRIAL = TrialModel.__table__.insert()
_PAST_TRIALS = select(func.count(TrialModel.trial_id)).where(
    TrialModel.study_id == _STUDY, TrialModel.trial_id < _ID)
_TRIALS = TrialModel.__table__
_WHERE_TRIAL = _TRIALS.c.trial_id == bindparam("b_trial_id", type_=Integer)  # not a column name
_UPDATE_TRIAL = _TRIALS.update().where(_WHERE_TRIAL)  # the columns set: the parameters
_VALUE_IDS = select(TrialValueModel.objective, TrialValueModel.trial_value_id).where(
    TrialValueModel.trial_id == _ID)
_BEATS = TrialHeartbeatModel.__table__
_BEAT = _BEATS.update().where(
    _BEATS.c.trial_id == bindparam("b_trial_id", type_=Integer)).values(heartbeat=func.now())
_FIRST_BEAT = _BEATS.insert()  # the heartbeat column's default: the database's clock
_VALUES = TrialValueModel.__table__
_INSERT_VALUE = _VALUES.insert()
_UPDATE_VALUE = _VALUES.update().where(
    _VALUES.c.trial_value_id == bindparam("value_id", type_=Integer))


@functools.cache
def _trials_query(with_states: bool, mode: str) -> tuple[Select[Any], tuple[Select[Any], ...]]:
    """The statements of :meth:`TunerRDBStorage._get_trials` for one shape of filter:
    with or without ``states``; trials ``after`` an id, ``both`` those and the ``ids``
    given, or ``all``."""
    conditions = [TrialModel.study_id == _STUDY]
    if with_states:
        conditions.append(TrialModel.state.in_(bindparam("states", expanding=True)))
    after = TrialModel.trial_id > bindparam("after", type_=Integer)
    if mode == "after":
        conditions.append(after)
    elif mode == "both":
        conditions.append(or_(TrialModel.trial_id.in_(bindparam("ids", expanding=True)), after))
    trials = select(*_TRIAL_COLUMNS).where(*conditions).order_by(TrialModel.trial_id)
    return cast("Select[Any]", trials), _children(conditions)


# Copies of new trials nobody read (created other than by study.ask) are forgotten past this.
_MAX_FRESH = 256


class TunerRDBStorage(optuna.storages.RDBStorage):
    """:class:`optuna.storages.RDBStorage` with cheaper trial reads, parameter writes and
    stale-trial checks (see the module).

    With ``schema_checked`` (and no other option), on a database whose Optuna schema the
    caller has found complete and current (:func:`~tuner.storage.optuna_compat.schema_head`),
    it opens as ``RDBStorage(url, engine_kwargs, skip_table_creation=True)`` does, but
    for the version manager, which is made on first use
    (:class:`~tuner.storage.optuna_compat.LazyVersionManager`). Optuna makes it as it
    opens, importing alembic and loading its migration scripts to check the schema: that
    costs a read-back command more than its reading does.
    """

    def __init__(self, url: str, engine_kwargs: dict[str, Any] | None = None, *args: Any,
                 schema_checked: bool = False, **kwargs: Any) -> None:
        if not schema_checked:
            super().__init__(url, engine_kwargs, *args, **kwargs)
            return
        if args or kwargs:
            raise TypeError("a storage on a checked schema takes only the URL and the "
                            "engine's options")
        # What RDBStorage.__init__ sets without heartbeats, table creation and the version
        # check (tests/test_optuna_compat.py pins that they are the same attributes).
        self.engine_kwargs = engine_kwargs or {}
        self.url = self._fill_storage_url_template(url)
        self.skip_compatibility_check = False
        self.heartbeat_interval = None
        self.grace_period = None
        self.heartbeat_stale_trial_callback = None
        self.failed_trial_callback = None
        self._set_default_engine_kwargs_for_mysql(url, self.engine_kwargs)
        self.engine = create_engine(self.url, **self.engine_kwargs)
        self.scoped_session = orm.scoped_session(orm.sessionmaker(bind=self.engine))
        self._version_manager = lazy_version_manager(self.url, self.engine, self.scoped_session)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        key = {"trial_id": trial_id}
        with self.engine.connect() as conn:  # one transaction: one consistent snapshot
            row = conn.execute(_TRIAL, key).first()
            if row is None:
                raise KeyError(NOT_FOUND_MSG)
            children = [[r[1:] for r in conn.execute(statement, key)] for statement in _TRIAL_ROWS]
        return _frozen(row, *children)

    def _is_as_created(self, trial: FrozenTrial) -> bool:
        """Whether the database still holds ``trial``, a trial :meth:`_create_new_trial`
        created without a template, as it was created: RUNNING since the same start, with
        no values, parameters, attributes or intermediate values. One statement, so one
        snapshot: what anyone (another process included) wrote to it since makes it False."""
        with self.engine.connect() as conn:
            row = conn.execute(_AS_CREATED, {"trial_id": trial_id_of(trial)}).first()
        if row is None:
            return False
        state, start, complete, *written = row
        return (state == TrialState.RUNNING and complete is None and not any(written)
                and local_time("start", start) == trial.datetime_start)

    def _get_trials(self, study_id: int, states: Container[TrialState] | None,
                    included_trial_ids: set[int], trial_id_greater_than: int) -> list[FrozenTrial]:
        """The study's trials (in ``states``) among ``included_trial_ids`` and those after
        ``trial_id_greater_than`` (what Optuna's cache asks for to refresh itself)."""
        included = [t for t in included_trial_ids if t <= trial_id_greater_than]
        mode = ("all" if trial_id_greater_than < 0 else "both" if included else "after")
        args: dict[str, Any] = {"study_id": study_id, "after": trial_id_greater_than,
                                "ids": included}
        if states is not None:
            assert isinstance(states, Iterable)
            args["states"] = list(states)
        query, child_queries = _trials_query(states is not None, mode)
        try:
            with self.engine.connect() as conn:
                if conn.execute(_STUDY_EXISTS, args).first() is None:
                    raise KeyError(NOT_FOUND_MSG)
                rows = conn.execute(query, args).all()
                children: list[dict[int, list[Any]]] = []
                for statement in child_queries:
                    by_trial: dict[int, list[Any]] = defaultdict(list)
                    for r in conn.execute(statement, args):
                        by_trial[r[0]].append(r[1:])
                    children.append(by_trial)
        except OperationalError:  # e.g. more ids than the database takes in an IN list
            return super()._get_trials(study_id, states, included_trial_ids,
                                       trial_id_greater_than)
        return [_frozen(row, *(c.get(row[0], ()) for c in children)) for row in rows]

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: distributions.BaseDistribution,
                         previous_distribution: distributions.BaseDistribution | None) -> None:
        if previous_distribution is None:  # Optuna's path looks the study's one up
            super()._set_trial_param(trial_id, param_name, param_value_internal, distribution,
                                     previous_distribution)
            return
        try:
            with self.engine.begin() as conn:
                state = conn.execute(TRIAL_STATE, {"trial_id": trial_id}).scalar()
                if state is None:
                    raise KeyError(NOT_FOUND_MSG)
                # Optuna's order: a finished trial is refused whatever the distribution.
                self.check_trial_is_updatable(trial_id, state)
                distributions.check_distribution_compatibility(previous_distribution,
                                                               distribution)
                conn.execute(_INSERT_PARAM, {
                    "trial_id": trial_id, "param_name": param_name,
                    "param_value": param_value_internal,
                    "distribution_json": distributions.distribution_to_json(distribution)})
        except IntegrityError as exc:  # as Optuna's session reports it
            raise _internal_error(exc) from exc

    def _create_new_trial(self, study_id: int,
                          template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """A new RUNNING trial (``study.ask``): Optuna's statements in one transaction
        under the study's row lock, without the ORM. Copying a template (enqueued and
        retried trials) is Optuna's own code."""
        if template_trial is not None:
            return super()._create_new_trial(study_id, template_trial)
        try:
            with self.engine.begin() as conn:
                if conn.execute(_LOCK_STUDY, {"study_id": study_id}).first() is None:
                    raise KeyError(NOT_FOUND_MSG)
                start = _utc_now()  # under the lock: numbers and start times agree
                inserted = conn.execute(_INSERT_TRIAL, {
                    "study_id": study_id, "number": None, "state": TrialState.RUNNING,
                    "datetime_start": start}).inserted_primary_key
                assert inserted is not None
                trial_id = inserted[0]
                number = conn.execute(_PAST_TRIALS, {"study_id": study_id,
                                                     "trial_id": trial_id}).scalar_one()
                conn.execute(_UPDATE_TRIAL, {"b_trial_id": trial_id, "number": number})
        except OperationalError:  # a lock timeout: Optuna's path retries with a backoff
            return super()._create_new_trial(study_id, template_trial)
        return FrozenTrial(
            number=number, state=TrialState.RUNNING, value=None, values=None,
            datetime_start=local_time("start", start), datetime_complete=None, params={},
            distributions={}, user_attrs={}, system_attrs={}, intermediate_values={},
            trial_id=trial_id)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        """``study.tell`` (and a worker taking a WAITING trial): the same checks,
        writes and return value as Optuna's, in one transaction under the trial's row
        lock, without the ORM."""
        key = {"trial_id": trial_id}
        try:
            with self.engine.begin() as conn:
                current = conn.execute(_LOCK_TRIAL, key).scalar()
                now = _utc_now()
                if current is None:
                    raise KeyError(NOT_FOUND_MSG)
                self.check_trial_is_updatable(trial_id, current)
                if values is not None:
                    stored = dict(conn.execute(_VALUE_IDS, key).all())
                    for objective, value in enumerate(values):
                        number, kind = TrialValueModel.value_to_stored_repr(value)
                        row = {"value": number, "value_type": kind}
                        if objective in stored:
                            conn.execute(_UPDATE_VALUE, {**row, "value_id": stored[objective]})
                        else:
                            conn.execute(_INSERT_VALUE, {**row, "trial_id": trial_id,
                                                         "objective": objective})
                if state == TrialState.RUNNING and current != TrialState.WAITING:
                    return False  # another worker took it (the values stay, as in Optuna)
                change: dict[str, Any] = {"state": state}
                if state == TrialState.RUNNING:
                    change["datetime_start"] = now
                if state.is_finished():
                    change["datetime_complete"] = now
                conn.execute(_UPDATE_TRIAL, {"b_trial_id": trial_id, **change})
        except IntegrityError:
            return False
        except OperationalError as exc:  # as Optuna's session reports it
            raise _internal_error(exc) from exc
        return True

    def record_heartbeat(self, trial_id: int) -> None:
        """A trial's heartbeat by the database's clock: Optuna's row, updated in place or
        inserted at the first beat, in one statement where Optuna's session takes three."""
        try:
            with self.engine.begin() as conn:
                if not conn.execute(_BEAT, {"b_trial_id": trial_id}).rowcount:
                    conn.execute(_FIRST_BEAT, {"trial_id": trial_id})
        except IntegrityError:  # ignored, as Optuna's session for it does
            pass
        except OperationalError as exc:
            raise _internal_error(exc) from exc

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


def _internal_error(exc: Exception) -> optuna.exceptions.StorageInternalError:
    """A database error as Optuna's session reports it."""
    return optuna.exceptions.StorageInternalError(
        f"An exception is raised during the commit. {exc!r}")


def _utc_now() -> datetime:
    """Now as Optuna stores times: naive UTC."""
    return datetime.now().astimezone(timezone.utc).replace(tzinfo=None)


def _frozen(row: Sequence[Any], values: Sequence[Any], params: Sequence[Any],
            user: Sequence[Any], system: Sequence[Any], steps: Sequence[Any]) -> FrozenTrial:
    """A FrozenTrial from a trials row and its child rows, converted as Optuna's
    ``RDBStorage._build_frozen_trial_from_trial_model`` converts them."""
    trial_id, number, state, start, complete = row
    objective_values: list[float] | None = None
    if values:
        objective_values = [0.0] * len(values)
        for objective, value, kind in values:
            objective_values[objective] = TrialValueModel.stored_repr_to_value(value, kind)
    dists = {name: distributions.json_to_distribution(text) for name, _, text in params}
    return FrozenTrial(
        number=number, state=state, value=None, values=objective_values,
        datetime_start=local_time("start", start),
        datetime_complete=local_time("complete", complete),
        params={name: dists[name].to_external_repr(value) for name, value, _ in params},
        distributions=dists,
        user_attrs={key: json.loads(text) for key, text in user},
        system_attrs={key: json.loads(text) for key, text in system},
        intermediate_values={
            step: TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind)
            for step, value, kind in steps},
        trial_id=trial_id)


class StudyStorage(CachedStorage):
    """Optuna's cached storage over a :class:`TunerRDBStorage`, which studies run on.

    ``optuna.create_study`` and ``load_study`` take it as it is (they wrap a bare
    ``RDBStorage`` in a plain ``_CachedStorage``).
    """

    _backend: TunerRDBStorage

    def __init__(self, backend: TunerRDBStorage) -> None:
        super().__init__(backend)
        # Trials created here without a template and not read since, as created.
        self._fresh: dict[int, FrozenTrial] = {}

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        if template_trial is None:
            with self._lock:
                _, number = self._trial_id_to_study_id_and_number[trial_id]
                if len(self._fresh) >= _MAX_FRESH:
                    self._fresh.clear()
                self._fresh[trial_id] = copy.deepcopy(self._studies[study_id].trials[number])
        return trial_id

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """The trial: the copy taken at its creation the first time it is read, if the
        database shows it unchanged since (one ``SELECT``); otherwise as Optuna's cache
        serves it (a finished trial from the cache, an unfinished one from the database)."""
        with self._lock:
            fresh = self._fresh.pop(trial_id, None)
        if fresh is not None and self._backend._is_as_created(fresh):
            return fresh
        return super().get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if isinstance(states, Sequence) and tuple(states) == (TrialState.WAITING,):
            with self._backend.engine.connect() as conn:
                waiting = conn.execute(_ANY_WAITING, {"study_id": study_id}).first()
            if waiting is None:
                return []
        return super().get_all_trials(study_id, deepcopy, states)

    # A write through this storage makes the copy taken at a trial's creation stale: it is
    # forgotten without asking the database.

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
