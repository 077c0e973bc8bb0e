"""Every use the tuner makes of Optuna's private API, in one module.

Optuna's public API has no way to ask a trial or a study for its id in the database,
for the storage a study runs on, or for the ORM models of its schema; the tuner needs
all of them (its own tables are keyed by Optuna's ids, and its fast paths write
Optuna's rows). Each private name it relies on is reached here, under a name that says
what it gives, and ``tests/test_optuna_compat.py`` pins each one against Optuna's public
API, so that an Optuna upgrade that moves one fails there, naming it, rather than deep
inside a run.

What the module wraps:

* :func:`trial_id_of`, :func:`study_id_of`, :func:`storage_of`, :func:`read_trial`,
  :func:`frozen_trial_of`: ``trial._trial_id``, ``study._study_id``,
  ``study._storage``, ``trial._cached_frozen_trial``;
* :func:`wrapped_pruner_of`: ``PatientPruner._wrapped_pruner``;
* :func:`distribution_contains`: ``BaseDistribution._contains``;
* :func:`random_states_of`: the NumPy generators samplers keep in private attributes
  (``_rng``, ``_cma_rng``, those of the samplers nested in them);
* :class:`CachedStorage` (``optuna.storages._cached_storage._CachedStorage``) and the ORM
  models of ``optuna.storages._rdb.models``, re-exported, with the private columns
  :data:`TRIAL_START_UTC` and :data:`TRIAL_COMPLETE_UTC` and :func:`local_time` (how
  ``TrialModel`` turns them into the times a ``FrozenTrial`` holds);
* :class:`LazyVersionManager`: ``optuna.storages._rdb.storage._VersionManager`` (what
  ``RDBStorage._version_manager`` is), made on first use, and :func:`schema_head`, the
  schema revision the installed Optuna reads, known without alembic;
* :class:`ParzenEstimator`, :func:`default_gamma`, :class:`SearchSpaceGroup`,
  :func:`mixture_of` and :func:`log_gauss_mass`: the
  pieces of Optuna's TPE (``optuna.samplers._tpe``, ``optuna.search_space.
  group_decomposed``) that :mod:`tuner.space._tpe` builds the same suggestions from.

What stays outside, by design: the storage fast paths of :mod:`tuner.storage._fast`
subclass ``RDBStorage`` and :class:`CachedStorage`, override private methods of theirs
(``_get_trials``, ``_set_trial_param``, ``_create_new_trial``,
``_get_stale_trial_ids``) and read the cache's private state through ``self``
(``_lock``, ``_studies``, ``_trial_id_to_study_id_and_number``, ``_backend``). That is
inherent in subclassing, and those classes are a concept of their own (a few hundred
lines), so they stay in their module; everything they import from Optuna's private
modules comes from here, and the tests pin every member they override or read
(:data:`OVERRIDDEN`, :data:`INHERITED`). So do :mod:`tuner.space._tpe`'s subclass of
``TPESampler`` (:data:`TPE_OVERRIDDEN`, :data:`TPE_INHERITED`) and its tests, which pin
its suggestions to Optuna's own sampler's.

>>> import optuna
>>> study = optuna.create_study()
>>> trial = study.ask()
>>> read_trial(study, trial_id_of(trial)).number == trial.number
True
"""

from __future__ import annotations

import types
from typing import Any, cast

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.pruners import BasePruner, PatientPruner
from optuna.samplers import BaseSampler
from optuna.samplers._tpe import _truncnorm
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator
from optuna.samplers._tpe.sampler import default_gamma
from optuna.search_space.group_decomposed import _SearchSpaceGroup
from optuna.storages import BaseStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb.models import (
    MAX_INDEXED_STRING_LENGTH,
    NOT_FOUND_MSG,
    StudyModel,
    TrialHeartbeatModel,
    TrialIntermediateValueModel,
    TrialModel,
    TrialParamModel,
    TrialSystemAttributeModel,
    TrialUserAttributeModel,
    TrialValueModel,
)
from optuna.storages._rdb.storage import _VersionManager
from optuna.trial import FrozenTrial

