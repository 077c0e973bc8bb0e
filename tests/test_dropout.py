"""tuner/train/dropout.py: the cheap masks keep nn.Dropout's semantics, and whole-epoch draws
are consumed exactly and reproducibly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tuner.train.dropout import (
    SCALE,
    Dropout,
    RandomWords,
    dropout_mask,
    epoch_masks,
    keep_below,
    uniform15,
)

CPU = torch.device("cpu")


MASK64 = (1 << 64) - 1


def _xorshift64(state: int) -> int:
    """Marsaglia's xorshift64 (13, 7, 17) on an unsigned 64-bit integer: the reference."""
    state ^= (state << 13) & MASK64
    state ^= state >> 7
    state ^= (state << 17) & MASK64
    return state


def test_random_words_are_xorshift64_star_lanes_seeded_from_the_generator() -> None:
    words = RandomWords(torch.Generator().manual_seed(7))
    seeds = torch.empty(5, dtype=torch.int64).random_(
        generator=torch.Generator().manual_seed(7)).bitwise_or_(1)
    lanes = [int(v) % (1 << 64) for v in seeds]
    # Draws of 3, then 5 (two lanes more, seeded from the same generator), then 2 words.
    more = torch.empty(2, dtype=torch.int64)
    generator = torch.Generator().manual_seed(7)
    torch.empty(3, dtype=torch.int64).random_(generator=generator)
    more.random_(generator=generator).bitwise_or_(1)
    lanes = lanes[:3] + [int(v) % (1 << 64) for v in more]
    for n in (3, 5, 2):
        got = [int(v) % (1 << 64) for v in words.draw(n)]
        lanes[:n] = [_xorshift64(s) for s in lanes[:n]]
        assert got == [s * 0x2545F4914F6CDD1D & MASK64 for s in lanes[:n]]  # xorshift64*
    # The words are a buffer of their own: changing them leaves the lanes' states alone.
    words.draw(4).zero_()
    lanes[:4] = [_xorshift64(s) for s in lanes[:4]]
    assert [int(v) % (1 << 64) for v in words.draw(4)] == [
        _xorshift64(s) * 0x2545F4914F6CDD1D & MASK64 for s in lanes[:4]]


@pytest.mark.parametrize("source", ["torch", "lanes"])
def test_uniforms_cover_fifteen_bits_evenly(source: str) -> None:
    torch.manual_seed(0)
    generator = RandomWords(torch.Generator().manual_seed(0)) if source == "lanes" else None
    u = uniform15((200_000,), CPU, generator).long()
    assert u.min() >= 0 and u.max() < SCALE
    # Each of the 15 bits is set half the time (4 standard errors of 200k draws: 0.0045).
    for bit in range(15):
        assert ((u >> bit) & 1).float().mean().item() == pytest.approx(0.5, abs=0.0045)
    # Every value is equally likely: 16 equal bins hold 1/16 each.
    counts = torch.bincount(u >> 11, minlength=16).float() / u.numel()
    assert torch.allclose(counts, torch.full((16,), 1 / 16), atol=0.0035)


def test_lane_uniforms_are_independent_across_draws_and_neighbours() -> None:
    """Successive draws of a lane (the same unit of successive batches) and neighbouring
    lanes are uncorrelated, and a mask's dropped fraction is its rate on every draw."""
    words = RandomWords(torch.Generator().manual_seed(3))
    draws = torch.stack([uniform15((50_000, 4), CPU, words).double() for _ in range(6)])
    centred = (draws - draws.mean()) / draws.std()
    limit = 4 / math.sqrt(draws[0].numel())  # 4 standard errors of a zero correlation
    for t in range(5):
        assert abs((centred[t] * centred[t + 1]).mean().item()) < limit  # lane over time
    # The four uniforms of a word, and the words of neighbouring lanes.
    assert abs((centred[:, :, 0] * centred[:, :, 1]).mean().item()) < limit
    assert abs((centred[:, :-1] * centred[:, 1:]).mean().item()) < limit
    p, n = 0.3, 400_000
    for _ in range(3):
        dropped = (dropout_mask((n,), p, torch.float32, CPU, words) == 0).float().mean()
        assert dropped.item() == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.77])
