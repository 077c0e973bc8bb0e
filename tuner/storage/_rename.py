"""Renaming a study in place: only ``studies.study_name`` changes.

Optuna has no rename; optuna-dashboard's copies the study into a new one and deletes
the old, which gives every trial a new ``trial_id`` and the study a new ``study_id``, so
the tuner's rows (keyed by those ids) would be left pointing at nothing. One ``UPDATE``
keeps every id, and with them every row that refers to the study, Optuna's and the
tuner's alike.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tuner.errors import StudyNotFoundError, UsageError
from tuner.storage._store import TunerStorage
from tuner.storage.optuna_compat import MAX_INDEXED_STRING_LENGTH, StudyModel

_studies = StudyModel.__table__


def rename_study(storage: TunerStorage, study_id: int, name: str) -> None:
    """Give the study ``study_id`` the name ``name``, in one transaction.

    Raises :class:`~tuner.errors.StudyNotFoundError` when there is no such study, and
    :class:`~tuner.errors.UsageError` when another study has that name, or the name is
    empty or longer than Optuna's column holds.

    >>> storage = TunerStorage("sqlite:///:memory:").open()
    >>> import optuna
    >>> _ = optuna.create_study(study_name="old", storage=storage.optuna)
    >>> study_id = storage.optuna.get_study_id_from_name("old")
    >>> rename_study(storage, study_id, "new")
    >>> storage.study_names()
    ['new']
    """
    if not name or len(name) > MAX_INDEXED_STRING_LENGTH:
        raise UsageError(f"a study name must have 1 to {MAX_INDEXED_STRING_LENGTH} "
                         f"characters, but got {len(name)}")
    with storage.session() as conn:
        current = conn.execute(select(_studies.c.study_name)
                               .where(_studies.c.study_id == study_id)).scalar()
        if current is None:
            raise StudyNotFoundError(f"no study with study_id={study_id}")
        if current == name:
            return
        taken = conn.execute(select(_studies.c.study_id)
                             .where(_studies.c.study_name == name)).scalar()
        if taken is not None:
            raise UsageError(f"a study named {name!r} already exists (study_id={taken})")
        try:
            conn.execute(_studies.update().where(_studies.c.study_id == study_id)
                         .values(study_name=name))
        except IntegrityError:  # another client took the name since the check
            raise UsageError(f"a study named {name!r} already exists") from None
