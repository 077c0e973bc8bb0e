"""What tuner/storage/optuna_compat.py relies on of Optuna's private API, pinned.

Each wrapper is checked on a real study against what Optuna's public API says (a trial's
number and id through the storage's lookups, a study's name and id, a trial read back),
and each private module, name and attribute it reaches is checked to exist with the
shape the tuner uses, so that an Optuna upgrade that moves one fails here, naming it.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import select

from tuner.storage import StudyStorage, TunerRDBStorage, TunerStorage, close_connections
from tuner.storage import optuna_compat as compat

WHERE = f"Optuna {optuna.__version__}"

# Every name tuner/storage/optuna_compat.py imports from Optuna's private modules.
PRIVATE_IMPORTS = {
    "optuna.storages._cached_storage": ("_CachedStorage",),
    "optuna.storages._rdb.storage": ("_VersionManager",),
    "optuna.storages._rdb.models": (
        "MAX_INDEXED_STRING_LENGTH", "NOT_FOUND_MSG", "StudyModel", "TrialHeartbeatModel",
        "TrialIntermediateValueModel", "TrialModel", "TrialParamModel",
        "TrialSystemAttributeModel", "TrialUserAttributeModel", "TrialValueModel"),
}
# The tables the tuner reads and writes through those models, by model.
TABLES = {
    "StudyModel": "studies", "TrialModel": "trials", "TrialHeartbeatModel": "trial_heartbeats",
    "TrialIntermediateValueModel": "trial_intermediate_values",
    "TrialParamModel": "trial_params", "TrialSystemAttributeModel": "trial_system_attributes",
    "TrialUserAttributeModel": "trial_user_attributes", "TrialValueModel": "trial_values",
}


@pytest.fixture
def storage() -> Iterator[TunerStorage]:
    st = TunerStorage("sqlite:///:memory:", heartbeat=False).open()
    yield st
    st.engine.dispose()


@pytest.fixture
def study(storage: TunerStorage) -> optuna.Study:
    """A study on the tuner's storage, as workers run it: a finished trial, a running one."""
    study = optuna.create_study(study_name="compat", storage=storage.studies)
    first = study.ask()
    first.suggest_float("x", 0, 1)
    study.tell(first, 0.5)
    running = study.ask()
    running.suggest_int("n", 1, 4)
    return study


def test_optunas_private_modules_hold_the_names_the_tuner_imports() -> None:
    missing = []
    for module_name, names in PRIVATE_IMPORTS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(f"the module {module_name}")
            continue
        missing += [f"{module_name}.{name}" for name in names if not hasattr(module, name)]
    assert not missing, (f"{WHERE} moved what tuner.storage.optuna_compat imports: "
                         f"{', '.join(missing)}")


def test_optunas_models_are_its_tables() -> None:
    for model, table in TABLES.items():
        assert getattr(compat, model).__tablename__ == table, (
            f"{WHERE}: {model} no longer maps the {table!r} table")
    for column in ("trial_id", "number", "study_id", "state"):
        assert hasattr(compat.TrialModel, column), f"{WHERE}: TrialModel has no {column}"
    assert compat.TRIAL_START_UTC.property.columns[0].name == "datetime_start", (
        f"{WHERE}: TrialModel._datetime_start_utc is not the datetime_start column")
    assert compat.TRIAL_COMPLETE_UTC.property.columns[0].name == "datetime_complete", (
        f"{WHERE}: TrialModel._datetime_complete_utc is not the datetime_complete column")
    length = compat.StudyModel.__table__.c.study_name.type.length
    assert length == compat.MAX_INDEXED_STRING_LENGTH, (
        f"{WHERE}: MAX_INDEXED_STRING_LENGTH ({compat.MAX_INDEXED_STRING_LENGTH}) is not the "
        f"length of studies.study_name ({length})")


def test_the_stored_representations_round_trip() -> None:
    """The conversions the fast paths write and read values with (_fast, _store)."""
    for value in (0.25, float("inf"), float("-inf")):
        stored = compat.TrialValueModel.value_to_stored_repr(value)
        assert compat.TrialValueModel.stored_repr_to_value(*stored) == value
    for value in (0.25, float("inf"), float("-inf"), float("nan")):
        stored = compat.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
        back = compat.TrialIntermediateValueModel.stored_repr_to_intermediate_value(*stored)
        assert back == value or (math.isnan(back) and math.isnan(value))


