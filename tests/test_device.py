"""Where trials run: the CPU's floating-point modes and the choice of matmul library."""

from __future__ import annotations

import pytest
import torch

from tuner import device
from tuner.device import flush_denormals, onednn_fp32_exact, onednn_matmul

needs_exact_onednn = pytest.mark.skipif(
    not onednn_fp32_exact(), reason="oneDNN rounds float32 operands on this CPU (AMX), "
                                    "or this torch cannot route float32 products to it")


def test_flush_denormals_zeroes_subnormals_inside_and_restores_the_mode() -> None:
    tiny = torch.tensor([1e-40])
    assert float(tiny * 1.0) > 0
    with flush_denormals():
        assert float(tiny * 1.0) == 0.0
    assert float(tiny * 1.0) > 0


def test_the_probe_operands_show_a_bfloat16_rounding() -> None:
    """The exactness probe's operands need more bits than bfloat16 keeps, and their
    product is exact in float32: a rounded operand would change the result."""
    a, b = device._probe_operands()
    exact = torch.bmm(a.double(), b.double())
    assert torch.equal(torch.bmm(a, b).double(), exact)
    rounded = torch.bmm(a.bfloat16().double(), b.double())
    assert not torch.equal(rounded, exact)


def test_onednn_matmul_sets_torch_flag_only_inside_the_block() -> None:
    flag = device._onednn_flag()
    if flag is None:
        pytest.skip("this torch has no torch.backends.mkldnn.matmul.fp32_precision")
    before = flag.fp32_precision  # type: ignore[attr-defined]
    with onednn_matmul():
        assert flag.fp32_precision == "bf16"  # type: ignore[attr-defined]
    assert flag.fp32_precision == before  # type: ignore[attr-defined]
    with pytest.raises(ValueError), onednn_matmul():
        raise ValueError  # restored on the way out of an exception too
    assert flag.fp32_precision == before  # type: ignore[attr-defined]


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
