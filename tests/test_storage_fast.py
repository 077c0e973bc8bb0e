"""The tuner's cheaper Optuna storage calls (tuner.storage._fast) against Optuna's own.

Every override must give what Optuna's RDBStorage gives on the same database: the same
FrozenTrials, the same sampled parameters, the same errors, the same stale trials.
"""

from __future__ import annotations

import datetime
import functools
import math
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sqlalchemy import text

from tuner.errors import StorageError
from tuner.storage import TunerStorage, close_connections
from tuner.storage.optuna_compat import LazyVersionManager

RDB = optuna.storages.RDBStorage


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[TunerStorage]:
    st = TunerStorage(f"sqlite:///{tmp_path / 'fast.db'}", heartbeat_interval=1,
                      grace_period=60).open()
    yield st
    st.engine.dispose()


def _fill(study: optuna.Study) -> None:
    """Trials of every kind: finished each way, running, with every kind of value."""
    for i in range(7):
        trial = study.ask()
        trial.suggest_float("x", -1, 1)
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_int("n", 1, 64, log=True)
        trial.suggest_categorical("opt", ["adam", "sgd", None])
        trial.report(float("nan") if i == 1 else 0.1 * i, 1)
        trial.report(float("inf"), 2)
        trial.report(float("-inf"), 3)
        trial.set_user_attr("seed", i)
        trial.set_user_attr("nested", {"a": [1, 2.5, None]})
        if i % 4 == 0:
            study.tell(trial, float("-inf") if i == 4 else 0.25 * i)
        elif i % 4 == 1:
            study.tell(trial, state=TrialState.PRUNED)
        elif i % 4 == 2:
            study.tell(trial, state=TrialState.FAIL)
    study.enqueue_trial({"x": 0.5})


def _rows(frozen: optuna.trial.FrozenTrial) -> str:
    """Every field; parameters in their order, mappings as sets (Optuna does not order
    them), as text so that NaN equals NaN."""
    return repr((frozen._trial_id, frozen.number, frozen.state, frozen.values,
                 frozen.datetime_start, frozen.datetime_complete, list(frozen.params.items()),
                 list(frozen.distributions.items()), sorted(frozen.user_attrs.items()),
                 sorted(frozen.system_attrs.items()),
                 sorted(frozen.intermediate_values.items())))


def test_get_trial_equals_optunas_for_every_kind_of_trial(storage: TunerStorage) -> None:
    study = optuna.create_study(storage=storage.studies, study_name="s")
    _fill(study)
    trials = RDB.get_all_trials(storage.optuna, study._study_id)
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED,
                                         TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING}
    for trial in trials:
        ours = storage.optuna.get_trial(trial._trial_id)
        assert _rows(ours) == _rows(RDB.get_trial(storage.optuna, trial._trial_id))
        assert _rows(ours) == _rows(trial)
    assert math.isnan(storage.optuna.get_trial(trials[1]._trial_id).intermediate_values[1])
    with pytest.raises(KeyError):
        storage.optuna.get_trial(10_000)


@pytest.mark.parametrize("states", [None, (TrialState.RUNNING,),
                                    (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING),
                                    ()])
@pytest.mark.parametrize(("included", "after"), [(set(), -1), ({3, 5, 30, 200}, 20),
                                                 (set(), 10), ({4, 12}, 1000)])
def test_get_trials_equals_optunas(storage: TunerStorage, states: tuple[TrialState, ...] | None,
                                   included: set[int], after: int) -> None:
    """Every filter Optuna's cache refreshes itself with: states, and the ids it holds
    unfinished plus those past the last finished one."""
    study = optuna.create_study(storage=storage.studies, study_name="s")
    for _ in range(4):
        _fill(study)
    ours = storage.optuna._get_trials(study._study_id, states, included, after)
    theirs = RDB._get_trials(storage.optuna, study._study_id, states, included, after)
    assert [_rows(t) for t in ours] == [_rows(t) for t in theirs]
    assert states == () or ours  # the case is not vacuous
    with pytest.raises(KeyError):
        storage.optuna._get_trials(study._study_id + 1, states, included, after)