def test_trial_and_study_ids_are_the_storages(storage: TunerStorage,
                                              study: optuna.Study) -> None:
    study_id = compat.study_id_of(study)
    assert study_id == storage.optuna.get_study_id_from_name(study.study_name)
    assert storage.optuna.get_study_name_from_id(study_id) == "compat"
    frozen = study.get_trials()
    for trial in frozen:
        trial_id = compat.trial_id_of(trial)
        assert trial_id == storage.optuna.get_trial_id_from_study_id_trial_number(
            study_id, trial.number)
        assert storage.optuna.get_trial_number_from_id(trial_id) == trial.number
    running = study.ask()
    assert compat.trial_id_of(running) == storage.optuna.get_trial_id_from_study_id_trial_number(
        study_id, running.number)


def test_a_study_runs_on_the_storage_it_was_given(storage: TunerStorage,
                                                  study: optuna.Study) -> None:
    assert compat.storage_of(study) is storage.studies
    plain = optuna.create_study(study_name="plain", storage=storage.optuna)
    wrapped = compat.storage_of(plain)  # Optuna wraps a bare RDBStorage in its cache
    assert isinstance(wrapped, compat.CachedStorage)
    assert isinstance(storage.studies, compat.CachedStorage)
    assert vars(wrapped)["_backend"] is storage.optuna


def test_read_trial_is_the_trial_as_stored(storage: TunerStorage, study: optuna.Study) -> None:
    running = study.ask()
    running.suggest_float("x", 0, 1)
    trial_id = compat.trial_id_of(running)
    assert compat.read_trial(study, trial_id).state == TrialState.RUNNING
    storage.optuna.set_trial_state_values(trial_id, TrialState.FAIL)  # another worker's
    read = compat.read_trial(study, trial_id)
    assert read.state == TrialState.FAIL and read.number == running.number
    assert read.params == storage.optuna.get_trial(trial_id).params


def test_frozen_trial_of_is_optunas_copy_kept_up_to_date(study: optuna.Study) -> None:
    trial = study.ask()
    assert isinstance(vars(trial).get("_cached_frozen_trial"), FrozenTrial), (
        f"{WHERE}: a Trial no longer keeps _cached_frozen_trial")
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("seed", 3)
    frozen = compat.frozen_trial_of(trial)
    assert frozen is vars(trial)["_cached_frozen_trial"]
    assert frozen.number == trial.number and frozen.params == trial.params
    assert frozen.user_attrs == {"seed": 3}
    params = trial.params
    del trial._cached_frozen_trial  # where a trial keeps none: read from the storage
    assert compat.frozen_trial_of(trial).params == params


def test_wrapped_pruner_of_a_patient_pruner() -> None:
    inner = optuna.pruners.MedianPruner()
    assert compat.wrapped_pruner_of(optuna.pruners.PatientPruner(inner, patience=2)) is inner
    assert compat.wrapped_pruner_of(optuna.pruners.PatientPruner(None, patience=2)) is None


def test_distribution_contains_is_optunas_test() -> None:
    stepped = FloatDistribution(0.0, 1.0, step=0.25)
    assert compat.distribution_contains(stepped, 0.5)
    assert not compat.distribution_contains(stepped, 0.3)
    assert not compat.distribution_contains(FloatDistribution(0.0, 1.0), 1.5)
    assert compat.distribution_contains(IntDistribution(1, 9, step=2), 3.0)
    assert not compat.distribution_contains(IntDistribution(1, 9, step=2), 4.0)
    choices = CategoricalDistribution(["a", "b"])
    assert compat.distribution_contains(choices, 1.0)  # an index into the choices
    assert not compat.distribution_contains(choices, 2.0)


@pytest.mark.parametrize("make", [
    lambda seed: optuna.samplers.RandomSampler(seed=seed),
    lambda seed: optuna.samplers.TPESampler(seed=seed),  # its startup: a nested sampler
], ids=["random", "tpe"])
def test_random_states_of_are_what_the_sampler_draws_from(
        make: Callable[[int], optuna.samplers.BaseSampler]) -> None:
    """Two samplers seeded differently draw the same once the generators found are
    reseeded alike: they are the ones sampling uses (tuner.space.sampling.seed_per_trial)."""
    drawn = []
    for seed in (1, 2):
        sampler = make(seed)
        states = compat.random_states_of(sampler)
        assert states and all(isinstance(s, np.random.RandomState) for s in states), (
            f"{WHERE}: no NumPy generator found in {type(sampler).__name__}'s attributes")
        for state in states:
            state.seed(0)
        study = optuna.create_study(sampler=sampler)
        drawn.append(study.ask().suggest_float("x", 0, 1))
    assert drawn[0] == drawn[1]


def test_every_built_in_sampler_has_generators_to_reseed() -> None:
    from tuner.space.sampling import SAMPLERS

    for name, cls in SAMPLERS.items():
        sampler = cls({"x": [1, 2]}, seed=1) if name == "grid" else cls(seed=1)
        assert compat.random_states_of(sampler), (
            f"{WHERE}: no NumPy generator found in {cls.__name__}'s attributes")


