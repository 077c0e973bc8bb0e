"""K MLPs of one architecture as one batched model: weights stacked on a member axis.

Every member's parameters are one row of a ``[K, P]`` tensor (weight matrices first,
then biases and batch-norm scales and shifts), so the fused optimizer updates all of
them with a few element-wise kernels and compaction is one index. The forward pass
views each matrix as ``[K, out, in]`` and runs one batched matrix product per layer
(``torch.baddbmm``) on activations shaped ``[K, batch, features]``, with the block
order of :class:`tuner.models.MLP`: ``Linear -> [BatchNorm] -> ReLU -> [Dropout]``.
Batch norm keeps statistics per member; dropout rates are per member.

>>> import torch
>>> from tuner.models import MLP
>>> members = [MLP(4, 3, hidden=8, layers=2) for _ in range(5)]
>>> fused = FusedMLP.from_members(members)
>>> fused.forward(torch.randn(10, 4), train=False).shape
torch.Size([5, 10, 3])
>>> torch.equal(fused.member(2).head.weight, members[2].head.weight)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from tuner.dropout import dropout_mask
from tuner.models import MLP, GaussianDropout

# nn.BatchNorm1d's defaults, which tuner.models.MLP uses.
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class MLPSpec:
    """What fixes the shapes and code path of an MLP; everything else is per member."""

    n_features: int
    n_outputs: int
    hidden: int
    layers: int
    batchnorm: bool
    dropout_kind: str = "bernoulli"  # "bernoulli" or "gaussian"

    def build(self, dropout: float = 0.0) -> MLP:
        return MLP(self.n_features, self.n_outputs, hidden=self.hidden, layers=self.layers,
                   dropout=dropout, dropout_kind=self.dropout_kind, batchnorm=self.batchnorm)

    @classmethod
    def of(cls, mlp: nn.Module) -> tuple[MLPSpec, float]:
        """The spec of a :class:`tuner.models.MLP` and its dropout rate."""
        if not isinstance(mlp, MLP):
            raise TypeError(f"a fused model is built from tuner MLPs, but got {type(mlp).__name__}")
        body = list(mlp.body)
        linears = [m for m in body if isinstance(m, nn.Linear)]
        dropouts = [m for m in body if isinstance(m, (nn.Dropout, GaussianDropout))]
        kind = "gaussian" if any(isinstance(m, GaussianDropout) for m in dropouts) else "bernoulli"
        spec = cls(n_features=linears[0].in_features, n_outputs=mlp.head.out_features,
                   hidden=linears[0].out_features, layers=len(linears),
                   batchnorm=any(isinstance(m, nn.BatchNorm1d) for m in body), dropout_kind=kind)
        return spec, float(dropouts[0].p) if dropouts else 0.0


@dataclass(frozen=True)
class _Slot:
    name: str  # the key in an MLP's state_dict
    shape: tuple[int, ...]  # per member
    start: int
    end: int


@dataclass(frozen=True)
class _Layer:
    weight: str
    bias: str | None  # None with batch norm: the BN shift replaces it
    bn: str | None  # the BatchNorm1d's prefix, e.g. "body.1"


class _Layout:
    """Where each state_dict entry lives in the flat rows, read off a template MLP."""

    def __init__(self, spec: MLPSpec) -> None:
        with torch.device("meta"):  # names and shapes only: no memory, no RNG draws
            template = spec.build()
        named = list(template.named_parameters())
        # Weight matrices first: the L1/L2 penalties then act on one leading block.
        ordered = [p for p in named if p[1].ndim >= 2] + [p for p in named if p[1].ndim < 2]
        self.params = self._slots(ordered)
        self.n_weights = sum(math.prod(s.shape) for s in self.params.values() if len(s.shape) >= 2)
        self.buffers = self._slots([b for b in template.named_buffers()
                                    if not b[0].endswith("num_batches_tracked")])
        self.batch_counters = [n for n, _ in template.named_buffers()
                               if n.endswith("num_batches_tracked")]
        self.layers: list[_Layer] = []
        modules = list(template.body.named_children())
        for i, (name, module) in enumerate(modules):
            if isinstance(module, nn.Linear):
                bn = f"body.{modules[i + 1][0]}" if spec.batchnorm else None
                self.layers.append(_Layer(f"body.{name}.weight",
                                          None if bn else f"body.{name}.bias", bn))

    @staticmethod
    def _slots(named: Sequence[tuple[str, Tensor]]) -> dict[str, _Slot]:
        slots, start = {}, 0
        for name, tensor in named:
            size = tensor.numel()
            slots[name] = _Slot(name, tuple(tensor.shape), start, start + size)
            start += size
        return slots

    @staticmethod
    def views(flat: Tensor, slots: dict[str, _Slot]) -> dict[str, Tensor]:
        return {n: flat[:, s.start:s.end].view(flat.shape[0], *s.shape) for n, s in slots.items()}


class _BatchedLinear(torch.autograd.Function):
    """``x @ w^T + b`` for every member at once: ``[K, B, in] -> [K, B, out]``.

    The backward products are written out because autograd's own backward of
    ``baddbmm(b, x, w.transpose(1, 2))`` forms the weight gradient as ``x^T @ g`` and
    then transposes it, which is several times slower than ``g^T @ x`` here.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x = x.to(weight.dtype)  # the model's inputs, in a reduced compute precision
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        wt = weight.transpose(1, 2)
        return torch.bmm(x, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, wt)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x)
        grad_b = grad.sum(1) if ctx.has_bias else None
        return grad_x, grad_w, grad_b