__all__ = ["INHERITED", "MAX_INDEXED_STRING_LENGTH", "NOT_FOUND_MSG", "OVERRIDDEN",
           "SCHEMA_HEADS", "TPE_INHERITED", "TPE_OVERRIDDEN", "TRIAL_COMPLETE_UTC",
           "TRIAL_START_UTC", "CachedStorage", "LazyVersionManager", "ParzenEstimator",
           "SearchSpaceGroup", "StudyModel", "TrialHeartbeatModel",
           "TrialIntermediateValueModel", "TrialModel", "TrialParamModel",
           "TrialSystemAttributeModel", "TrialUserAttributeModel", "TrialValueModel",
           "default_gamma", "distribution_contains", "frozen_trial_of",
           "lazy_version_manager", "local_time", "log_gauss_mass",
           "mixture_of", "random_states_of", "read_trial",
           "schema_head", "storage_of", "study_id_of", "trial_id_of", "wrapped_pruner_of"]

# Optuna's cache over an RDB storage, which studies on a database run on (optuna.create_study
# wraps an RDBStorage in one); the tuner's StudyStorage subclasses it.
CachedStorage = _CachedStorage

# What tuner.space._tpe builds Optuna's TPE from: the Parzen estimator TPESampler fits
# (TPESampler._parzen_estimator_cls), its default split of the trials, and the group
# decomposition of `TPESampler(group=True)` (optuna.search_space.group_decomposed).
ParzenEstimator = _ParzenEstimator
SearchSpaceGroup = _SearchSpaceGroup
# log Φ(b) - Φ(a), the mass of a standard normal on [a, b], as Optuna's truncated normals
# compute it (elementwise).
log_gauss_mass = _truncnorm._log_gauss_mass


def mixture_of(estimator: _ParzenEstimator) -> tuple[np.ndarray, list[Any]]:
    """A fitted Parzen estimator's mixture: the components' weights (summing to 1, the
    prior's last) and, per parameter in its search space's order, the batched
    distributions (``mu``, ``sigma``, ``low``, ``high``, ``step``, ``is_log``,
    ``adapted_low``, ``adapted_high``; ``weights`` for a categorical)."""
    mixture = estimator._mixture_distribution
    return mixture.weights, list(mixture.distributions)

# The trials table's start and completion times as stored (naive UTC), as ORM attributes:
# the public TrialModel.datetime_start and datetime_complete are Python properties over
# them, which a SELECT cannot name.
TRIAL_START_UTC = TrialModel._datetime_start_utc
TRIAL_COMPLETE_UTC = TrialModel._datetime_complete_utc

# The private methods tuner.storage._fast overrides, by the Optuna class that defines them,
# and the private state its StudyStorage reads through `self`: pinned by the tests.
OVERRIDDEN: dict[type, tuple[str, ...]] = {
    optuna.storages.RDBStorage: ("_get_trials", "_set_trial_param", "_create_new_trial",
                                 "_get_stale_trial_ids"),
}
INHERITED: dict[type, tuple[str, ...]] = {
    _CachedStorage: ("_backend", "_lock", "_studies", "_trial_id_to_study_id_and_number"),
}
# The same for tuner.space._tpe's IncrementalTPESampler: the private methods of Optuna's
# TPESampler it overrides, and those it calls and the state it reads through `self`.
TPE_OVERRIDDEN: tuple[str, ...] = ("_sample_relative", "_sample")
TPE_INHERITED: tuple[str, ...] = (
    "_rng", "_parzen_estimator_parameters", "_parzen_estimator_cls", "_n_startup_trials",
    "_n_ei_candidates", "_gamma", "_group", "_constant_liar", "_constraints_func",
    "_search_space_group", "_is_multivariate", "_get_params", "_compute_acquisition_func",
    "_compare")

# The schema revision (alembic's head) that each Optuna release line the tuner knows reads
# and writes: Optuna adds a migration only in a minor or major release. A command that
# reads a database compares its revision with this one instead of asking alembic, whose
# import and migration scripts cost more than the rest of `tuner best`; with an Optuna
# not listed here, Optuna checks the schema as it opens the storage, as ever.
SCHEMA_HEADS = {"5.1": "v3.2.0.a"}


