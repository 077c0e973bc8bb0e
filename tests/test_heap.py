"""tuner.heap: no full garbage collection while a worker starts, the start-up frozen
once its first trial is done."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import tuner.pool
import tuner.runner
from tuner import heap
from tuner.cli import cli
from tuner.pool import WorkerArgs, run_pool, worker_main
from tuner.runner import run_study
from tuner.space import EngineSpec, Space, load_space
from tuner.storage import TunerStorage
from tuner.study import open_study

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _collector() -> Iterator[None]:
    """Every test starts with the collector as Python runs it (conftest restores it)."""
    thresholds = gc.get_threshold()
    assert not heap.deferred() and gc.get_freeze_count() == 0
    yield
    heap.restore()
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0


def full_collections_while(make: Any) -> int:
    """How many full collections run while ``make()`` runs."""
    seen: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen.append(1)

    gc.callbacks.append(count)
    try:
        make()
    finally:
        gc.callbacks.remove(count)
    return len(seen)


def long_lived_objects() -> list[list[int]]:
    """More surviving containers than a quarter of the heap: enough for Python to start
    a full collection on its own."""
    return [[i] for i in range(len(gc.get_objects()) + 200_000)]


def test_deferred_full_collections_wait_for_settle_while_young_ones_go_on() -> None:
    young = gc.get_threshold()[:2]
    assert full_collections_while(long_lived_objects) >= 1  # what the collector does alone

    heap.defer_full_collections()
    assert heap.deferred() and gc.get_threshold()[:2] == young
    young_runs: list[int] = []

    def count_young(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] < 2:
            young_runs.append(1)

    gc.callbacks.append(count_young)
    try:
        assert full_collections_while(long_lived_objects) == 0
    finally:
        gc.callbacks.remove(count_young)
    assert young_runs  # cycles made meanwhile are still freed


def test_settle_freezes_the_start_up_and_restores_the_thresholds() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    heap.settle()  # not deferred: nothing happens
    assert gc.get_freeze_count() == frozen and gc.get_threshold() == before

    heap.defer_full_collections()
    heap.defer_full_collections()  # twice is once: settle restores the real thresholds
    start_up: list[int] = []
    heap.settle()
    later: list[int] = []
    assert not heap.deferred() and gc.get_threshold() == before
    assert gc.get_freeze_count() > frozen
    # Frozen objects are out of the generations every collection walks.
    collected = {id(o) for o in gc.get_objects()}
    assert id(start_up) not in collected and id(later) in collected
    frozen = gc.get_freeze_count()
    heap.settle()
    assert gc.get_freeze_count() == frozen


@pytest.fixture
def storage(tmp_path: Path) -> TunerStorage:
    return TunerStorage(f"sqlite:///{tmp_path / 'tuner.db'}").open()


@pytest.fixture
def space(tiny_path: Path) -> Space:
    return load_space(tiny_path)


@pytest.mark.parametrize("engine", [EngineSpec("sequential"), EngineSpec("fused", 2)],
                         ids=["sequential", "fused"])
def test_a_study_settles_the_heap_once_its_first_trial_is_done(
        engine: EngineSpec, space: Space, storage: TunerStorage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # heap.deferred() as each trial starts (sequential) or has its rows made (fused)
    during: list[bool] = []
    method = "__call__" if engine.name == "sequential" else "trial_rows"
    real = getattr(tuner.runner.Objective, method)

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        during.append(heap.deferred())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tuner.runner.Objective, method, recording)
    heap.defer_full_collections()
    frozen = gc.get_freeze_count()
    summary = run_study(space, storage=storage, study_name="h", budget=4, device=CPU,
                        engine=engine)
    assert summary.ran == 4
    assert not heap.deferred() and gc.get_freeze_count() > frozen
    if engine.name == "sequential":
        assert during == [True, False, False, False]
    else:  # members that finish at the first one's epoch share its batch of rows
        assert during[0] and not during[-1] and during == sorted(during, reverse=True)


@pytest.mark.parametrize("command", [["start", "--space", "SPACE"], ["worker", "--study", "w"]])
def test_tuner_start_and_worker_defer_full_collections(
        command: list[str], runner: CliRunner, tiny_path: Path, storage: TunerStorage,
        space: Space, monkeypatch: pytest.MonkeyPatch) -> None:
    open_study(storage, space, "w")
    seen: list[bool] = []
    monkeypatch.setattr(tuner.runner, "run_study", lambda *_, **__: seen.append(heap.deferred()))
    args = [str(tiny_path) if a == "SPACE" else a for a in command]
    runner.invoke(cli, [*args, "--storage", str(storage.url), "--device", "cpu"])
    assert seen == [True]


def test_the_parent_of_a_worker_pool_settles_once_its_workers_are_started(
        storage: TunerStorage, space: Space, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[bool] = []  # heap.deferred() as each worker process starts

    class Process:
        def __init__(self, **_: Any) -> None:
            self.exitcode = 0

        def start(self) -> None:
            started.append(heap.deferred())

        def is_alive(self) -> bool:
            return False

    class Context:
        pass

    Context.Process = Process  # type: ignore[attr-defined]
    monkeypatch.setattr(tuner.pool.mp, "get_context", lambda _: Context)
    study = open_study(storage, space, "p")
    heap.defer_full_collections()
    run_pool(storage, study, 1, ["cpu", "cpu"])
    assert started == [True, True] and not heap.deferred()


def test_a_spawned_worker_defers_full_collections(space: Space, storage: TunerStorage,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    open_study(storage, space, "w")
    seen: list[bool] = []
    monkeypatch.setattr(tuner.runner, "run_study", lambda *_, **__: seen.append(heap.deferred()))
    worker_main(WorkerArgs(storage_url=str(storage.url), study_name="w", budget=1,
                           device="cpu", threads=1))
    assert seen == [True]
