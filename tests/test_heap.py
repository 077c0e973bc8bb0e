"""tuner.run.heap: no full garbage collection while a worker starts, until its first trial
is done."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import tuner.run.pool
import tuner.run.runner
from tuner.cli import cli
from tuner.run import heap
from tuner.run.pool import run_pool
from tuner.run.runner import run_study
from tuner.run.spawn import WorkerArgs, worker_process
from tuner.run.study import open_study
from tuner.space import EngineSpec, Space, load_space
from tuner.storage import TunerStorage

CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(heap.INCREMENTAL, reason="Python 3.14's incremental "
                                "collector has no full collections to defer")


@pytest.fixture(autouse=True)
def _collector() -> Iterator[None]:
    """Every test starts and ends with the collector as Python runs it."""
    thresholds = gc.get_threshold()
    assert not heap.deferred()
    yield
    heap.settle()
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0


def full_collections_while(make: Callable[[], object]) -> int:
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
    """Enough surviving containers for Python to start a full collection on its own:
    more than a quarter of the heap, and allocations for more than ``threshold2``
    collections of generation 1 (at the default thresholds)."""
    t0, t1, t2 = heap._deferred or gc.get_threshold()
    return [[i] for i in range(len(gc.get_objects()) + 2 * t0 * (t1 + 1) * (t2 + 1))]


@pytest.mark.slow
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
    assert young_runs  # cycles that die young are still freed


@pytest.mark.slow
def test_settle_restores_full_collections_without_freezing_anything() -> None:
    before = gc.get_threshold()
    heap.settle()  # not deferred: nothing happens
    assert gc.get_threshold() == before

    heap.defer_full_collections()
    heap.defer_full_collections()  # twice is once: settle restores the real thresholds
    heap.settle()
    assert not heap.deferred() and gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert full_collections_while(long_lived_objects) >= 1


@pytest.fixture
def storage(tmp_path: Path) -> TunerStorage:
    return TunerStorage(f"sqlite:///{tmp_path / 'tuner.db'}").open()


@pytest.fixture
def space(tiny_path: Path) -> Space:
    return load_space(tiny_path)


@pytest.mark.parametrize("engine", [EngineSpec("sequential"), EngineSpec("fused", 2)],
                         ids=["sequential", "fused"])
def test_a_study_settles_once_its_first_trial_is_done(
        engine: EngineSpec, space: Space, storage: TunerStorage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # heap.deferred() as each trial starts (sequential) or has its rows made (fused)
    during: list[bool] = []
    method = "__call__" if engine.name == "sequential" else "trial_rows"
    real = getattr(tuner.run.runner.Objective, method)

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        during.append(heap.deferred())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tuner.run.runner.Objective, method, recording)
    heap.defer_full_collections()
    summary = run_study(space, storage=storage, study_name="h", budget=4, device=CPU,
                        engine=engine)
    assert summary.ran == 4 and not heap.deferred()
    if engine.name == "sequential":
        assert during == [True, False, False, False]
    else:  # members that finish at the first one's epoch share its batch of rows
        assert during[0] and not during[-1] and during == sorted(during, reverse=True)


@pytest.mark.parametrize("command", [["start", "--space", "SPACE"], ["worker", "--study", "w"]])
def test_tuner_start_and_worker_defer_full_collections_while_they_run(
        command: list[str], runner: CliRunner, tiny_path: Path, storage: TunerStorage,
        space: Space, monkeypatch: pytest.MonkeyPatch) -> None:
    open_study(storage, space, "w")
    seen: list[bool] = []
    monkeypatch.setattr(tuner.run.runner, "run_study",
                        lambda *_, **__: seen.append(heap.deferred()))
    args = [str(tiny_path) if a == "SPACE" else a for a in command]
    runner.invoke(cli, [*args, "--storage", str(storage.url), "--device", "cpu"])
    assert seen == [True]
    assert not heap.deferred()  # a command that ran no trial settles as it ends


@pytest.mark.slow
def test_a_spawned_worker_defers_before_it_imports_the_heavy_modules(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What the child imports to unpickle its target and arguments: no torch, no
    # SQLAlchemy, no scikit-learn (those come with tuner.run.pool, after the deferral).
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, tuner.run.spawn; "
         "print(sorted({'torch', 'sqlalchemy', 'sklearn', 'tuner.run.pool'} & set(sys.modules)))"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
    seen: list[bool] = []
    monkeypatch.setattr(tuner.run.pool, "worker_main", lambda args: seen.append(heap.deferred()))
    worker_process(WorkerArgs("sqlite://", "w", 1, "cpu", 1))
    assert seen == [True]


def test_the_pool_spawns_that_entry_and_its_parent_settles_once_they_are_started(
        storage: TunerStorage, space: Space, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[object, bool]] = []  # each worker's target, heap.deferred()

    class Process:
        def __init__(self, *, target: object, **_: Any) -> None:
            self.target, self.exitcode = target, 0

        def start(self) -> None:
            started.append((self.target, heap.deferred()))

        def is_alive(self) -> bool:
            return False

    class Context:
        pass

    Context.Process = Process  # type: ignore[attr-defined]
    monkeypatch.setattr(tuner.run.pool.mp, "get_context", lambda _: Context)
    study = open_study(storage, space, "p")
    heap.defer_full_collections()
    run_pool(storage, study, 1, ["cpu", "cpu"])
    assert started == [(worker_process, True)] * 2 and not heap.deferred()


def test_the_command_freezes_the_heap_once_the_exit_handlers_have_run(tmp_path: Path) -> None:
    """`tuner` registers gc.freeze before the handlers that its imports register, so it
    runs after them: nothing is frozen while the command works, everything is once its
    handlers are done (as a handler registered before `tuner` started, which runs after
    it, sees), and the command's own output is whole."""
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
             "sys.argv = ['tuner', 'spaces']\n"
             "from tuner.cli import main\n"
             "print('frozen before:', gc.get_freeze_count() > 0)\n"
             "main()\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "frozen before: False"
    assert any(line.startswith("quick") for line in lines)
    assert lines[-1] == "frozen at exit: True"
