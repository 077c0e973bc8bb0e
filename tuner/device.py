"""Where trials run: the one place that turns ``--device`` into a ``torch.device``, and
that decides how many CPU threads torch uses for them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
