"""Several worker processes on this machine, sharing one study.

Each worker is a process (not a thread: training holds the GIL) that rebuilds the
search space from the study database and runs :func:`tuner.run.runner.run_study` on its
own device. The parent watches the database for progress and owns shutdown: on
Ctrl-C or SIGTERM every worker fails its current trial (queued again at once, it
resumes on the next run) and exits within a few seconds; stragglers are terminated. If
the parent itself is killed, its workers get SIGTERM from the kernel and stop the same
way.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

import optuna

from tuner.errors import TunerError
from tuner.run import heap
from tuner.run.runner import RunSummary, Snapshot, ignore_signal, snapshot, summarize
from tuner.run.spawn import WorkerArgs, worker_process
from tuner.run.study import count_states, finished
from tuner.space import EngineSpec
from tuner.storage import TunerStorage
from tuner.train.device import CPU_THREADS, reuse_freed_memory

SHUTDOWN_GRACE = 10.0  # seconds a worker gets to fail its trial and exit


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stop_once(signum: int, frame: FrameType | None) -> None:
    """A worker's SIGINT/SIGTERM: stop, once. Ctrl-C in a terminal reaches every worker
    and the parent then sends SIGTERM too; a second signal while the first unwinds
    (failing the trial, exiting) would end the worker with a traceback instead."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, ignore_signal)
    raise KeyboardInterrupt


def worker_main(args: WorkerArgs) -> None:
    """A worker process (started as :func:`tuner.run.spawn.worker_process`): join the study
    and work until its budget is reached, or until the command that started it dies."""
    signal.signal(signal.SIGINT, _stop_once)
    signal.signal(signal.SIGTERM, _stop_once)
    _stop_with_parent(args.parent_pid)
    try:
        import torch

        from tuner.logs import quiet_optuna
        from tuner.run.runner import run_study
        from tuner.run.study import stored_space

        quiet_optuna()
        torch.set_num_threads(args.threads)
        if torch.device(args.device).type == "cpu":
            reuse_freed_memory()
        storage = TunerStorage(args.storage_url).open()
        space = stored_space(storage, args.study_name)
        run_study(space, storage=storage, study_name=args.study_name, budget=args.budget,
                  device=torch.device(args.device), timeout=args.timeout,
                  max_trials=args.max_trials, checkpoint_every=args.checkpoint_every,
                  engine=args.engine)
    except TunerError as exc:
        print(f"Error: worker on {args.device}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def _stop_with_parent(parent_pid: int | None) -> None:
    """Have the kernel send this worker SIGTERM when the process that started it dies
    (even by ``kill -9``), so that no worker goes on claiming trials unwatched: it fails
    its trial, which is queued again, and exits. Linux only (``PR_SET_PDEATHSIG``);
    elsewhere the parent's own shutdown is all there is."""
    if not sys.platform.startswith("linux") or parent_pid is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return
    if os.getppid() != parent_pid:  # it died before the request was in place
        sys.exit(130)


_PR_SET_PDEATHSIG = 1


def run_pool(storage: TunerStorage, study: optuna.Study, budget: int, devices: list[str], *,
             timeout: float | None = None, checkpoint_every: float = 30.0,
             engine: EngineSpec | None = None, on_start: Callable[[Snapshot], None] | None = None,
             on_progress: Callable[[Snapshot], None] | None = None,
             poll: float = 0.5) -> RunSummary:
    """Run ``len(devices)`` workers on the study until it has ``budget`` finished trials."""
    storage.check_connections(len(devices))
    threads = CPU_THREADS  # per process: small models train fastest on one (tuner.train.device)
    context = mp.get_context("spawn")  # CUDA cannot be used in forked children
    before = finished(count_states(storage, study))
    start = time.monotonic()
    processes = [context.Process(
        target=worker_process, name=f"tuner-worker-{i}",
        args=(WorkerArgs(storage.url, study.study_name, budget, device, threads, timeout,
                         None, checkpoint_every, engine, parent_pid=os.getpid()),))
        for i, device in enumerate(devices)]
    if on_start is not None:
        on_start(snapshot(storage, study, budget))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for process in processes:
            process.start()
        heap.settle()  # this process's start-up is done: it watches (tuner.run.heap)
        while any(p.is_alive() for p in processes):
            time.sleep(poll)
            if on_progress is not None:
                on_progress(snapshot(storage, study, budget))
    except KeyboardInterrupt:
        _shutdown(processes)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [(p.name, p.exitcode) for p in processes if p.exitcode not in (0, None)]
    if failed:
        name, code = failed[0]
        raise TunerError(f"{len(failed)} of {len(processes)} workers failed ({name} exited with "
                         f"code {code}); the study is intact: run the same command to resume")
    if on_progress is not None:
        on_progress(snapshot(storage, study, budget))
    after = finished(count_states(storage, study))
    reason = "timeout" if timeout is not None and after < budget else (
        "budget" if after > before else "already_done")
    return summarize(storage, study, budget, before, time.monotonic() - start, reason,
                     after - before)


def _shutdown(processes: Sequence[mp.process.BaseProcess]) -> None:
    """Ask every worker to stop (SIGTERM), then terminate those still alive after the grace."""
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + SHUTDOWN_GRACE
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
