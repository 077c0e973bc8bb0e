"""The Python API: run a study from a notebook or script, get an Optuna study back.

>>> import tuner
>>> study = tuner.optimize("quick", n_trials=5, storage="sqlite:///demo.db")  # doctest: +SKIP
>>> study.best_params                                                          # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna

from tuner.errors import UsageError
from tuner.run.start import plan_start, space_with
from tuner.space import Space, parse_engine
from tuner.storage import DEFAULT_STORAGE
from tuner.train.device import resolve_device
from tuner.usercode import register


def optimize(space: str | Path | Space, *, data: str | None = None, model: str | None = None,
             storage: str | None = None, n_trials: int | None = None,
             study_name: str | None = None, device: str = "cpu", seed: int | None = None,
             engine: str | Mapping[str, Any] | None = None,
             objective: str | Callable[..., Any] | None = None,
             **task_overrides: Any) -> optuna.Study:
    """Run (or resume) a study as ``tuner start`` does, and return it as an Optuna study.

    ``space`` is a built-in space's name, a YAML path or a :class:`~tuner.space.Space`.
    ``data`` and ``model`` are what ``--data`` and ``--model`` take (a file or
    ``module:function``); ``task_overrides`` are further task keys (``epochs``,
    ``dataset``, ``target``, ...). ``n_trials`` is the study's total budget of finished
    trials (default: the space's ``trials``); ``storage`` is a database URL (default:
    the command line's, ``sqlite:///storage/tuner.db``). ``engine`` is what a space's
    ``engine`` key takes: ``"fused"``, or ``{"name": "fused", "population": 64,
    "precision": "bf16"}`` (default: the space's). ``objective`` is a training function
    of yours, ``fn(config, report) -> value`` (see :mod:`tuner.run.userloop`), or the
    ``module:function`` naming one; other task keys (``metric``, ``direction``, ``loss``)
    go in ``task_overrides``.

    >>> study = tuner.optimize("quick", n_trials=3, epochs=2,
    ...                        storage="sqlite:///demo.db")       # doctest: +SKIP
    >>> study.best_value                                          # doctest: +SKIP
    0.95
    >>> study = tuner.optimize("population", n_trials=64,
    ...                        engine={"name": "fused", "population": 32})  # doctest: +SKIP
    >>> study = tuner.optimize("my_space.yaml", objective=fit, direction="maximize")
    ... # doctest: +SKIP
    """
    from tuner.space import TASK_KEYS

    unknown = [k for k in task_overrides if k not in TASK_KEYS]
    if unknown:
        raise UsageError(f"tuner.optimize(): unknown argument {unknown[0]!r}; it takes space, "
                         "data, model, storage, n_trials, study_name, device, seed, engine, "
                         f"objective and the task's keys ({', '.join(TASK_KEYS)})")
    if callable(objective):
        # Found by its module:qualname in this process, whether or not it is importable.
        objective = register(objective)
    given = {"seed": seed, "data": data, "model": model, "objective": objective,
             **task_overrides}
    overrides = {k: v for k, v in given.items() if v is not None}
    parsed = space_with(space, overrides, {k: f"tuner.optimize({k}=...)" for k in overrides})
    plan = plan_start(parsed, devices=[str(resolve_device(device))], study_name=study_name,
                      name_source="tuner.optimize(study_name=...)" if study_name else None,
                      budget=n_trials, engine=None if engine is None else parse_engine(engine))
    for warning in plan.warnings:  # before the database is opened, as `tuner start` warns
        warnings.warn(warning, stacklevel=2)
    opened = plan.open(storage or DEFAULT_STORAGE)
    opened.run()
    return optuna.load_study(study_name=plan.study_name, storage=opened.storage.studies)