def schema_head() -> str | None:
    """The schema revision the installed Optuna reads (as
    ``RDBStorage.get_head_version()`` says), or None for a release line the tuner does not
    know (:data:`SCHEMA_HEADS`)."""
    return SCHEMA_HEADS.get(".".join(optuna.__version__.split(".")[:2]))


class LazyVersionManager:
    """Optuna's version manager of an RDB storage (``RDBStorage._version_manager``: the
    schema's revision, head and upgrade, through alembic), made on first use rather than
    as the storage opens. Making it writes the version rows a database lacks, so it
    stands only in a storage on a database that has them (``TunerRDBStorage`` with
    ``schema_checked``)."""

    def __init__(self, url: str, engine: Any, scoped_session: Any) -> None:
        self._arguments = (url, engine, scoped_session)
        self._made: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_arguments", "_made"):
            raise AttributeError(name)
        if self._made is None:
            self._made = _VersionManager(*self._arguments)
        return getattr(self._made, name)


def lazy_version_manager(url: str, engine: Any, scoped_session: Any) -> _VersionManager:
    """A :class:`LazyVersionManager`, as what ``RDBStorage._version_manager`` holds."""
    return cast(_VersionManager, LazyVersionManager(url, engine, scoped_session))


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's id in the database (``trials.trial_id``; the key of the tuner's rows),
    of a running :class:`~optuna.Trial` or a :class:`~optuna.trial.FrozenTrial`."""
    return trial._trial_id


def study_id_of(study: optuna.Study) -> int:
    """The study's id in the database (``studies.study_id``), which
    ``storage.get_study_id_from_name(study.study_name)`` would look up."""
    return study._study_id


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage the study runs on: for a study created or loaded on a
    :class:`~tuner.storage.TunerStorage`, its :attr:`~tuner.storage.TunerStorage.studies`."""
    return study._storage


def read_trial(study: optuna.Study, trial_id: int) -> FrozenTrial:
    """Trial ``trial_id`` as the study's storage holds it now (through the study's cache: a
    finished trial from the cache, an unfinished one read again)."""
    return storage_of(study).get_trial(trial_id)


def frozen_trial_of(trial: optuna.Trial) -> FrozenTrial:
    """The running trial as Optuna read it when it was asked for (its own copy, kept up to
    date with what this process writes to it), or read from the storage where the trial
    keeps none."""
    frozen: FrozenTrial | None = getattr(trial, "_cached_frozen_trial", None)
    if frozen is None:
        frozen = read_trial(trial.study, trial_id_of(trial))
    return frozen


def wrapped_pruner_of(pruner: PatientPruner) -> BasePruner | None:
    """The pruner a :class:`~optuna.pruners.PatientPruner` defers to (None: none)."""
    wrapped: BasePruner | None = pruner._wrapped_pruner
    return wrapped


def distribution_contains(distribution: BaseDistribution, internal_value: float) -> bool:
    """Optuna's own test of a value (in the distribution's internal representation)
    against a distribution: its bounds, its step's grid, its choices' indices."""
    return bool(distribution._contains(internal_value))


def random_states_of(sampler: BaseSampler, depth: int = 2) -> list[np.random.RandomState]:
    """The NumPy generators of ``sampler`` and of the samplers nested in it, in a fixed
    order (attributes by name). Optuna's samplers keep them in private attributes
    (``_rng``, ``_cma_rng``, the fallback sampler's ``_rng``), some wrapped in a
    ``LazyRandomState`` (its ``rng``)."""
    states = []
    for _, value in sorted(vars(sampler).items()):
        rng = getattr(value, "rng", value)
        if isinstance(rng, np.random.RandomState):
            states.append(rng)
        elif isinstance(value, BaseSampler) and depth > 0:
            states.extend(random_states_of(value, depth - 1))
    return states


def local_time(which: str, utc: Any) -> Any:
    """A stored (naive UTC) start or completion time (``which``: ``"start"`` or
    ``"complete"``) as ``TrialModel.datetime_<which>`` returns it, and so as a
    :class:`~optuna.trial.FrozenTrial` read through Optuna holds it."""
    prop = vars(TrialModel)[f"datetime_{which}"]
    return prop.fget(types.SimpleNamespace(**{f"_datetime_{which}_utc": utc}))
