"""Which device each worker trains on: one GPU per worker, round-robin."""

from __future__ import annotations

import os
from collections.abc import Sequence

from tuner.errors import UsageError

# A worker is a process with its own copy of torch and the data: past a few per core they
# only wait for each other (and for the machine's memory).
MAX_WORKERS_PER_CORE = 4


def assign_devices(n_workers: int, device: str = "auto", *, gpus: Sequence[int] | None = None,
                   workers_per_gpu: int = 1, cuda_count: int = 0) -> list[str]:
    """The device of each of ``n_workers`` workers.

    With CUDA (``auto`` when GPUs are visible, ``cuda``), worker *i* gets GPU
    ``gpus[i % len(gpus)]`` (default: every visible GPU); no GPU takes more than
    ``workers_per_gpu`` workers. ``cpu`` and an explicit ``cuda:N`` place every
    worker there.

    >>> assign_devices(4, "cuda", gpus=[0, 1], workers_per_gpu=2, cuda_count=2)
    ['cuda:0', 'cuda:1', 'cuda:0', 'cuda:1']
    """
    if n_workers < 1:
        raise UsageError(f"--workers: must be >= 1, but got {n_workers}")
    cores = os.cpu_count() or 1
    if n_workers > MAX_WORKERS_PER_CORE * cores:
        raise UsageError(f"--workers {n_workers}: at most {MAX_WORKERS_PER_CORE} worker "
                         f"processes per CPU core, and this machine has {cores} "
                         f"(each worker is a process that trains; more cores than workers "
                         f"keeps them busy); use at most {MAX_WORKERS_PER_CORE * cores}, or "
                         "`tuner worker` on other machines")
    if workers_per_gpu < 1:
        raise UsageError(f"--workers-per-gpu: must be >= 1, but got {workers_per_gpu}")
    spec = device.strip().lower()
    if spec == "cpu" or (spec == "auto" and cuda_count == 0):
        if gpus:
            raise UsageError("--devices lists GPUs, but no CUDA device is in use "
                             f"(--device {device}, {cuda_count} visible)")
        return ["cpu"] * n_workers
    if spec.startswith("cuda:"):
        return [spec] * n_workers
    if spec not in ("auto", "cuda"):
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, but got {device!r}")
    if cuda_count == 0:
        raise UsageError("--device cuda: CUDA is not available on this machine")
    pool = list(gpus) if gpus else list(range(cuda_count))
    bad = [g for g in pool if not 0 <= g < cuda_count]
    if bad:
        raise UsageError(f"--devices: GPU {bad[0]} does not exist ({cuda_count} visible)")
    if n_workers > len(pool) * workers_per_gpu:
        raise UsageError(f"{n_workers} workers need {n_workers} GPUs at {workers_per_gpu} "
                         f"worker(s) per GPU, but {len(pool)} are in use; raise "
                         "--workers-per-gpu to share them")
    return [f"cuda:{pool[i % len(pool)]}" for i in range(n_workers)]
