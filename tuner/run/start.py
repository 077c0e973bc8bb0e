"""Starting a study: the one path of ``tuner start`` and :func:`tuner.optimize`.

It comes in steps, so that a caller can show what happens between them (the command
line prints the warnings, a header, then progress):

1. :func:`space_with`: the space with the caller's task overrides, validated.
2. :func:`plan_start`: the study's name and the model the space trains are checked;
   :attr:`StartPlan.warnings` says what may not fit. Nothing is written yet.
3. :meth:`StartPlan.open`: the database is opened, the study created or resumed, its
   budget recorded and the queued trials added.
4. :meth:`OpenedStudy.run`: the study runs to its budget, in this process or in one
   worker process per device.

>>> space = space_with("quick", {"epochs": 2})                # doctest: +SKIP
>>> plan = plan_start(space, devices=["cpu"], budget=10)      # doctest: +SKIP
>>> plan.open("sqlite:///demo.db").run().finished             # doctest: +SKIP
10
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from tuner.run import runner
from tuner.run.precheck import check_model
from tuner.run.study import check_study_name, open_study, save_budget
from tuner.space import EngineSpec, Space, load_space, parse_with_overrides
from tuner.storage import TunerStorage


def space_with(space: str | Path | Space, overrides: Mapping[str, Any],
               named: Mapping[str, str] | None = None) -> Space:
    """``space`` (a built-in space's name, a YAML path or a :class:`Space`) with
    ``overrides`` merged in and validated as a file's own values are (see
    :func:`tuner.space.load_space`); ``named`` says how a message names an override
    (``{"epochs": "--epochs"}``)."""
    if not isinstance(space, Space):
        return load_space(space, overrides, named)
    if not overrides:
        return space
    return parse_with_overrides(space.raw, overrides, named, name=space.name,
                                source=space.source)


@dataclass(frozen=True)
class StartPlan:
    """A study checked and ready to start (:func:`plan_start`); nothing is written yet."""

    space: Space
    study_name: str
    budget: int  # the study's total of finished trials
    engine: EngineSpec
    devices: tuple[str, ...]  # one per worker; more than one: worker processes
    warnings: tuple[str, ...]  # what may not fit, one line each

    def open(self, storage: str, queued: Sequence[dict[str, Any]] = ()) -> OpenedStudy:
        """Open the database ``storage``, create the study or resume it, record its
        budget and add the ``queued`` trials' parameters (already checked against the
        space), each once."""
        with _stable_features():
            db = TunerStorage(storage).open()
            study = open_study(db, self.space, self.study_name)
            save_budget(study, self.budget)
            for params in queued:
                study.enqueue_trial(params, skip_if_exists=True)
        return OpenedStudy(self, db, study)


@dataclass(frozen=True)
class OpenedStudy:
    """A planned study, in its database (:meth:`StartPlan.open`)."""

    plan: StartPlan
    storage: TunerStorage
    study: optuna.Study

    def run(self, *, timeout: float | None = None, checkpoint_every: float = 30.0,
            on_start: Callable[[runner.Snapshot], None] | None = None,
            on_progress: Callable[[runner.Snapshot], None] | None = None) -> runner.RunSummary:
        """Run the study until it has its budget of finished trials (or ``timeout``
        seconds have passed): here on the one device planned, or in a worker process on
        each."""
        plan = self.plan
        with _stable_features():
            if len(plan.devices) == 1:
                return runner.run_study(
                    plan.space, storage=self.storage, study_name=plan.study_name,
                    budget=plan.budget, device=torch.device(plan.devices[0]), timeout=timeout,
                    checkpoint_every=checkpoint_every, engine=plan.engine, on_start=on_start,
                    on_progress=on_progress)
            from tuner.run.pool import run_pool

            return run_pool(self.storage, self.study, plan.budget, list(plan.devices),
                            timeout=timeout, checkpoint_every=checkpoint_every,
                            engine=plan.engine, on_start=on_start, on_progress=on_progress)


def plan_start(space: Space, *, devices: Sequence[str], study_name: str | None = None,
               name_source: str | None = None, budget: int | None = None,
               engine: EngineSpec | None = None) -> StartPlan:
    """Check what a start of ``space`` would run, before anything is written.

    The study is ``study_name`` (default: the space's name); a name no study may have
    is refused with ``name_source`` in the message (who gave it; default: the space's
    source). ``budget`` defaults to the space's ``trials``, ``engine`` to the space's.
    ``devices`` has one entry per worker. The model is checked by
    :func:`tuner.run.precheck.check_model`, for the devices and as many models at once
    as the engine trains: what cannot train is refused, what may not fit is returned as
    :attr:`StartPlan.warnings`.
    """
    name = check_study_name(study_name or space.name, name_source or space.source)
    engine = engine or space.engine
    found = check_model(space, devices=[torch.device(d) for d in devices],
                        copies=engine.population if engine.name == "fused" else 1)
    return StartPlan(space, name, budget or space.trials, engine, tuple(devices), tuple(found))


@contextlib.contextmanager
def _stable_features() -> Iterator[None]:
    """Without Optuna's notices that heartbeats, grouped TPE and ``skip_if_exists`` are
    "experimental" (stable for years)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
