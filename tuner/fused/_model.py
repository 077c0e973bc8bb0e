"""K MLPs of one architecture as one batched model: weights stacked on a member axis.

Every member's parameters are one row of a ``[K, P]`` tensor (weight matrices first,
then biases and batch-norm scales and shifts), so the fused optimizer updates all of
them with a few element-wise kernels and compaction is one index. The forward pass
views each matrix as ``[K, out, in]`` and runs one batched matrix product per layer
(``torch.baddbmm``) on activations shaped ``[K, batch, features]``, with the block
order of :class:`tuner.train.models.MLP`: ``Linear -> [BatchNorm] -> ReLU -> [Dropout]``.
Batch norm keeps statistics per member; dropout rates are per member.

Training runs :meth:`FusedMLP.train_step`: the forward and backward passes written out,
without autograd, so that each member's gradients land in one ``[K, P]`` buffer laid
out as the parameters (no concatenation), every batched product has the operand
layout that is fast for it, and ReLU and dropout share one mask. On a CPU the step is
memory-bound (a K=32 population's activations do not fit in the cache), so each pass
over an activation that is saved is time saved. :meth:`FusedMLP.forward` is the same
model differentiable by autograd, and the tests hold the two to each other.

>>> import torch
>>> from tuner.train.models import MLP
>>> members = [MLP(4, 3, hidden=8, layers=2) for _ in range(5)]
>>> fused = FusedMLP.from_members(members)
>>> fused.forward(torch.randn(10, 4), train=False).shape
torch.Size([5, 10, 3])
>>> torch.equal(fused.member(2).head.weight, members[2].head.weight)
True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from tuner.train.device import onednn_fp32_preferred, onednn_matmul
from tuner.train.dropout import MaskConstants, Source, dropout_mask, mask_constants, torch_generator
from tuner.train.models import MLP, GaussianDropout

# nn.BatchNorm1d's defaults, which tuner.train.models.MLP uses.
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
        """The spec of a :class:`tuner.train.models.MLP` and its dropout rate."""
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


# threshold_backward(t, z, 0) is t where z > 0, else 0, in one pass: ReLU's backward.
_THRESHOLD_BACKWARD = torch.ops.aten.threshold_backward


def _loss_and_grad(task: str, logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Each member's loss on logits ``[K, out, B]`` (as :func:`tuner.fused.member_loss`
    computes it: cross-entropy or squared error, the batch mean) and its gradient."""
    k, _, b = logits.shape
    if task == "classification":
        log_p = torch.log_softmax(logits, dim=1)
        target = y.view(1, 1, b).expand(k, 1, b)
        losses = log_p.gather(1, target).mean(2).neg_().squeeze(1)
        grad = log_p.exp_()  # softmax(logits) - onehot(y), over the batch size
        grad.scatter_add_(1, target, grad.new_full((1, 1, 1), -1.0).expand(k, 1, b))
        return losses, grad.div_(b)
    error = logits - y
    return error.square().mean((1, 2)), error.mul_(2 / b)


