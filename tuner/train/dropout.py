"""Inverted dropout with cheap masks, drawn a whole epoch at a time by the training loop.

``torch.nn.Dropout`` draws its mask with ``bernoulli_``, slowly on a CPU: on the small
networks the tuner trains, mask generation was a large share of a training step. Here
64 random bits (one ``random_`` draw) give four 15-bit uniforms, each compared with the
keep probability, for a fraction of the cost a unit. A kept unit is scaled by
``1/(1-p)`` (exactly, in float32; rounded to bfloat16 in a bfloat16 pass); the keep
probability is ``1-p`` rounded to a multiple of 2^-15.

Inside :func:`epoch_masks` (the training loop enters it once an epoch) every
:class:`Dropout` draws the masks of the epoch's batches in a few large draws instead
of one per batch, and a batch's dropout is a single multiplication. The draws end with
the epoch, so a checkpoint taken between epochs resumes the same random stream.

>>> import torch
>>> drop = Dropout(0.5).train()
>>> out = drop(torch.ones(4, 1000))
>>> sorted(set(out.flatten().tolist()))
[0.0, 2.0]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

BITS = 15  # per uniform: 64 random bits make four (the sign bit of each int16 is cleared)
SCALE = 1 << BITS
POOL_VALUES = 1 << 22  # the most mask values drawn at once (16 MiB in float32)


def keep_below(p: float | Tensor) -> Tensor | int:
    """The largest 15-bit uniform that keeps a unit: ``round((1-p) * 2^15) - 1`` (a rate
    of 0 keeps every value, up to 2^15 - 1, so the bound fits an int16)."""
    if isinstance(p, Tensor):
        return (torch.round((1 - p) * SCALE) - 1).to(torch.int16)
    return round((1 - p) * SCALE) - 1


class RandomWords:
    """Random 64-bit words from parallel xorshift64* generators, one per lane.

    A lane's state steps as Marsaglia's xorshift64 with shifts (13, 7, 17) and its word
    is the state times Vigna's xorshift64* multiplier (which scrambles the state's
    linear dependencies into every bit). All lanes step together, seven integer passes
    (the right shift made logical by a mask), where ``random_`` on a CPU runs torch's
    mt19937 one word after another. Lanes are seeded from ``generator`` (which stays
    the source of every other draw) when a draw first needs them, so a stream is fixed
    by the generator's seed and the sequence of draw sizes. ``tests/test_dropout.py``
    checks the words against a reference implementation and the masks' uniformity and
    independence.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self._state = torch.empty(0, dtype=torch.int64, device=generator.device)
        self._shifted = torch.empty_like(self._state)
        self._words = torch.empty_like(self._state)

    def draw(self, n: int) -> Tensor:
        """``n`` words (int64), in a buffer that the next draw overwrites."""
        if n > self._state.numel():
            lanes = torch.empty(n - self._state.numel(), dtype=torch.int64,
                                device=self._state.device)
            lanes.random_(generator=self.generator).bitwise_or_(1)  # a zero state stays 0
            self._state = torch.cat([self._state, lanes])
            self._shifted = torch.empty_like(self._state)
            self._words = torch.empty_like(self._state)
        x, t = self._state[:n], self._shifted[:n]
        torch.bitwise_left_shift(x, 13, out=t)
        x.bitwise_xor_(t)
        torch.bitwise_right_shift(x, 7, out=t)
        x.bitwise_xor_(t.bitwise_and_(_LOW_57))  # >> on int64 is arithmetic: clear the sign
        torch.bitwise_left_shift(x, 17, out=t)
        x.bitwise_xor_(t)
        return torch.mul(x, _XORSHIFT64_STAR, out=self._words[:n])  # wraps modulo 2^64


_LOW_57 = (1 << 57) - 1
_XORSHIFT64_STAR = 0x2545F4914F6CDD1D

# What dropout draws from: a torch generator (None: torch's default) or lanes of words.
Source = torch.Generator | RandomWords | None


def torch_generator(source: Source) -> torch.Generator | None:
    """The torch generator behind ``source``, for draws other than uniform words."""
    return source.generator if isinstance(source, RandomWords) else source


def uniform15(shape: tuple[int, ...], device: torch.device, generator: Source = None) -> Tensor:
    """int16 uniforms in ``[0, 2^15)`` of ``shape``, four to a 64-bit word."""
    n = math.prod(shape)
    words = (n + 3) // 4
    if isinstance(generator, RandomWords):
        bits = generator.draw(words)
    else:
        bits = torch.empty(words, dtype=torch.int64, device=device)
        bits.random_(generator=generator)
    return torch.bitwise_and(bits.view(torch.int16)[:n].view(shape), SCALE - 1)


