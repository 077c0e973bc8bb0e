"""Where trials run: the one place that turns ``--device`` into a ``torch.device``, and
that decides how many CPU threads torch uses for them."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator

import torch

from tuner.errors import UsageError

# What torch would use on its own (one thread per physical core), read before the
# tuner changes it; `tuner bench` measures the machine's matmul peak with it.
MACHINE_THREADS = torch.get_num_threads()

# Trials on the CPU run torch with one intra-op thread. The tuner's models are small:
# one of their matmuls takes microseconds, less than handing it to the thread pool and
# meeting the other threads at its barrier, and on a busy or shared machine that
# meeting waits for a time slice of a core someone else holds (milliseconds).
# Measured on a shared 2-core machine (`tuner bench --threads 1` vs `--threads 2`):
# digits/MLP epochs ran more than 10x faster on one thread, and even an MLP of 512
# units on batches of 256 (12,000 samples) ran 10-20x faster. The cores are better
# used by trials side by side: `--workers N` gives each worker its share of them.
CPU_THREADS = 1


def _flushing() -> bool:
    """Whether this thread's CPU flushes subnormal floats to zero now (a subnormal times
    one is zero then); torch can set the mode but not read it."""
    return float(torch.tensor([1e-40]).mul(1.0)) == 0.0


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Within the block, subnormal floats (below 1.2e-38 in float32) count as zero on
    the CPU (``torch.set_flush_denormal``), as they are back where they were after.

    Arithmetic on subnormals takes a slow path in the CPU, a hundred cycles an
    operation. Training produces them: Adam's second moments of tiny gradients, the
    weights and activations of members that learn slowly. Measured on a fused
    population of 32 digits MLPs: its epochs slowed from 155 to 239 ms as they
    accumulated, and stayed at 142-151 ms with them flushed. Values that small are zero
    for every loss a trial computes. The mode is per thread; the tuner trains on one
    (``CPU_THREADS``).

    >>> with flush_denormals():
    ...     float(torch.tensor([1e-40]) * 1.0)
    0.0
    >>> float(torch.tensor([1e-40]) * 1.0) > 0
    True
    """
    before = _flushing()
    if not torch.set_flush_denormal(True):  # a CPU without the mode: nothing to do
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _onednn_flag() -> object | None:
    """torch's switch that lets float32 matrix products run in oneDNN (None in a torch
    without it, before 2.9)."""
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    if not torch.backends.mkldnn.is_available() or not hasattr(matmul, "fp32_precision"):
        return None
    return matmul


@contextlib.contextmanager
def onednn_matmul() -> Iterator[None]:
    """Within the block, float32 matrix products on the CPU run in oneDNN instead of
    torch's default BLAS (MKL); as they were after.

    torch routes them there when ``torch.backends.mkldnn.matmul.fp32_precision`` is
    ``"bf16"``, which *allows* oneDNN to round the operands to bfloat16: it does so
    where the CPU has AMX tiles, and elsewhere computes in float32. Use this only where
    :func:`onednn_fp32_exact` says the results are float32's.
    """
    flag = _onednn_flag()
    if flag is None:
        yield
        return
    before = flag.fp32_precision  # type: ignore[attr-defined]
    flag.fp32_precision = "bf16"  # type: ignore[attr-defined]
    try:
        yield
    finally:
        flag.fp32_precision = before  # type: ignore[attr-defined]


def _probe_operands() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = 1 + torch.randint(0, 1 << 12, (4, 64, 128), generator=gen) / (1 << 12)
    b = torch.randint(0, 4, (4, 128, 96), generator=gen).float()
    return a, b


@functools.cache
def onednn_fp32_exact() -> bool:
    """Whether :func:`onednn_matmul`'s products are exact float32 on this CPU.

    The probe's operands need 13 significant bits (bfloat16 keeps 8) and every product
    and sum is exact in float32, so one rounded operand shows as a wrong result.
    """
    if _onednn_flag() is None:
        return False
    a, b = _probe_operands()
    exact = torch.bmm(a.double(), b.double()).float()
    with onednn_matmul():
        return torch.equal(torch.bmm(a, b), exact) and torch.equal(
            torch.bmm(b.transpose(1, 2), a.transpose(1, 2)), exact.transpose(1, 2))


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def onednn_fp32_faster() -> bool:
    """Whether batched float32 products of a fused population's size run markedly
    faster in oneDNN than in torch's default BLAS here, with the same results
    (:func:`onednn_fp32_exact`). Measured once per process, on the tuner's threads.

    MKL, torch's default BLAS on x86, takes its AVX2 code on AMD CPUs, while oneDNN uses
    AVX-512 where the CPU has it. Measured on a 2-core AMD EPYC (Zen 5), one thread:
    ``[32, 64, 128] @ [32, 128, 128]`` took 631 us in MKL (106 GFLOP/s) and 302 us in
    oneDNN (222 GFLOP/s). A single small product gains nothing (oneDNN's call costs
    more), so only the fused engine's batched products use it.
    """
    if not onednn_fp32_exact():
        return False
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(16, 64, 128, generator=gen)
    b = torch.randn(16, 128, 128, generator=gen)

    def product() -> None:
        torch.bmm(a, b)

    def onednn_product() -> None:
        with onednn_matmul():
            torch.bmm(a, b)

    product()  # warm-up: library initialization, oneDNN's kernel cache
    onednn_product()
    default = oned = float("inf")
    for _ in range(3):  # interleaved, the best of each: a shared machine only adds time
        default = min(default, _best_seconds(product, 5))
        oned = min(oned, _best_seconds(onednn_product, 5))
    return oned < 0.8 * default


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU.

    On the CPU it also sets torch's intra-op threads to ``CPU_THREADS`` (see above).

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    spec = spec.strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(
            f"--device: expected auto, cpu, cuda or cuda:N, but got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    else:
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, but got {spec!r}")
    return device