def test_kept_units_are_scaled_by_exactly_one_over_keep(p: float) -> None:
    torch.manual_seed(1)
    x = torch.rand(400, 500) + 0.5  # no zeros: a zero in the output means dropped
    out = Dropout(p).train()(x)
    dropped = out == 0
    torch.testing.assert_close(out[~dropped], x[~dropped] / (1 - p), rtol=1e-6, atol=0)
    # 200k Bernoulli draws: the dropped fraction is p within 4 standard errors.
    stderr = math.sqrt(p * (1 - p) / x.numel())
    assert dropped.float().mean().item() == pytest.approx(p, abs=4 * stderr + 2 ** -15)


def test_it_is_an_nn_dropout_that_is_the_identity_in_eval() -> None:
    layer = Dropout(0.5)
    assert isinstance(layer, nn.Dropout)
    x = torch.randn(8, 16)
    assert torch.equal(layer.eval()(x), x)


def test_per_member_rates_and_a_zero_rate_keeps_everything() -> None:
    torch.manual_seed(2)
    p = torch.tensor([0.0, 0.2, 0.6], dtype=torch.float64).view(3, 1, 1)
    mask = dropout_mask((3, 500, 200), p, torch.float32, CPU)
    assert torch.equal(mask[0], torch.ones(500, 200))  # exactly the identity
    for i, rate in enumerate((0.2, 0.6)):
        kept = mask[i + 1] != 0
        assert torch.allclose(mask[i + 1][kept], torch.tensor(1 / (1 - rate)))
        assert (~kept).float().mean().item() == pytest.approx(rate, abs=0.005)
    # The thresholds: round((1-p) * 2^15) - 1, the largest uniform that keeps.
    assert keep_below(0.0) == SCALE - 1 and keep_below(0.5) == SCALE // 2 - 1


def test_a_rate_that_rounds_to_keeping_everything_does_not_wrap_around() -> None:
    mask = dropout_mask((1000,), 1e-9, torch.float32, CPU)
    assert torch.equal(mask, torch.full((1000,), 1 / (1 - 1e-9)))


def test_epoch_masks_are_drawn_once_and_used_row_by_row(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(4, 32), Dropout(0.5), nn.Linear(32, 4), Dropout(0.25))
    model.train()
    layers = [m for m in model if isinstance(m, Dropout)]
    draws = []
    real = uniform15

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        draws.append(args[0])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("tuner.train.dropout.uniform15", counted)
    torch.manual_seed(3)
    with epoch_masks(model, 100):
        outs = [model(torch.ones(b, 4)) for b in (40, 40, 20)]
        assert all(layer._plan.rows_left == 0 for layer in layers)
    # One draw per layer for the whole epoch (100 rows), not one per batch.
    assert sorted(draws) == [(100, 4), (100, 32)]
    assert all(layer._plan.rows_left is None and layer._plan.pool is None for layer in layers)
    assert [o.shape[0] for o in outs] == [40, 40, 20]


def test_epoch_draws_are_reproducible_and_match_the_per_batch_statistics() -> None:
    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        layer = Dropout(0.3).train()
        with epoch_masks(layer, 3000):
            return torch.cat([layer(torch.ones(100, 50)) for _ in range(30)])

    first, again, other = run(4), run(4), run(5)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert (first == 0).float().mean().item() == pytest.approx(0.3, abs=0.005)


def test_a_batch_beyond_the_plan_draws_its_own_mask() -> None:
    layer = Dropout(0.5).train()
    with epoch_masks(layer, 10):
        out = layer(torch.ones(25, 8))  # more rows than planned: no pool is used
        assert layer._plan.pool is None and layer._plan.rows_left == 10
    assert out.shape == (25, 8)