def onednn_products(k: int, hidden: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether K float32 members of ``hidden`` units run their products in oneDNN
    (:func:`tuner.train.device.onednn_fp32_preferred`): where that is preferred, and for
    products large enough to pay for oneDNN's call, which costs more than MKL's: from
    K h^2 = 2^16 (``[K, 64, h] @ [K, h, h]``; smaller products are faster in MKL)."""
    return (device.type == "cpu" and dtype == torch.float32 and k * hidden ** 2 >= 1 << 16
            and onednn_fp32_preferred())


def add_input_noise(x: Tensor, sigma: Tensor, generator: torch.Generator | None) -> Tensor:
    """Inputs ``[B, F]`` (shared) or ``[K, B, F]`` plus Gaussian noise with each member's
    ``sigma`` (``[K]``): ``[K, B, F]``. A member with sigma 0 gets its inputs unchanged."""
    k = sigma.shape[0]
    shape = (k, *x.shape[-2:])
    noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.addcmul(x, noise, sigma.to(x.dtype).view(k, 1, 1))


class FusedMLP:
    """K tuner MLPs of one :class:`MLPSpec`, trained as one batched model.

    ``params`` is ``[K, P]`` and ``grad`` too (what :meth:`train_step` computes),
    ``buffers`` ``[K, Pb]`` (batch-norm running statistics),
    ``batches`` ``[K]`` (batch norm's ``num_batches_tracked``), ``dropout`` ``[K]``
    (each member's rate). Build one with :meth:`from_members`; get a member back as an
    ordinary MLP with :meth:`member`, or its ``state_dict`` with :meth:`state_dict`.

    With a ``compute`` dtype (``torch.bfloat16`` or ``float16``: mixed precision) the
    forward and backward passes run in it on a copy of the parameters made at each
    forward, while ``params``, the optimizer and the statistics stay in their own dtype
    (the master weights); the gradients :meth:`leaves` get are the copy's.

    In float32 on a CPU where oneDNN's batched products are exact and faster than the
    default BLAS's (:func:`tuner.train.device.onednn_fp32_preferred`), the products run in
    oneDNN, on contiguous copies of the weights made at each forward: oneDNN copies an
    operand with the rows' member stride at every product, which costs more than one
    copy a forward. The gradients :meth:`leaves` get are then the copies' too, while
    :meth:`train_step` writes its gradients into :attr:`grad`'s rows either way.
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
        # update of ``params`` is what the next forward pass sees. ``grad`` has the rows'
        # layout too, and train_step writes into its views.
        self._master_views = _Layout.views(self.params, self.layout.params)
        self.grad = torch.empty_like(self.params)
        self._master_grads = _Layout.views(self.grad, self.layout.params)
        self._param_views, self._grad_views = self._master_views, self._master_grads
        # A population that compaction shrinks too far goes back to the default BLAS.
        self.onednn = self.compute is None and onednn_products(
            self.size, self.spec.hidden, self.params.dtype, self.params.device)
        if self.compute is not None or self.onednn:
            # Each tensor's copy is contiguous on its own, and each forward refreshes it:
            # a bfloat16 batched product on views into the rows runs slower, and
            # oneDNN's copies such a view at every product. In a reduced precision each
            # step's gradients go back through copies too; in oneDNN's float32 they are
            # written into the rows, which costs it nothing.
            def copies() -> dict[str, Tensor]:
                return {n: torch.empty(v.shape, dtype=self.compute or v.dtype, device=v.device)
                        for n, v in self._master_views.items()}
            self._param_views = copies()
            if self.compute is not None:
                self._grad_views = copies()
        for view in self._param_views.values():
            view.requires_grad_(True)
        self._buffer_views = _Layout.views(self.buffers, self.layout.buffers)
        p = self.dropout.to(self.params.dtype).view(-1, 1, 1)
        self._dropout_on = bool((self.dropout > 0).any())
        self._rate = self.dropout.view(-1, 1, 1)
        self._mask_constants: dict[torch.dtype, MaskConstants] = {}
        self._gaussian_std = torch.sqrt(p / (1 - p))

    def leaves(self) -> list[Tensor]:
        """The parameter views autograd differentiates, in the order of the flat rows."""
        return list(self._param_views.values())

    def weights(self) -> list[Tensor]:
        """The ``[K, units, fan_in]`` weight matrices (for max-norm clipping)."""
        return [v.detach() for v in self._master_views.values() if v.ndim >= 3]

    # -- forward -------------------------------------------------------------------------

    def forward(self, x: Tensor, *, train: bool,
                generator: Source = None) -> Tensor:
        """Outputs ``[K, B, n_outputs]`` for inputs ``[B, F]`` (shared) or ``[K, B, F]``,
        differentiable by autograd with respect to :meth:`leaves`.

        In training, batch norm uses and updates each member's batch statistics and
        dropout draws from ``generator``; in eval both are the identity transform of the
        sequential MLP's eval mode. (Training itself runs :meth:`train_step`, which
        draws the same masks from the same generator.)
        """
        with self._products():
            h = self._inputs(x)
            for layer in self.layout.layers:
                h = self._linear(h, layer)
                if layer.bn is not None:
                    h = (self._batch_norm_train(h, layer.bn)[0] if train
                         else self._batch_norm_eval(h, layer.bn))
                h = h.relu_()  # autograd's ReLU backward needs only the output
                if train and self._dropout_on:
                    h = h * self._mask(tuple(h.shape), h.dtype, generator)
            return self._head(h).transpose(1, 2)

    def _inputs(self, x: Tensor) -> Tensor:
        """The first layer's input ``[K, B, F]``, in the compute dtype (refreshing the
        copies of the weights first, where the products use copies)."""
        if self._param_views is not self._master_views:
            with torch.no_grad():
                for name, view in self._param_views.items():
                    view.copy_(self._master_views[name])
        if self.compute is not None:
            x = x.to(self.compute)
        if x.ndim == 2:
            x = x.expand(self.size, *x.shape)
            # oneDNN would copy the shared inputs at each of their two products.
            x = x.contiguous() if self.onednn else x
        return x

    def _products(self) -> contextlib.AbstractContextManager[None]:
        """Where the batched products run: oneDNN (see the class), or torch's default."""
        return onednn_matmul() if self.onednn else contextlib.nullcontext()

    def _linear(self, h: Tensor, layer: _Layer) -> Tensor:
        """A hidden layer's ``h @ w^T (+ b)``: ``[K, B, in] -> [K, B, out]``."""
        views = self._param_views
        w = views[layer.weight].transpose(1, 2)
        return (torch.bmm(h, w) if layer.bias is None
                else torch.baddbmm(views[layer.bias].unsqueeze(1), h, w))

    def _head(self, h: Tensor) -> Tensor:
        """The output layer computed transposed, ``w @ h^T + b``: ``[K, out, B]``.

        With few outputs (classes) this orientation is the faster product, and it leaves
        the logits with the class axis in the middle, where cross-entropy's log-softmax
        is vectorized along the batch instead of along a handful of classes. In a reduced
        compute precision the logits are handed on in float32, for the loss.
        """
        views = self._param_views
        out = torch.baddbmm(views["head.bias"].unsqueeze(2), views["head.weight"],
                            h.transpose(1, 2))
        return out if out.dtype == torch.float64 else out.float()

    def _mask(self, shape: tuple[int, ...], dtype: torch.dtype, generator: Source) -> Tensor:
        """Each member's dropout multiplier for activations of ``shape``."""
        device = self.params.device
        if self.spec.dropout_kind == "gaussian":
            # N(1, p/(1-p)) per unit: GaussianDropout's noise, with each member's p.
            noise = torch.randn(shape, generator=torch_generator(generator), device=device,
                                dtype=dtype)
            return noise.mul_(self._gaussian_std).add_(1)
        # Inverted dropout: keep with probability 1-p, scale the kept units by 1/(1-p),
        # with tuner.train.dropout's 15-bit uniforms (four to a 64-bit word).
        constants = self._mask_constants.get(dtype)
        if constants is None:
            constants = self._mask_constants[dtype] = mask_constants(self._rate, dtype, device)
        return dropout_mask(shape, self._rate, dtype, device, generator, constants)

    # Batch norm runs in the statistics' dtype (as autocast does): normalizing in
    # bfloat16 loses several percent of the gradient.

    def _batch_norm_eval(self, h: Tensor, prefix: str) -> Tensor:
        weight, bias = self._bn_affine(prefix)
        running_mean = self._buffer_views[f"{prefix}.running_mean"].unsqueeze(1)
        running_var = self._buffer_views[f"{prefix}.running_var"].unsqueeze(1)
        scale = weight * torch.rsqrt(running_var + BN_EPS)
        return torch.addcmul(bias - running_mean * scale, h.to(scale.dtype),
                             scale).to(h.dtype)

    def _batch_norm_train(self, h: Tensor, prefix: str) -> tuple[Tensor, Tensor, Tensor]:
        """Normalized with the batch's statistics, which the running ones follow;
        returns the output and, for the backward pass, the normalized input and the
        inverse standard deviations."""
        weight, bias = self._bn_affine(prefix)
        z = h.to(self.buffers.dtype)
        var, mean = torch.var_mean(z, dim=1, correction=0, keepdim=True)
        with torch.no_grad():
            n = z.shape[1]
            self._buffer_views[f"{prefix}.running_mean"].lerp_(mean.squeeze(1), BN_MOMENTUM)
            # The running variance is the unbiased one, as torch's batch norm keeps it.
            self._buffer_views[f"{prefix}.running_var"].lerp_(
                var.squeeze(1) * (n / max(n - 1, 1)), BN_MOMENTUM)
        inv_std = torch.rsqrt(var + BN_EPS)
        normalized = (z - mean) * inv_std
        return torch.addcmul(bias, normalized, weight).to(h.dtype), normalized, inv_std

    def _bn_affine(self, prefix: str) -> tuple[Tensor, Tensor]:
        views, dtype = self._param_views, self.buffers.dtype
        return (views[f"{prefix}.weight"].unsqueeze(1).to(dtype),
                views[f"{prefix}.bias"].unsqueeze(1).to(dtype))

    # -- training --------------------------------------------------------------------------

    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor, task: str, generator: Source = None,
                   loss_scale: Tensor | None = None) -> Tensor:
        """One training batch for every member: returns the losses ``[K]`` and leaves
        each member's gradient of its own loss in :attr:`grad` (times its
        ``loss_scale``, ``[K]``, when one is given: float16's loss scaling, see
        :class:`tuner.fused.MemberLossScale`).

        ``x`` is ``[B, F]`` (shared) or ``[K, B, F]``, ``y`` ``[B]``; the loss is
        :func:`tuner.fused.member_loss`'s (cross-entropy or squared error, the batch
        mean). Batch norm's running statistics are updated and dropout draws from
        ``generator``, exactly as :meth:`forward` in training does.
        """
        with self._products():
            return self._train_step(x, y, task, generator, loss_scale)

    def _train_step(self, x: Tensor, y: Tensor, task: str, generator: Source,
                    loss_scale: Tensor | None) -> Tensor:
        views, grads = self._param_views, self._grad_views
        h = self._inputs(x)
        saved: list[tuple[Tensor, Tensor, Tensor | None, tuple[Tensor, Tensor] | None]] = []
        for layer in self.layout.layers:
            z = self._linear(h, layer)
            stats = None
            if layer.bn is not None:
                z, normalized, inv_std = self._batch_norm_train(z, layer.bn)
                stats = (normalized, inv_std)
            # ReLU then dropout is z times one mask: the dropout multiplier where z > 0,
            # else 0. The backward pass multiplies by the same mask.
            keep = (_THRESHOLD_BACKWARD(self._mask(tuple(z.shape), z.dtype, generator), z, 0)
                    if self._dropout_on else None)
            out = z.relu_() if keep is None else z.mul_(keep)
            saved.append((h, out, keep, stats))
            h = out

        logits = self._head(h)
        losses, grad = _loss_and_grad(task, logits, y)
        if loss_scale is not None:
            grad = grad.mul_(loss_scale.to(grad.dtype).view(-1, 1, 1))
        grad = grad.to(h.dtype)
        torch.bmm(grad, h, out=grads["head.weight"])
        torch.sum(grad, 2, out=grads["head.bias"])
        grad = torch.bmm(grad.transpose(1, 2), views["head.weight"])
        for i in range(len(saved) - 1, -1, -1):
            layer, (h, out, keep, stats) = self.layout.layers[i], saved[i]
            grad = (_THRESHOLD_BACKWARD(grad, out, 0) if keep is None
                    else grad.mul_(keep))
            if stats is not None:
                assert layer.bn is not None
                grad = self._batch_norm_backward(grad, layer.bn, *stats)
            torch.bmm(grad.transpose(1, 2), h, out=grads[layer.weight])
            if layer.bias is not None:
                torch.sum(grad, 1, out=grads[layer.bias])
            if i:
                grad = torch.bmm(grad, views[layer.weight])
        if self.compute is not None:
            for name, view in self._grad_views.items():
                self._master_grads[name].copy_(view)
        return losses

    def _batch_norm_backward(self, grad: Tensor, prefix: str, normalized: Tensor,
                             inv_std: Tensor) -> Tensor:
        """Batch norm's input gradient from its output's; writes its scale's and
        shift's gradients. (The batch statistics' own gradients are in the formula.)"""
        grads = self._grad_views
        g = grad.to(normalized.dtype)
        grads[f"{prefix}.bias"].copy_(g.sum(1))
        grads[f"{prefix}.weight"].copy_((g * normalized).sum(1))
        g = g.mul_(self._bn_affine(prefix)[0])  # the normalized input's gradient
        g = g - g.mean(1, keepdim=True) - normalized * (g * normalized).mean(1, keepdim=True)
        return g.mul_(inv_std).to(grad.dtype)

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
        """Member ``i`` as an ordinary :class:`tuner.train.models.MLP` (in training mode)."""
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
