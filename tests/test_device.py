"""Where trials run: the CPU's floating-point modes and the choice of matmul library."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading

import pytest
import torch

from tuner.errors import UsageError
from tuner.train import device
from tuner.train.device import flush_denormals, onednn_fp32_exact, onednn_matmul

needs_exact_onednn = pytest.mark.skipif(
    not onednn_fp32_exact(), reason="oneDNN rounds float32 operands on this CPU (AMX), "
                                    "or this torch cannot route float32 products to it")


def test_flush_denormals_zeroes_subnormals_inside_and_restores_the_mode() -> None:
    tiny = torch.tensor([1e-40])
    assert float(tiny * 1.0) > 0
    with flush_denormals():
        assert float(tiny * 1.0) == 0.0
    assert float(tiny * 1.0) > 0


def test_every_probe_is_exact_in_float32_and_shows_a_bfloat16_rounding() -> None:
    """The exactness probes' products are exact in float32, and rounding either operand
    to bfloat16 changes them: a oneDNN that rounds cannot pass."""
    for bias, a, b in device._probes():
        exact = torch.baddbmm(bias.double(), a.double(), b.double())
        assert torch.equal(torch.baddbmm(bias, a, b).double(), exact)
        assert not torch.equal(torch.baddbmm(bias.double(), a.bfloat16().double(),
                                             b.bfloat16().double()), exact)


def test_the_choice_follows_the_cpu_and_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "onednn_fp32_exact", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")

    def choice(vendor: str, override: str | None = None) -> bool:
        device.onednn_fp32_preferred.cache_clear()
        monkeypatch.setattr(device, "_cpu_vendor", lambda: vendor)
        if override is None:
            monkeypatch.delenv("TUNER_FUSED_MATMUL", raising=False)
        else:
            monkeypatch.setenv("TUNER_FUSED_MATMUL", override)
        return device.onednn_fp32_preferred()

    try:
        assert choice("AuthenticAMD") and not choice("GenuineIntel")
        assert choice("GenuineIntel", "onednn") and not choice("AuthenticAMD", "blas")
        with pytest.raises(UsageError, match="TUNER_FUSED_MATMUL: expected auto"):
            choice("AuthenticAMD", "mkl")
        monkeypatch.setattr(device, "onednn_fp32_exact", lambda: False)
        assert not choice("AuthenticAMD", "onednn")  # never where oneDNN rounds
    finally:
        device.onednn_fp32_preferred.cache_clear()


def test_onednn_matmul_sets_torch_flag_only_inside_the_block() -> None:
    flag = device._onednn_flag()
    if flag is None:
        pytest.skip("this torch has no torch.backends.mkldnn.matmul.fp32_precision")
    before = flag.fp32_precision
    with onednn_matmul():
        assert flag.fp32_precision == "bf16"
    assert flag.fp32_precision == before
    with pytest.raises(ValueError), onednn_matmul():
        raise ValueError  # restored on the way out of an exception too
    assert flag.fp32_precision == before


def test_onednn_blocks_in_two_threads_restore_the_flag_when_the_last_closes() -> None:
    flag = device._onednn_flag()
    if flag is None:
        pytest.skip("this torch has no torch.backends.mkldnn.matmul.fp32_precision")
    before = flag.fp32_precision
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with onednn_matmul():
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    with onednn_matmul():
        thread.start()
        entered.wait(5)
    # This thread's block closed first: the other's is still open, and so is the switch.
    assert flag.fp32_precision == "bf16"
    release.set()
    thread.join(5)
    assert flag.fp32_precision == before


@needs_exact_onednn
@pytest.mark.parametrize("transpose", [False, True])
def test_onednn_products_equal_the_default_blas(transpose: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(8, 33, 70, generator=gen)
    b = torch.randn(8, 50, 70, generator=gen).transpose(1, 2)
    bias = torch.randn(8, 1, 50, generator=gen)
    if transpose:
        a = torch.randn(8, 70, 33, generator=gen).transpose(1, 2)
    expected = torch.baddbmm(bias.double(), a.double(), b.double())
    with onednn_matmul():
        got = torch.baddbmm(bias, a, b)
    default = torch.baddbmm(bias, a, b)
    # Both are float32 products: the same error against float64, far under bfloat16's.
    for value in (got, default):
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, default, rtol=1e-5, atol=1e-5)


_FAULTS = """
import resource, sys, torch
from tuner.train.config import TrialConfig
from tuner.data.builtin import load_splits
from tuner.train.device import reuse_freed_memory
from tuner.fused._group import Group, Member
from tuner.train.metrics import METRICS
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
torch.set_num_threads(1)
data = load_splits("digits", seed=0)
configs = [TrialConfig.from_values({"hidden": 128, "layers": 2, "batch_size": 64,
                                    "dropout": 0.1 + i / 100}, epochs=3, seed=i)
           for i in range(32)]
group = Group([Member(i, c) for i, c in enumerate(configs)], data, seed=0)
group.train_epoch(data, METRICS["accuracy"])  # warm-up: the allocator's thresholds settle
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
group.train_epoch(data, METRICS["accuracy"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
@pytest.mark.slow
def test_an_epoch_reuses_freed_memory_instead_of_faulting_in_fresh_pages() -> None:
    """An epoch of a fused population of 32 MLPs of 128 units frees and allocates
    tensors of about a megabyte at every step. With the tuner's malloc thresholds it
    reuses their memory: few pages are faulted in. (With glibc's own, this epoch faulted
    in 18,842 pages, 74 MiB, on the development machine.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True,
                             text=True, check=True, env=env)
        return int(out.stdout.strip().splitlines()[-1])

    assert faults("reuse") < 2000  # under 8 MiB of fresh pages in an epoch
