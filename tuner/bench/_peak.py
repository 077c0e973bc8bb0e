"""The physical limit: measured matmul throughput, and the FLOPs of a training step.

The achieved fraction of peak is the training step's matrix-multiply FLOPs times the
samples trained, over the wall time, against the best rate ``torch.matmul`` reaches on
large square matrices on the same device. Elementwise work (activations, dropout,
the optimizer) is not counted: it is the matmuls the hardware is built to do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tuner.train.device import MACHINE_THREADS, onednn_fp32_exact, onednn_matmul
from tuner.train.metrics import loss_fn


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32,
                seconds: float = 0.5, size: int | None = None) -> float:
    """FLOP/s of the fastest of repeated ``n x n`` matmuls on ``device``.

    On the CPU it uses every core torch would use by default (``MACHINE_THREADS``):
    the machine's limit, whatever a run's own thread setting. In float32 it is the
    faster of torch's default BLAS and oneDNN where oneDNN's products are exact
    (:func:`tuner.train.device.onednn_fp32_exact`): on an AMD CPU, MKL takes its AVX2
    code and oneDNN is the faster.

    >>> matmul_peak(torch.device("cpu"), seconds=0.05, size=128) > 1e6
    True
    """
    n = size or (8192 if device.type == "cuda" else 1024)
    best = _matmul_peak(device, dtype, seconds, n)
    if device.type == "cpu" and dtype == torch.float32 and onednn_fp32_exact():
        with onednn_matmul():
            best = max(best, _matmul_peak(device, dtype, seconds, n))
    return best


def _matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    best = 0.0
    with _threads(MACHINE_THREADS):
        torch.matmul(a, b, out=out)  # warm-up: library initialization, clocks
        _sync(device)
        deadline = time.perf_counter() + seconds
        for rep in range(1000):
            start = time.perf_counter()
            torch.matmul(a, b, out=out)
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
            if rep >= 2 and time.perf_counter() > deadline:
                break
    return best


def train_flops_per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           task: str = "classification") -> float:
    """Matmul FLOPs of one training step (forward and backward) per sample of batch ``x``.

    Counted by torch's ``FlopCounterMode`` on a real step; for an MLP it is close to
    three times the forward pass (the first layer needs no input gradient). The model's
    gradients are left as they were.

    >>> round(train_flops_per_sample(nn.Linear(4, 2), torch.ones(8, 4), torch.zeros(8).long()))
    32
    """
    grads = [p.grad for p in model.parameters()]
    with FlopCounterMode(display=False) as counter:
        loss_fn(task, model(x), y).backward()
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g
    return counter.get_total_flops() / x.shape[0]