@pytest.mark.slow
def test_trial_reads_equal_optunas_on_postgres(pg_url: str) -> None:
    st = TunerStorage(pg_url).open()
    name = f"fast-{datetime.datetime.now().timestamp()}"
    try:
        study = optuna.create_study(storage=st.studies, study_name=name)
        _fill(study)
        theirs = RDB._get_trials(st.optuna, study._study_id, None, set(), -1)
        for trial in theirs:
            assert _rows(st.optuna.get_trial(trial._trial_id)) == _rows(trial)
        running = {t._trial_id for t in theirs if t.state == TrialState.RUNNING}
        ours = st.optuna._get_trials(study._study_id, [TrialState.RUNNING, TrialState.WAITING],
                                     running, theirs[2]._trial_id)
        assert [_rows(t) for t in ours] == [_rows(t) for t in RDB._get_trials(
            st.optuna, study._study_id, [TrialState.RUNNING, TrialState.WAITING], running,
            theirs[2]._trial_id)]
    finally:
        optuna.delete_study(study_name=name, storage=st.optuna)
        st.engine.dispose()


def test_a_seeded_study_samples_and_stores_as_on_optunas_storage(tmp_path: Path,
                                                                  storage: TunerStorage) -> None:
    def run(on: optuna.storages.BaseStorage | str) -> list[optuna.trial.FrozenTrial]:
        study = optuna.create_study(storage=on, study_name="same",
                                    sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=4))
        study.enqueue_trial({"x": 0.25})  # a WAITING trial is still taken first

        def objective(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", -2, 2)
            k = trial.suggest_int("k", 1, 4)
            trial.report(x * k, 1)
            return (x - 0.3) ** 2 + k
        study.optimize(objective, n_trials=12)
        return study.get_trials()

    plain = run(f"sqlite:///{tmp_path / 'plain.db'}")
    ours = run(storage.studies)
    assert plain[0].params["x"] == 0.25
    assert [t.params for t in ours] == [t.params for t in plain]
    assert [(t.number, t.state, t.values, t.intermediate_values) for t in ours] == [
        (t.number, t.state, t.values, t.intermediate_values) for t in plain]
    stored = RDB.get_all_trials(storage.optuna, storage.optuna.get_study_id_from_name("same"))
    assert [t.distributions for t in stored] == [t.distributions for t in plain]


def test_the_trial_read_at_ask_is_a_copy_and_later_reads_see_the_database(
        storage: TunerStorage) -> None:
    study = optuna.create_study(storage=storage.studies, study_name="s")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    again = storage.studies.get_trial(trial._trial_id)  # no longer the creation's copy
    assert again.params == {"x": trial.params["x"]}
    study.tell(trial, 1.0)
    assert storage.studies.get_trial(trial._trial_id).state == TrialState.COMPLETE
    assert storage.studies._fresh == {}


def test_the_first_read_of_a_new_trial_unchanged_is_its_creation_copy(
        storage: TunerStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study(storage=storage.studies, study_name="s")
    trial_id = storage.studies.create_new_trial(study._study_id)
    full_reads = []
    read = storage.optuna.get_trial
    monkeypatch.setattr(storage.optuna, "get_trial",
                        lambda t: full_reads.append(t) or read(t))
    first = storage.studies.get_trial(trial_id)
    assert full_reads == []
    assert _rows(first) == _rows(RDB.get_trial(storage.optuna, trial_id))
    assert _rows(storage.studies.get_trial(trial_id)) == _rows(first)
    assert full_reads == [trial_id]  # a copy serves one read only
    study.enqueue_trial({"x": 0.5})  # created from a template: never a copy
    assert storage.studies._fresh == {}


# What another process may do to a trial between its creation and its first read.
_ELSEWHERE = {
    "completes it": lambda s, t: s.set_trial_state_values(t, TrialState.COMPLETE, [0.0]),
    "sets a param": lambda s, t: s.set_trial_param(t, "x", 0.5, FloatDistribution(0, 1)),
    "writes a value": lambda s, t: s.set_trial_state_values(t, TrialState.RUNNING, [1.0]),
    "reports": lambda s, t: s.set_trial_intermediate_value(t, 1, 0.5),
    "sets a user attr": lambda s, t: s.set_trial_user_attr(t, "k", 1),
    "sets a system attr": lambda s, t: s.set_trial_system_attr(t, "k", 1),
    "restarts it": lambda s, t: (s.set_trial_state_values(t, TrialState.WAITING),
                                 s.set_trial_state_values(t, TrialState.RUNNING)),
}


@pytest.mark.parametrize("change", list(_ELSEWHERE))
def test_a_new_trial_changed_by_another_process_is_read_from_the_database(
        storage: TunerStorage, change: str) -> None:
    """Optuna's ``test_read_trials_from_remote_storage``, for each kind of change."""
    study = optuna.create_study(storage=storage.studies, study_name="s")
    trial_id = storage.studies.create_new_trial(study._study_id)
    created = storage.optuna.get_trial(trial_id)
    other = TunerStorage(storage.url, heartbeat=False).open()  # its own engine and cache
    try:
        _ELSEWHERE[change](other.optuna, trial_id)
        theirs = RDB.get_trial(other.optuna, trial_id)
        assert _rows(theirs) != _rows(created)
        assert _rows(storage.studies.get_trial(trial_id)) == _rows(theirs)
        other.optuna.delete_study(study._study_id)
        with pytest.raises(KeyError):
            storage.studies.get_trial(trial_id)
    finally:
        other.engine.dispose()


def test_parameter_writes_check_as_optuna_does(storage: TunerStorage) -> None:
    study = optuna.create_study(storage=storage.studies, study_name="s")
    first = study.ask()
    first.suggest_float("x", 0, 1)  # Optuna's path: the study's first "x"
    second = study.ask()
    set_param = storage.studies.set_trial_param
    with pytest.raises(ValueError, match="different distribution"):
        set_param(second._trial_id, "x", 1.0, optuna.distributions.IntDistribution(0, 3))
    study.tell(second, 0.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_param(second._trial_id, "x", 0.5, FloatDistribution(0, 1))
    # A finished trial is refused before its distribution is compared, as in Optuna.
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_param(second._trial_id, "x", 1.0, optuna.distributions.IntDistribution(0, 3))
    incompatible = (second._trial_id, "x", 1.0, optuna.distributions.IntDistribution(0, 3),
                    FloatDistribution(0, 1))
    for set_on in (storage.optuna._set_trial_param,
                   functools.partial(RDB._set_trial_param, storage.optuna)):
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            set_on(*incompatible)
    with pytest.raises(optuna.exceptions.StorageInternalError):  # the same name twice
        set_param(first._trial_id, "x", 0.5, FloatDistribution(0, 1))
    with pytest.raises(KeyError):
        storage.optuna._set_trial_param(10_000, "x", 0.5, FloatDistribution(0, 1),
                                        FloatDistribution(0, 1))
    assert storage.optuna.get_trial(second._trial_id).params == {}


def test_stale_trials_are_optunas(storage: TunerStorage) -> None:
    study = optuna.create_study(storage=storage.studies, study_name="s")
    beating, old, never, done = (study.ask() for _ in range(4))
    for trial in (beating, old, done):
        storage.optuna.record_heartbeat(trial._trial_id)
    study.tell(done, 1.0)
    an_hour_ago = datetime.datetime.utcnow() - datetime.timedelta(hours=1)
    with storage.engine.begin() as conn:  # two of them last beat an hour ago
        conn.execute(text("UPDATE trial_heartbeats SET heartbeat = :t WHERE trial_id IN "
                          "(:a, :b)"), {"t": an_hour_ago, "a": old._trial_id,
                                        "b": done._trial_id})
    stale = storage.optuna._get_stale_trial_ids(study._study_id)
    assert stale == [old._trial_id]
    assert stale == RDB._get_stale_trial_ids(storage.optuna, study._study_id)
    assert never._trial_id not in stale
    storage.optuna.record_heartbeat(old._trial_id)  # beats again: an update, fresh
    assert storage.optuna._get_stale_trial_ids(study._study_id) == []
    with storage.engine.connect() as conn:
        beats = conn.execute(text("SELECT trial_id, heartbeat FROM trial_heartbeats")).all()
    assert sorted(t for t, _ in beats) == sorted(t._trial_id for t in (beating, old, done))
    assert RDB._get_stale_trial_ids(storage.optuna, study._study_id) == []


def _creations_and_state_changes(on: optuna.storages.RDBStorage) -> list[str]:
    """The same calls on a storage; what each returned or raised, and the trials after
    (times as whether they are set and in order)."""
    study_id = on.create_new_study([optuna.study.StudyDirection.MINIMIZE], "changes")
    before = datetime.datetime.now() - datetime.timedelta(seconds=1)
    ids = [on.create_new_trial(study_id) for _ in range(4)]
    waiting = on.create_new_trial(study_id, optuna.trial.create_trial(
        state=TrialState.WAITING, params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)}))
    outcomes: list[str] = []

    def attempt(*args: object) -> None:
        try:
            outcomes.append(repr(on.set_trial_state_values(*args)))  # type: ignore[arg-type]
        except Exception as exc:  # the kind of error is what must match
            outcomes.append(type(exc).__name__)

    attempt(ids[0], TrialState.COMPLETE, [1.5])
    attempt(ids[0], TrialState.COMPLETE, [2.0])  # finished already
    attempt(ids[1], TrialState.RUNNING, [float("inf")])  # not WAITING: False, value kept
    attempt(ids[1], TrialState.PRUNED, [float("-inf")])  # overwrites the kept value
    attempt(ids[2], TrialState.FAIL)
    attempt(waiting, TrialState.RUNNING)  # a worker takes the WAITING trial
    attempt(waiting, TrialState.RUNNING)  # and a second one cannot
    attempt(10_000, TrialState.COMPLETE, [0.0])
    try:
        on.create_new_trial(study_id + 1)
    except KeyError:
        outcomes.append("KeyError")
    for trial in on.get_all_trials(study_id):
        times = (trial.datetime_start, trial.datetime_complete)
        outcomes.append(repr((trial.number, trial.state, trial.values, trial.params,
                              [t is not None and before <= t <= datetime.datetime.now()
                               for t in times])))
    return outcomes


def test_trial_creation_and_state_changes_are_optunas(tmp_path: Path,
                                                      storage: TunerStorage) -> None:
    ours = _creations_and_state_changes(storage.optuna)
    assert ours == _creations_and_state_changes(RDB(f"sqlite:///{tmp_path / 'plain.db'}"))
    assert ours[:8] == ["True", "UpdateFinishedTrialError", "False", "True", "True", "True",
                        "False", "KeyError"]
    # Through the cache as a study uses it: ask numbers trials, tell finishes them.
    study = optuna.create_study(storage=storage.studies, study_name="s")
    trials = [study.ask() for _ in range(3)]
    study.tell(trials[1], 0.5)
    assert [t.number for t in trials] == [0, 1, 2]
    stored = RDB.get_trial(storage.optuna, trials[1]._trial_id)
    assert (stored.state, stored.value) == (TrialState.COMPLETE, 0.5)
    assert stored.datetime_start is not None and stored.datetime_complete is not None
    assert stored.datetime_start <= stored.datetime_complete


@pytest.mark.slow
def test_trial_creation_and_state_changes_are_optunas_on_postgres(pg_url: str) -> None:
    runs = []
    for backend in (lambda url: TunerStorage(url).open().optuna, RDB):
        on = backend(pg_url)
        try:
            runs.append(_creations_and_state_changes(on))
        finally:
            optuna.delete_study(study_name="changes", storage=on)
            on.engine.dispose()
    assert runs[0] == runs[1]


def _version_manager(storage: TunerStorage) -> object:
    return vars(storage.optuna)["_version_manager"]


def test_reading_a_current_database_leaves_optunas_version_check_out(
        storage: TunerStorage) -> None:
    """Opened to read, a database whose schema is complete and current gets Optuna's
    storage without its version manager (alembic, made on first use); one that lacks its
    version row is opened by Optuna, which writes the row, as ever."""
    optuna.create_study(study_name="read", storage=storage.studies)
    reader = TunerStorage(storage.url, create=False, heartbeat=False).open()
    assert isinstance(_version_manager(reader), LazyVersionManager)
    assert reader.study_names() == ["read"]
    assert reader.optuna.get_current_version() == RDB(storage.url).get_head_version()
    close_connections(reader)
    with storage.session() as conn:
        conn.execute(text("DELETE FROM version_info"))
    reader = TunerStorage(storage.url, create=False, heartbeat=False).open()
    assert not isinstance(_version_manager(reader), LazyVersionManager)
    close_connections(reader)
    with storage.session() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM version_info")).scalar() == 1


def test_reading_an_older_schema_still_says_to_upgrade(storage: TunerStorage) -> None:
    with storage.session() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'v3.0.0.d'"))
    close_connections(storage)
    with pytest.raises(StorageError, match="run `tuner upgrade --storage"):
        TunerStorage(storage.url, create=False, heartbeat=False).open()
