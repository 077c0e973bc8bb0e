"""Creating, resuming and loading studies, with their search space stored alongside.

A study records the space it was created with (as JSON, in a study user attribute),
so a resumed study can be checked against the file, and a worker on another machine
can rebuild the same space from the database alone.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import StudyMismatchError, StudyNotFoundError, TunerError, UsageError
from tuner.space import PrunerSpec, SamplerSpec, Space, describe, parse_space, walk
from tuner.space.sampling import build_pruner, build_sampler
from tuner.storage import TunerStorage
from tuner.storage.optuna_compat import study_id_of, trial_id_of
from tuner.train.config import TrialConfig

SPACE_ATTR = "tuner:space"
NAME_ATTR = "tuner:space_name"
FINGERPRINT_ATTR = "tuner:fingerprint"
BUDGET_ATTR = "tuner:budget"

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_STUDY_NAME = 200


def study_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a new study, or None: a name is 1 to 200 printable
    characters, not blank (Optuna stores any string; names with newlines or control
    characters would garble every listing)."""
    shown = repr(name if len(name) <= 40 else name[:40] + "…")
    if not name.strip():
        return f"a study name must not be blank, but got {shown}"
    if len(name) > MAX_STUDY_NAME:
        return (f"a study name is at most {MAX_STUDY_NAME} characters, but got "
                f"{len(name):,}: {shown}")
    if not name.isprintable():
        return (f"a study name must be printable (no newlines, tabs or control characters), "
                f"but got {shown}")
    return None


def check_study_name(name: str, where: str) -> str:
    """``name``, or a UsageError that ``where`` (e.g. the space file it came from) gives a
    name no study may have."""
    problem = study_name_problem(name)
    if problem is not None:
        raise UsageError(f"{where}: {problem}")
    return name


def study_exists(storage: TunerStorage, name: str) -> bool:
    try:
        storage.optuna.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def require_study(storage: TunerStorage, name: str) -> int:
    """The study's id, or a StudyNotFoundError that lists the studies there are."""
    return storage.study_id(name)


def stored_space(storage: TunerStorage, name: str) -> Space:
    """Rebuild the search space a study was created with."""
    attrs = storage.optuna.get_study_user_attrs(require_study(storage, name))
    if SPACE_ATTR not in attrs:
        raise StudyNotFoundError(f"study {name!r} was not created by tuner (it has no "
                                 "stored search space)")
    return parse_space(json.loads(attrs[SPACE_ATTR]), name=attrs.get(NAME_ATTR, name),
                       source=f"study {name!r}")


def open_study(storage: TunerStorage, space: Space, name: str) -> optuna.Study:
    """Create the study, or resume it when it exists with the same search space."""
    direction: Literal["minimize", "maximize"] = (
        "maximize" if space.task.direction == "maximize" else "minimize")
    if study_exists(storage, name):
        attrs = storage.optuna.get_study_user_attrs(storage.optuna.get_study_id_from_name(name))
        stored = attrs.get(FINGERPRINT_ATTR)
        if stored is None:
            raise StudyMismatchError(f"study {name!r} exists but was not created by tuner; "
                                     "choose another --study name")
        if stored != space.fingerprint():
            differs = _difference(storage, name, space)
            raise StudyMismatchError(
                f"study {name!r} was created with a different search space "
                f"({attrs.get(NAME_ATTR, '?')}, fingerprint {stored}) than {space.source} with "
                f"these options (fingerprint {space.fingerprint()}){differs}; resume it with "
                "the same space and options, or choose another --study name")
        study = _load(storage, space, name)
        if study.direction.name.lower() != direction:
            raise StudyMismatchError(f"study {name!r} is {study.direction.name.lower()}d, "
                                     f"but the space's metric is {direction}d")
        return study
    study = optuna.create_study(storage=storage.studies, study_name=name, direction=direction,
                                sampler=build_sampler(space),
                                pruner=build_pruner(space.pruner, space.task.epochs))
    try:
        study.set_user_attr(SPACE_ATTR, json.dumps(space.raw, default=str))
        study.set_user_attr(NAME_ATTR, space.name)
        study.set_user_attr(FINGERPRINT_ATTR, space.fingerprint())
    except BaseException:
        # Leave no half-created study behind.
        optuna.delete_study(study_name=name, storage=storage.optuna)
        raise
    return study


