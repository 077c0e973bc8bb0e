"""Penalties, max-norm clipping, input noise and augmentation against torch and by hand."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from tuner.train.models import CNN, MLP
from tuner.train.regularizers import (
    add_input_noise,
    apply_max_norm,
    augment_images,
    penalized_weights,
    penalty,
)


def _ids(tensors: list[torch.Tensor]) -> set[int]:
    return {id(t) for t in tensors}


# --- which parameters are penalized ----------------------------------------------------


def test_penalized_weights_are_the_linear_weights_not_biases_nor_batchnorm() -> None:
    model = MLP(5, 3, hidden=7, layers=2, batchnorm=True)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(linears) == 3 and len(norms) == 2

    got = _ids(penalized_weights(model))

    assert got == _ids([m.weight for m in linears])
    excluded = [m.bias for m in linears if m.bias is not None]
    excluded += [p for m in norms for p in (m.weight, m.bias)]
    assert excluded  # the head's bias and the BN scales and shifts
    assert not got & _ids(excluded)


def test_penalized_weights_include_conv_kernels() -> None:
    model = CNN((1, 8, 8), 4, hidden=3, layers=2, batchnorm=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]

    got = _ids(penalized_weights(model))

    assert _ids([c.weight for c in convs]) <= got
    assert got == _ids([c.weight for c in convs] + [model.head.weight])


# --- the penalty -------------------------------------------------------------------------


def _weights(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_(),
            torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64).requires_grad_()]


@pytest.mark.parametrize(("l1", "l2"), [(0.0, 0.0), (0.3, 0.0), (0.0, 0.7), (0.3, 0.7)])
def test_penalty_value_matches_hand_computation(l1: float, l2: float) -> None:
    weights = _weights()
    flat = np.concatenate([w.detach().numpy().ravel() for w in weights])
    expected = l1 * np.abs(flat).sum() + l2 / 2 * (flat**2).sum()

    got = penalty(weights, l1, l2)

    assert got.ndim == 0
    assert float(got.detach()) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_l2_penalty_gradient_is_l2_times_w() -> None:
    weights, l2 = _weights(), 0.37

    penalty(weights, 0.0, l2).backward()

    for w in weights:
        assert w.grad is not None
        torch.testing.assert_close(w.grad, l2 * w.detach(), rtol=0, atol=1e-15)


def test_l1_penalty_gradient_is_l1_times_sign_w() -> None:
    weights, l1 = _weights(1), 0.25

    penalty(weights, l1, 0.0).backward()

    for w in weights:
        assert w.grad is not None
        torch.testing.assert_close(w.grad, l1 * w.detach().sign(), rtol=0, atol=1e-15)


def _sgd_steps(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, lr: float,
               weight_decay: float = 0.0, l2: float = 0.0, steps: int = 5) -> torch.Tensor:
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        if l2:
            loss = loss + penalty(penalized_weights(model), 0.0, l2)
        loss.backward()
        opt.step()
    return model.weight.detach()


def test_l2_penalty_with_plain_sgd_equals_torch_weight_decay() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    initial = nn.Linear(6, 3, bias=False)
    ours, reference, plain = (copy.deepcopy(initial) for _ in range(3))
    lr, l2 = 0.1, 0.05

    got = _sgd_steps(ours, x, y, lr, l2=l2)
    expected = _sgd_steps(reference, x, y, lr, weight_decay=l2)
    undecayed = _sgd_steps(plain, x, y, lr)

    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, undecayed, atol=1e-4)  # the decay did something


# --- max-norm ----------------------------------------------------------------------------


def test_max_norm_clips_rows_above_c_and_keeps_rows_below() -> None:
    c = 1.0
    w = torch.tensor([[3.0, 4.0, 0.0],    # norm 5   -> rescaled to norm 1
                      [0.3, 0.4, 0.0],    # norm 0.5 -> unchanged
                      [0.0, 0.0, -2.0],   # norm 2   -> rescaled to norm 1
                      [0.6, 0.0, 0.8]])   # norm 1   -> unchanged (not above c)
    before = w.clone()

    apply_max_norm([w], c)

    norms = w.norm(dim=1)
    assert torch.all(norms <= c + 1e-6)
    torch.testing.assert_close(w[0], torch.tensor([0.6, 0.8, 0.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(w[2], torch.tensor([0.0, 0.0, -1.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(w[1], before[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(w[3], before[3], rtol=0, atol=1e-6)


def test_max_norm_keeps_direction_and_works_on_random_linear_weights() -> None:
    torch.manual_seed(0)
    w = torch.randn(20, 10) * torch.linspace(0.05, 1.0, 20).unsqueeze(1)
    before = w.clone()
    c = 1.5
    big = before.norm(dim=1) > c
    assert big.any() and (~big).any()

    apply_max_norm([w], c)

    assert torch.all(w.norm(dim=1) <= c + 1e-5)
    torch.testing.assert_close(w[~big], before[~big], rtol=0, atol=0)
    torch.testing.assert_close(w[big].norm(dim=1), torch.full((int(big.sum()),), c),
                               rtol=1e-5, atol=1e-5)
    # Rescaling only: each clipped row is a positive multiple of the original.
    cos = nn.functional.cosine_similarity(w[big], before[big], dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-5)


def test_max_norm_on_conv_kernels_is_per_output_channel() -> None:
    torch.manual_seed(1)
    kernel = torch.randn(6, 3, 3, 3) * torch.tensor([0.01, 0.05, 1, 2, 3, 4]).view(6, 1, 1, 1)
    before = kernel.clone()
    c = 2.0
    channel_norms = before.flatten(1).norm(dim=1)
    big = channel_norms > c
    assert big.any() and (~big).any()

    apply_max_norm([kernel], c)

    after = kernel.flatten(1).norm(dim=1)
    assert torch.all(after <= c + 1e-5)
    torch.testing.assert_close(kernel[~big], before[~big], rtol=0, atol=0)
    torch.testing.assert_close(after[big], torch.full((int(big.sum()),), c), rtol=1e-5,
                               atol=1e-5)


# --- input noise -------------------------------------------------------------------------


def test_input_noise_has_zero_mean_and_std_sigma() -> None:
    torch.manual_seed(0)
    x = torch.randn(400, 250)
    sigma = 0.3

    noise = add_input_noise(x, sigma) - x

    assert noise.shape == x.shape
    # 100k samples: the standard error of the mean is sigma / 316, of the std ~ sigma / 447.
    assert abs(noise.mean().item()) < 5 * sigma / math.sqrt(noise.numel())
    assert noise.std().item() == pytest.approx(sigma, rel=0.01)


def test_input_noise_is_reproducible_with_a_seed() -> None:
    x = torch.zeros(10, 3)
    torch.manual_seed(5)
    a = add_input_noise(x, 1.0)
    torch.manual_seed(5)
    b = add_input_noise(x, 1.0)
    torch.manual_seed(6)
    c = add_input_noise(x, 1.0)

    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --- image augmentation ------------------------------------------------------------------


def _images(n: int = 16, shape: tuple[int, int, int] = (1, 8, 8)) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(n, math.prod(shape))


def test_augment_preserves_shape_and_changes_images() -> None:
    x = _images()

    out = augment_images(x, (1, 8, 8))

    assert out.shape == x.shape
    changed = (out - x).abs().flatten(1).amax(dim=1) > 1e-3
    assert changed.float().mean() > 0.9


def test_augment_without_shift_or_rotation_is_identity() -> None:
    x = _images(shape=(3, 8, 8))

    out = augment_images(x, (3, 8, 8), max_shift=0.0, max_degrees=0.0)

    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_augment_shift_of_one_pixel_moves_the_image_by_one_pixel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    x = _images(n=4)
    # torch.rand -> 1 everywhere: the largest shift, +1 pixel along both axes.
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: torch.ones(*size, **kw))

    out = augment_images(x, (1, 8, 8), max_shift=1.0, max_degrees=0.0)

    images = x.view(4, 8, 8)
    # Output pixel (i, j) samples the input at (i + 1, j + 1); the border is repeated.
    rows = torch.clamp(torch.arange(8) + 1, max=7)
    expected = images[:, rows][:, :, rows]
    torch.testing.assert_close(out.view(4, 8, 8), expected, rtol=0, atol=1e-5)


def test_augment_rotation_of_ninety_degrees_is_rot90(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _images(n=3)
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: torch.ones(*size, **kw))

    out = augment_images(x, (1, 8, 8), max_shift=0.0, max_degrees=90.0)

    expected = torch.rot90(x.view(3, 8, 8), k=1, dims=(1, 2))
    torch.testing.assert_close(out.view(3, 8, 8), expected, rtol=0, atol=1e-5)
