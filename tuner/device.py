"""Where trials run: the one place that turns ``--device`` into a ``torch.device``."""

from __future__ import annotations

import torch

from tuner.errors import UsageError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    elif device.type != "cpu":
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, but got {spec!r}")
    return device
