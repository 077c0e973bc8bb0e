"""Where trials run: the one place that turns ``--device`` into a ``torch.device``, and
that decides how many CPU threads torch uses for them."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import threading
from collections.abc import Iterator
from typing import Any

import torch

from tuner.errors import UsageError
from tuner.formatting import plural
from tuner.machine import available_memory

# What torch would use on its own (one thread per physical core), read before the
# tuner changes it; `tuner bench` measures the machine's matmul peak with it.
MACHINE_THREADS = torch.get_num_threads()

# Trials on the CPU run torch with one intra-op thread. The tuner's models are small:
# one of their matmuls takes microseconds, less than handing it to the thread pool and
# meeting the other threads at its barrier, and on a busy or shared machine that
# meeting waits for a time slice of a core someone else holds (milliseconds).
# One thread is the faster for the wider of them too (`tuner bench --threads 1`
# against `--threads 2` compares). The cores are better used by trials side by side:
# `--workers N` gives each worker its share of them.
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
    weights and activations of members that learn slowly: a fused population's epochs
    slow down as they accumulate, and do not with them flushed. Values that small are zero
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


def _onednn_flag() -> Any:
    """torch's switch that lets float32 matrix products run in oneDNN (None in a torch
    without it, before 2.9)."""
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    if not torch.backends.mkldnn.is_available() or not hasattr(matmul, "fp32_precision"):
        return None
    return matmul


_onednn_lock = threading.Lock()
_onednn_depth = 0  # open onednn_matmul blocks, over all threads
_onednn_before = "none"  # the switch's value when the first of them opened


@contextlib.contextmanager
def onednn_matmul() -> Iterator[None]:
    """Within the block, float32 matrix products on the CPU run in oneDNN instead of
    torch's default BLAS (MKL); as they were once the last open block closes.

    torch routes them there when ``torch.backends.mkldnn.matmul.fp32_precision`` is
    ``"bf16"``, which *allows* oneDNN to round the operands to bfloat16: it does so
    where the CPU has AMX tiles, and elsewhere computes in float32. Use this only where
    :func:`onednn_fp32_exact` says the results are float32's. The switch is torch's,
    for the whole process: blocks in several threads nest (the switch stays on until
    the last closes), and while one is open torch's legacy
    ``torch.get_float32_matmul_precision()`` refuses to read it.
    """
    global _onednn_depth, _onednn_before
    flag = _onednn_flag()
    if flag is None:
        yield
        return
    with _onednn_lock:
        if _onednn_depth == 0:
            _onednn_before = flag.fp32_precision
            flag.fp32_precision = "bf16"
        _onednn_depth += 1
    try:
        yield
    finally:
        with _onednn_lock:
            _onednn_depth -= 1
            if _onednn_depth == 0:
                flag.fp32_precision = _onednn_before


def _probes() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(bias, a, b) of the exactness probe: the fused model's product shapes (a wide
    layer, a narrow input, a few outputs), operands of 13 significant bits (bfloat16
    keeps 8) whose products and sums are all exact in float32."""
    gen = torch.Generator().manual_seed(0)

    def fine(*shape: int) -> torch.Tensor:
        return 1 + torch.randint(0, 1 << 12, shape, generator=gen) / (1 << 12)

    def small(*shape: int) -> torch.Tensor:
        return torch.randint(0, 4, shape, generator=gen).float()

    return [(torch.zeros(4, 1, 96), fine(4, 64, 128), small(4, 128, 96)),
            (small(4, 1, 128), fine(4, 64, 5), small(4, 5, 128)),
            (small(4, 3, 1), small(4, 3, 128), fine(4, 128, 64))]


@functools.cache
def onednn_fp32_exact() -> bool:
    """Whether :func:`onednn_matmul`'s products are exact float32 on this CPU.

    Every probe is exact in float32, so one operand rounded to bfloat16 shows as a
    wrong result; each is checked as ``baddbmm`` and, transposed, as ``bmm``.
    """
    if _onednn_flag() is None:
        return False
    with onednn_matmul():
        for bias, a, b in _probes():
            exact = torch.baddbmm(bias.double(), a.double(), b.double()).float()
            if not torch.equal(torch.baddbmm(bias, a, b), exact):
                return False
            product = torch.bmm(b.transpose(1, 2), a.transpose(1, 2))
            if not torch.equal(product + bias.transpose(1, 2), exact.transpose(1, 2)):
                return False
    return True


def _cpu_vendor() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


@functools.cache
def onednn_fp32_preferred() -> bool:
    """Whether the fused engine runs its float32 products in oneDNN on this CPU.

    Yes where oneDNN's results are exact float32 (:func:`onednn_fp32_exact`) and the CPU
    is an AMD one with AVX-512: MKL, torch's default BLAS on x86, takes its AVX2 code
    on AMD CPUs, while oneDNN uses AVX-512, so there the fused engine's batched
    products run faster in oneDNN. On Intel CPUs MKL has AVX-512 code of its own. A
    single small product gains nothing (oneDNN's call costs more), so only the fused
    engine's batched products use it. The rule reads the CPU, not a timing, so a run
    rounds the same way every time on one machine. ``TUNER_FUSED_MATMUL`` overrides
    it: ``onednn`` (where exact) or ``blas``.
    """
    choice = os.environ.get("TUNER_FUSED_MATMUL", "auto").strip().lower()
    if choice not in ("auto", "onednn", "blas"):
        raise UsageError(f"TUNER_FUSED_MATMUL: expected auto, onednn or blas, but got "
                         f"{choice!r}")
    if choice == "blas" or not onednn_fp32_exact():
        return False
    if choice == "onednn":
        return True
    return ("AMD" in _cpu_vendor().upper()
            and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))


# glibc's mallopt parameters, and the values the tuner sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # blocks up to this size come from the heap, and are reused
_TRIM_THRESHOLD = 128 << 20  # free memory the heap keeps at its top


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep and reuse the memory of freed tensors (True if set).

    By default glibc hands a freed block above its mmap threshold back to the OS, and
    trims the heap once its free top exceeds twice the threshold, which moves with the
    sizes freed. A training step allocates and frees tensors of about a megabyte each
    (a fused population's activations and masks), and depending on the order of sizes
    seen (evaluation chunks of 4 MiB, say) every step then maps fresh pages and takes a
    page fault on each, which slows a fused population's epochs; with the thresholds
    fixed as here (blocks up to 32 MiB from the heap, up to 128 MiB of free heap kept)
    the memory is reused. What PyTorch's CPU tuning guides get from jemalloc or
    tcmalloc. Only on Linux with glibc; a process whose own
    ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` is set keeps its settings.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return (libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU.

    On the CPU it also sets torch's intra-op threads to ``CPU_THREADS`` (see above) and
    makes freed memory stay with the process (:func:`reuse_freed_memory`).

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
            count = plural(torch.cuda.device_count(), "CUDA device")
            raise UsageError(f"--device {spec}: only {count}")
    elif device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
        reuse_freed_memory()
    else:
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, but got {spec!r}")
    return device


def free_memory(device: torch.device) -> int | None:
    """Bytes a trial on ``device`` could still allocate; None where it cannot be told.

    On CUDA, the device's free memory (``torch.cuda.mem_get_info``; it creates the
    CUDA context of this process if there is none). On the CPU, the least of: the
    kernel's estimate of what can be allocated without swapping (``MemAvailable``), what
    the process's cgroup (a container's memory limit) has left, and the address space
    ``RLIMIT_AS`` leaves. A machine's whole memory would overstate all three.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    return available_memory()