class _BatchedHead(torch.autograd.Function):
    """The output layer, computed transposed: ``w @ x^T + b`` gives ``[K, out, B]``.

    With few outputs (classes) this orientation is the faster product, and it leaves
    the logits with the class axis in the middle, where cross-entropy's log-softmax
    is vectorized along the batch instead of along a handful of classes. In a reduced
    compute precision the logits are handed on in float32, for the loss.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        x = x.to(weight.dtype)
        ctx.save_for_backward(x, weight)
        out = torch.baddbmm(bias.unsqueeze(2), weight, x.transpose(1, 2))
        return out if out.dtype == torch.float64 else out.float()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_x = torch.bmm(grad.transpose(1, 2), weight) if ctx.needs_input_grad[0] else None
        return grad_x, torch.bmm(grad, x), grad.sum(2)


def batched_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``[K, B, in] x [K, out, in] (+ [K, out]) -> [K, B, out]``."""
    out: Tensor = _BatchedLinear.apply(x, weight, bias)
    return out


def batched_head(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The output layer as :func:`batched_linear`, returned as a ``[K, B, out]`` view of
    contiguous ``[K, out, B]`` logits (see :class:`_BatchedHead`)."""
    out: Tensor = _BatchedHead.apply(x, weight, bias)
    return out.transpose(1, 2)


def add_input_noise(x: Tensor, sigma: Tensor, generator: torch.Generator | None) -> Tensor:
    """Inputs ``[B, F]`` (shared) or ``[K, B, F]`` plus Gaussian noise with each member's
    ``sigma`` (``[K]``): ``[K, B, F]``. A member with sigma 0 gets its inputs unchanged."""
    k = sigma.shape[0]
    shape = (k, *x.shape[-2:])
    noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.addcmul(x, noise, sigma.to(x.dtype).view(k, 1, 1))


class FusedMLP:
    """K tuner MLPs of one :class:`MLPSpec`, trained as one batched model.

    ``params`` is ``[K, P]``, ``buffers`` ``[K, Pb]`` (batch-norm running statistics),
    ``batches`` ``[K]`` (batch norm's ``num_batches_tracked``), ``dropout`` ``[K]``
    (each member's rate). Build one with :meth:`from_members`; get a member back as an
    ordinary MLP with :meth:`member`, or its ``state_dict`` with :meth:`state_dict`.

    With a ``compute`` dtype (``torch.bfloat16``: mixed precision) the forward and
    backward passes run in it on a copy of the parameters made at each forward, while
    ``params``, the optimizer and the statistics stay in their own dtype (the master
    weights); the gradients :meth:`leaves` get are the copy's.
    """

    def __init__(self, spec: MLPSpec, params: Tensor, buffers: Tensor, batches: Tensor,
                 dropout: Tensor, compute: torch.dtype | None = None) -> None:
        self.spec = spec
        self.layout = _Layout(spec)
        self.params = params
        self.buffers = buffers
        self.batches = batches
        self.dropout = dropout
        self.compute = None if compute in (None, params.dtype) else compute
        self._refresh()

    @classmethod
    def from_members(cls, members: Sequence[nn.Module],
                     compute: torch.dtype | None = None) -> FusedMLP:
        """Stack MLPs that share a spec (dropout rates may differ) into one fused model."""
        if not members:
            raise ValueError("a fused model needs at least one member")
        specs = [MLPSpec.of(m) for m in members]
        spec = specs[0][0]
        kinds = {s.dropout_kind for s, p in specs if p > 0}
        if len(kinds) > 1:
            raise ValueError(f"members mix dropout kinds {sorted(kinds)}; fuse each kind apart")
        # A member without dropout has no dropout layer, so no kind: it fits either.
        spec = replace(spec, dropout_kind=kinds.pop() if kinds else "bernoulli")
        for other, _ in specs:
            if replace(other, dropout_kind=spec.dropout_kind) != spec:
                raise ValueError(f"members differ in shape: {other} vs {spec}")
        layout = _Layout(spec)
        states = [m.state_dict() for m in members]

        def stack(slots: dict[str, _Slot]) -> Tensor:
            return torch.stack([torch.cat([s[n].detach().reshape(-1) for n in slots])
                                if slots else s["head.weight"].new_empty(0) for s in states])

        params = stack(layout.params)
        batches = torch.tensor([int(s[layout.batch_counters[0]]) if layout.batch_counters else 0
                                for s in states], dtype=torch.int64, device=params.device)
        dropout = torch.tensor([p for _, p in specs], dtype=torch.float64, device=params.device)
        return cls(spec, params, stack(layout.buffers), batches, dropout, compute)

    @property
    def size(self) -> int:
        """K, the number of members."""
        return int(self.params.shape[0])

    def _refresh(self) -> None:
        """Rebuild the views and per-member columns after the member axis changed."""
        # Leaves for autograd are views of the flat rows, so the optimizer's in-place
        # update of ``params`` is what the next forward pass sees (in a reduced compute
        # precision, through the copy each forward makes).
        self._master_views = _Layout.views(self.params, self.layout.params)
        self._shadow = (None if self.compute is None
                        else torch.empty_like(self.params, dtype=self.compute))
        self._param_views = (self._master_views if self._shadow is None
                             else _Layout.views(self._shadow, self.layout.params))
        for view in self._param_views.values():
            view.requires_grad_(True)
        self._buffer_views = _Layout.views(self.buffers, self.layout.buffers)
        p = self.dropout.to(self.params.dtype).view(-1, 1, 1)
        self._dropout_on = bool((self.dropout > 0).any())
        self._rate = self.dropout.view(-1, 1, 1)
        self._gaussian_std = torch.sqrt(p / (1 - p))

    def leaves(self) -> list[Tensor]:
        """The parameter views autograd differentiates, in the order of the flat rows."""
        return list(self._param_views.values())

    def weights(self) -> list[Tensor]:
        """The ``[K, units, fan_in]`` weight matrices (for max-norm clipping)."""
        return [v.detach() for v in self._master_views.values() if v.ndim >= 3]

    # -- forward -------------------------------------------------------------------------

    def forward(self, x: Tensor, *, train: bool,
                generator: torch.Generator | None = None) -> Tensor:
        """Outputs ``[K, B, n_outputs]`` for inputs ``[B, F]`` (shared) or ``[K, B, F]``.

        In training, batch norm uses and updates each member's batch statistics and
        dropout draws from ``generator``; in eval both are the identity transform of the
        sequential MLP's eval mode.
        """
        views = self._param_views
        if self._shadow is not None:
            with torch.no_grad():
                self._shadow.copy_(self.params)
            x = x.to(self.compute)
        h = x if x.ndim == 3 else x.expand(self.size, *x.shape)
        for layer in self.layout.layers:
            h = batched_linear(h, views[layer.weight], views[layer.bias] if layer.bias else None)
            if layer.bn is not None:
                h = self._batch_norm(h, layer.bn, train)
            h = torch.relu(h)
            if train and self._dropout_on:
                h = self._drop(h, generator)
        return batched_head(h, views["head.weight"], views["head.bias"])

    def _batch_norm(self, h: Tensor, prefix: str, train: bool) -> Tensor:
        # In a reduced compute precision, batch norm runs in the statistics' dtype (as
        # autocast does): normalizing in bfloat16 loses several percent of the gradient.
        dtype = h.dtype
        h = h.to(self.buffers.dtype)
        weight = self._param_views[f"{prefix}.weight"].unsqueeze(1).to(h.dtype)
        bias = self._param_views[f"{prefix}.bias"].unsqueeze(1).to(h.dtype)
        running_mean = self._buffer_views[f"{prefix}.running_mean"]
        running_var = self._buffer_views[f"{prefix}.running_var"]
        if not train:
            scale = weight * torch.rsqrt(running_var.unsqueeze(1) + BN_EPS)
            return torch.addcmul(bias - running_mean.unsqueeze(1) * scale, h, scale).to(dtype)
        var, mean = torch.var_mean(h, dim=1, correction=0, keepdim=True)
        with torch.no_grad():
            n = h.shape[1]
            running_mean.lerp_(mean.squeeze(1), BN_MOMENTUM)
            # The running variance is the unbiased one, as torch's batch norm keeps it.
            running_var.lerp_(var.squeeze(1) * (n / max(n - 1, 1)), BN_MOMENTUM)
        return torch.addcmul(bias, (h - mean) * torch.rsqrt(var + BN_EPS), weight).to(dtype)

    def _drop(self, h: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.spec.dropout_kind == "gaussian":
            # N(1, p/(1-p)) per unit: GaussianDropout's noise, with each member's p.
            noise = torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype)
            return h * noise.mul_(self._gaussian_std).add_(1)
        # Inverted dropout: keep with probability 1-p, scale the kept units by 1/(1-p),
        # with tuner.dropout's 15-bit uniforms (four to a 64-bit draw).
        return h * dropout_mask(tuple(h.shape), self._rate, h.dtype, h.device, generator)

    # -- members -------------------------------------------------------------------------

    def state_dict(self, i: int, params: Tensor | None = None, buffers: Tensor | None = None,
                   batches: Tensor | None = None) -> dict[str, Tensor]:
        """Member ``i``'s MLP ``state_dict`` (copies), from the live rows or from the
        ``params`` / ``buffers`` / ``batches`` given (e.g. a best-epoch snapshot)."""
        p = (self.params if params is None else params)[i:i + 1].detach()
        b = (self.buffers if buffers is None else buffers)[i:i + 1]
        state = {n: v[0].clone() for n, v in _Layout.views(p, self.layout.params).items()}
        state.update({n: v[0].clone() for n, v in _Layout.views(b, self.layout.buffers).items()})
        for name in self.layout.batch_counters:
            state[name] = (self.batches if batches is None else batches)[i].clone()
        return state

    def member(self, i: int) -> MLP:
        """Member ``i`` as an ordinary :class:`tuner.models.MLP` (in training mode)."""
        with torch.device("meta"):
            mlp = self.spec.build(float(self.dropout[i]))
        mlp = mlp.to_empty(device=self.params.device).to(self.params.dtype)
        mlp.load_state_dict(self.state_dict(i))
        return mlp

    def select(self, index: Tensor) -> None:
        """Keep only the members at ``index``, in that order."""
        self.params = self.params[index].detach()
        self.buffers = self.buffers[index]
        self.batches = self.batches[index]
        self.dropout = self.dropout[index]
        self._refresh()

    def extend(self, other: FusedMLP) -> None:
        """Append ``other``'s members; a different kind of dropout cannot join."""
        if replace(other.spec, dropout_kind=self.spec.dropout_kind) != self.spec:
            raise ValueError(f"cannot extend {self.spec} with {other.spec}")
        if other._dropout_on and self._dropout_on and other.spec != self.spec:
            raise ValueError(f"cannot mix dropout kinds: {self.spec} and {other.spec}")
        if other._dropout_on:
            self.spec = other.spec
        self.params = torch.cat([self.params.detach(), other.params.detach()])
        self.buffers = torch.cat([self.buffers, other.buffers])
        self.batches = torch.cat([self.batches, other.batches])
        self.dropout = torch.cat([self.dropout, other.dropout])
        self._refresh()