def _difference(storage: TunerStorage, name: str, space: Space) -> str:
    """What differs between the space study ``name`` was created with and ``space``, as
    ``: <key> was <then>, now <now>; ...`` (the first three, and how many more; empty
    when the stored space cannot be rebuilt)."""
    try:
        before = stored_space(storage, name)
    except TunerError:
        return ""
    pairs: list[tuple[str, Any, Any]] = [
        *((f"task.{f.name}", getattr(before.task, f.name), getattr(space.task, f.name))
          for f in dataclasses.fields(space.task)),
        ("seed", before.seed, space.seed), ("sampler", before.sampler, space.sampler),
        ("pruner", before.pruner, space.pruner),
        ("early_stopping", before.early_stopping, space.early_stopping)]
    for section in ("params", "user_params"):
        old = {p.name: describe(p) for p in walk(getattr(before, section))}
        new = {p.name: describe(p) for p in walk(getattr(space, section))}
        pairs += [(f"{section}.{key}", old.get(key, "absent"), new.get(key, "absent"))
                  for key in dict.fromkeys([*old, *new])]
    differs = [f"{key} was {_shown(then)}, now {_shown(now)}" for key, then, now in pairs
               if then != now]
    if not differs:
        return ""
    more = len(differs) - 3
    return ": " + "; ".join(differs[:3]) + (f"; and {more} more" if more > 0 else "")


def _shown(value: Any) -> str:
    """A setting as the space file spells it: a sampler or pruner as its name and options."""
    if isinstance(value, SamplerSpec | PrunerSpec):
        shown: dict[str, Any] = {"name": value.name, **dict(value.options)}
        if isinstance(value, PrunerSpec) and value.wrapped is not None:
            shown["wrapped"] = _shown(value.wrapped)
        return repr(shown)
    return repr(value)


def _load(storage: TunerStorage, space: Space, name: str) -> optuna.Study:
    # The sampler is seeded per trial number: a resumed study, or several workers
    # loading it at once, never replays draws (tuner.space.sampling.seed_per_trial).
    return optuna.load_study(study_name=name, storage=storage.studies,
                             sampler=build_sampler(space),
                             pruner=build_pruner(space.pruner, space.task.epochs))


def count_states(storage: TunerStorage, study: optuna.Study | int) -> dict[TrialState, int]:
    """Trials per state of a study (or a study id), counted in SQL (no trial is loaded
    into Python)."""
    return storage.state_counts(study if isinstance(study, int) else study_id_of(study))


def finished(counts: Mapping[TrialState, int]) -> int:
    """The trials that count against the budget: complete and pruned."""
    return sum(counts[s] for s in FINISHED)


def save_budget(study: optuna.Study, budget: int) -> None:
    """Record the study's total budget, so that workers joining it know when to stop."""
    if study.user_attrs.get(BUDGET_ATTR) != budget:
        study.set_user_attr(BUDGET_ATTR, budget)


def stored_budget(storage: TunerStorage, name: str) -> int | None:
    attrs = storage.optuna.get_study_user_attrs(require_study(storage, name))
    value = attrs.get(BUDGET_ATTR)
    return None if value is None else int(value)


@dataclass(frozen=True)
class StoredTrial:
    """A finished trial read back from the database, with the configuration it trained."""

    space: Space
    trial: FrozenTrial
    config: TrialConfig


def stored_trial(storage: TunerStorage, name: str, number: int | None = None) -> StoredTrial:
    """Trial ``number`` of study ``name`` (default: the best), and its resolved config.

    The config is rebuilt as the objective built it: the stored space resolves the
    trial's parameters (a :class:`~optuna.trial.FixedTrial` answers the suggestions),
    and the seed is the one the trial recorded.
    """
    space = stored_space(storage, name)
    study_id = require_study(storage, name)
    if number is None:
        try:
            trial_id = trial_id_of(storage.optuna.get_best_trial(study_id))
        except ValueError:
            raise StudyNotFoundError(f"study {name!r} has no complete trial yet") from None
    else:
        try:
            trial_id = storage.optuna.get_trial_id_from_study_id_trial_number(study_id, number)
        except KeyError:
            raise UsageError(f"--trial {number}: study {name!r} has no trial {number}") from None
    frozen = storage.optuna.get_trial(trial_id)
    if "seed" not in frozen.user_attrs:
        raise UsageError(f"--trial {frozen.number}: the trial of study {name!r} has no recorded "
                         f"seed (state {frozen.state.name.lower()}); it never trained")
    # A FixedTrial answers every suggest call as the Trial did (same API, no storage).
    fixed = cast(optuna.Trial, optuna.trial.FixedTrial(frozen.params, frozen.number))
    values, user = space.sample(fixed)
    task, early = space.task, space.early_stopping
    config = TrialConfig.from_values(
        values, epochs=task.epochs, seed=int(frozen.user_attrs["seed"]),
        maximize=task.direction == "maximize", model=task.model, patience=early.patience,
        min_delta=early.min_delta, user=user)
    return StoredTrial(space, frozen, config)