def dropout_mask(shape: tuple[int, ...], p: float | Tensor, dtype: torch.dtype,
                 device: torch.device, generator: Source = None,
                 constants: MaskConstants | None = None) -> Tensor:
    """A float mask of ``shape``: 0 for a dropped unit, ``1/(1-p)`` for a kept one.

    ``p`` is a float, or a tensor that broadcasts against ``shape`` (one rate per
    member of a fused population, shaped ``[K, 1, 1]``). A caller that draws many masks
    of one rate passes ``constants``, :func:`mask_constants` of that ``p``, ``dtype`` and
    ``device``, and they are used as given (``p`` is not read again).
    """
    # Kept iff u <= bound, iff u - (bound + 1) < 0: shifted right by 15 bits that
    # difference (which fits an int16) is -1 for a kept unit and 0 for a dropped one,
    # and negated the keep mask. Integer passes over int16s and in-place passes with a
    # per-member column are the cheap ones on a CPU: comparisons into bool tensors,
    # bool-to-float conversions and addcmul with broadcast columns take several times
    # longer.
    above, scale = constants or mask_constants(p, dtype, device)
    keep = uniform15(shape, device, generator).sub_(above)
    keep.bitwise_right_shift_(BITS).neg_()
    return keep.to(dtype).mul_(scale)


# A mask's constants: the smallest uniform that drops (an int16 tensor or an int), and
# the kept units' scale (a tensor of the mask's dtype or a float).
MaskConstants = tuple[Tensor | int, Tensor | float]


def mask_constants(p: float | Tensor, dtype: torch.dtype, device: torch.device) -> MaskConstants:
    """What :func:`dropout_mask` computes from the rate ``p`` for masks of ``dtype``."""
    bound = keep_below(p)
    above = bound.to(device) + 1 if isinstance(bound, Tensor) else bound + 1
    scale = 1 / (1 - p)
    if isinstance(scale, Tensor):
        return above, scale.to(device=device, dtype=dtype)
    return above, float(torch.tensor(scale, dtype=dtype))  # rounded as a tensor column is


@dataclass
class _Plan:
    """Where a :class:`Dropout` is in its epoch (a plain object: ``nn.Module`` attribute
    assignment costs microseconds, several times per batch)."""

    rows_left: int | None = None  # rows still to come this epoch; None: no plan
    pool: Tensor | None = None  # masks drawn for the rows to come
    used: int = 0  # rows of the pool used


def in_graph_dropout(x: Tensor, rate: Tensor, training: bool) -> Tensor:
    """Inverted dropout for a compiled graph: the mask drawn in the graph (the compiler's
    random stream, seeded by torch's), the rate a tensor, so that one graph serves every
    trial's rate (a Python float would be a constant of the graph, one graph per rate)."""
    if not training:
        return x
    keep = torch.rand(x.shape, device=x.device) >= rate
    return x * (keep / (1 - rate)).to(x.dtype)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (inverted: kept units scaled by 1/(1-p); identity in eval) with the
    cheaper masks of this module, and whole-epoch draws inside :func:`epoch_masks`.

    Under ``torch.compile`` with a ``rate`` buffer (:func:`tuner.train.loop.compile_model`
    adds it), the mask is drawn in the graph instead (:func:`in_graph_dropout`): the
    epoch plan is Python state that changes at every batch, which a graph cannot hold.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self._plan = _Plan()

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling() and hasattr(self, "rate"):
            return in_graph_dropout(x, cast(Tensor, self.rate), self.training)
        if not self.training or self.p == 0:
            return x
        plan, rows = self._plan, x.shape[0]
        if plan.rows_left is None or rows > plan.rows_left:
            return x * dropout_mask(tuple(x.shape), self.p, x.dtype, x.device)
        pool = plan.pool
        if pool is None or plan.used + rows > pool.shape[0] or pool.shape[1:] != x.shape[1:]:
            drawn = min(plan.rows_left, max(rows, POOL_VALUES // max(1, x[0].numel())))
            pool = plan.pool = dropout_mask((drawn, *x.shape[1:]), self.p, x.dtype, x.device)
            plan.used = 0
        mask = pool[plan.used:plan.used + rows]
        plan.used += rows
        plan.rows_left -= rows
        return x * mask

    def plan(self, rows: int | None) -> None:
        """Expect ``rows`` training rows before the plan ends (None: no plan)."""
        self._plan = _Plan(rows)


@contextlib.contextmanager
def epoch_masks(model: nn.Module, rows: int) -> Iterator[None]:
    """Within the block, ``model``'s dropout layers draw masks for ``rows`` training rows
    (one epoch) in a few large draws."""
    layers = [m for m in model.modules() if isinstance(m, Dropout)]
    for layer in layers:
        layer.plan(rows)
    try:
        yield
    finally:
        for layer in layers:
            layer.plan(None)