def test_local_time_is_what_optuna_reads_back(storage: TunerStorage,
                                              study: optuna.Study) -> None:
    finished = study.get_trials()[0]
    with storage.session() as conn:
        start, complete = conn.execute(
            select(compat.TRIAL_START_UTC, compat.TRIAL_COMPLETE_UTC)
            .where(compat.TrialModel.trial_id == compat.trial_id_of(finished))).one()
    theirs = optuna.storages.RDBStorage.get_trial(storage.optuna, compat.trial_id_of(finished))
    assert compat.local_time("start", start) == theirs.datetime_start
    assert compat.local_time("complete", complete) == theirs.datetime_complete
    assert compat.local_time("complete", None) is None


def test_a_missing_trial_is_optunas_not_found(storage: TunerStorage) -> None:
    with pytest.raises(KeyError, match=compat.NOT_FOUND_MSG):
        optuna.storages.RDBStorage.get_trial(storage.optuna, 10_000)


def test_the_private_methods_the_fast_paths_override_keep_their_signatures() -> None:
    ours = {optuna.storages.RDBStorage: TunerRDBStorage}
    for base, names in compat.OVERRIDDEN.items():
        for name in names:
            original = vars(base).get(name)
            assert inspect.isfunction(original), (
                f"{WHERE}: {base.__name__}.{name} is gone; tuner.storage._fast overrides it")
            theirs = list(inspect.signature(original).parameters)
            mine = list(inspect.signature(getattr(ours[base], name)).parameters)
            assert theirs == mine, (f"{WHERE}: {base.__name__}.{name}{tuple(theirs)} no "
                                    f"longer takes what tuner.storage._fast passes {tuple(mine)}")


def test_the_cache_state_the_fast_paths_read_is_there(storage: TunerStorage,
                                                      study: optuna.Study) -> None:
    cache = storage.studies
    assert isinstance(cache, StudyStorage)
    state = vars(cache)
    for base, names in compat.INHERITED.items():
        assert isinstance(cache, base)
        missing = [name for name in names if name not in state]
        assert not missing, (f"{WHERE}: {base.__name__} no longer keeps {', '.join(missing)}; "
                             "tuner.storage._fast.StudyStorage reads them")
    assert state["_backend"] is storage.optuna
    assert hasattr(state["_lock"], "__enter__")
    trial = study.ask()
    study_id, number = state["_trial_id_to_study_id_and_number"][compat.trial_id_of(trial)]
    assert (study_id, number) == (compat.study_id_of(study), trial.number)
    assert state["_studies"][study_id].trials[number].number == trial.number


def test_the_schema_head_the_tuner_knows_is_the_installed_optunas(tmp_path: Path) -> None:
    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'head.db'}")
    head = rdb.get_head_version()
    rdb.engine.dispose()
    release = ".".join(optuna.__version__.split(".")[:2])
    assert compat.schema_head() == head, (
        f"{WHERE} reads schema {head}: set SCHEMA_HEADS[{release!r}] = {head!r} in "
        "tuner.storage.optuna_compat (without it, every read-back command loads alembic)")


def test_a_storage_on_a_checked_schema_is_optunas_but_for_the_version_manager(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'checked.db'}"
    close_connections(TunerStorage(url, heartbeat=False).open())  # a complete, current schema
    theirs = optuna.storages.RDBStorage(url, skip_table_creation=True)
    ours = TunerRDBStorage(url, {}, schema_checked=True)
    try:
        assert sorted(vars(ours)) == sorted(vars(theirs)), (
            f"{WHERE}: RDBStorage.__init__ sets {sorted(vars(theirs))}, but "
            f"tuner.storage._fast.TunerRDBStorage(schema_checked=True) sets {sorted(vars(ours))}")
        made = ("engine", "scoped_session", "_version_manager")
        assert {k: v for k, v in vars(ours).items() if k not in made} == {
            k: v for k, v in vars(theirs).items() if k not in made}
        assert ours.engine.url == theirs.engine.url
        assert isinstance(vars(ours)["_version_manager"], compat.LazyVersionManager)
        assert ours.get_current_version() == theirs.get_current_version() == compat.schema_head()
        assert ours.get_head_version() == theirs.get_head_version()
        study_id = ours.create_new_study([StudyDirection.MAXIMIZE], "checked")
        assert theirs.get_study_id_from_name("checked") == study_id
        assert theirs.get_study_directions(study_id) == [StudyDirection.MAXIMIZE]
    finally:
        close_connections(ours)
        close_connections(theirs)
