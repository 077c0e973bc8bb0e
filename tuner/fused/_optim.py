"""Fused optimizers: one update for K members' stacked parameters, each member with its
own hyper-parameters, plus the L1/L2 penalty gradients and max-norm clipping.

Parameters, gradients and optimizer state are ``[K, P]`` tensors: row k holds member k's
parameters flattened. Every hyper-parameter is a ``[K]`` tensor broadcast as ``[K, 1]``,
so an update costs a handful of element-wise kernels whatever K is, and no Python loop
over members runs per step. Each family reproduces torch's own single-tensor update
(``torch.optim.SGD``, ``Adagrad``, ``RMSprop``, ``Adam``, ``AdamW``) member by member,
up to rounding; ``tests/test_fused_optim.py`` checks that against torch.

>>> import torch
>>> params = torch.zeros(2, 3)
>>> opt = FusedOptimizer(["sgd", "momentum"], [{"lr": 0.1}, {"lr": 0.1}], params)
>>> opt.step(params, torch.ones(2, 3), torch.tensor([0.1, 0.2], dtype=torch.float64))
>>> params[:, 0].tolist()
[-0.10000000149011612, -0.20000000298023224]
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from tuner.train.optim import OPTIMIZER_CLASSES

# The tuner's optimizer names grouped into families that share one update rule: plain
# SGD is SGD with momentum 0 and Adam is AdamW with its weight decay coupled, so both
# pairs train in one fused group, which keeps the groups large.
FAMILIES: dict[str, str] = {"sgd": "sgd", "momentum": "sgd", "adagrad": "adagrad",
                            "rmsprop": "rmsprop", "adam": "adam", "adamw": "adam"}

# Per family, the torch arguments the fused update implements. Any other argument must
# keep torch's default (no nesterov, amsgrad, centered, maximize, ...).
_SUPPORTED: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay"),
    "adagrad": ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"),
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum"),
    "adam": ("lr", "betas", "eps", "weight_decay"),
}
_IGNORED = ("foreach", "fused", "capturable", "differentiable")  # implementation choices


def _torch_defaults(name: str) -> dict[str, Any]:
    """torch's defaults for optimizer ``name``, overridden by the tuner's own (momentum)."""
    cls, tuner_defaults, _ = OPTIMIZER_CLASSES[name]
    signature = inspect.signature(cls.__init__).parameters
    defaults = {k: p.default for k, p in signature.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **tuner_defaults}


def resolve_hyper(name: str, hyper: Mapping[str, Any]) -> dict[str, float]:
    """Every hyper-parameter of the fused update for optimizer ``name``, as floats.

    Raises ``ValueError`` naming the argument when ``hyper`` asks for something the fused
    update does not implement (the caller then trains that trial sequentially).
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown optimizer {name!r}; expected one of: {', '.join(FAMILIES)}")
    family = FAMILIES[name]
    defaults = _torch_defaults(name)
    unknown = sorted(set(hyper) - set(defaults))
    if unknown:
        raise ValueError(f"optimizer {name!r} takes no hyper-parameter {unknown[0]!r}")
    values = {**defaults, **hyper}
    for key, value in values.items():
        if key in _SUPPORTED[family] or key in _IGNORED:
            continue
        if value != defaults[key]:
            raise ValueError(f"the fused {name!r} update does not implement "
                             f"{key}={value!r} (only {key}={defaults[key]!r})")
    out = {k: float(values.get(k, 0.0)) for k in _SUPPORTED[family] if k != "betas"}
    if family == "adam":
        out["beta1"], out["beta2"] = (float(b) for b in values["betas"])
        # AdamW decays the weights directly; Adam adds the decay to the gradient.
        decoupled = name == "adamw"
        out["decoupled_wd"] = out["weight_decay"] if decoupled else 0.0
        out["weight_decay"] = 0.0 if decoupled else out["weight_decay"]
    return out


# Parameters per member from which a CPU steps Adam member by member: a kernel call per
# member costs more than the column update's extra passes over small rows, and less
# than those over large ones.
_ADAM_ROWS_FROM = 2048


def _col(values: Tensor, dtype: torch.dtype) -> Tensor:
    """A ``[K]`` hyper-parameter as a ``[K, 1]`` column in the parameters' dtype."""
    return values.to(dtype).unsqueeze(1)


class FusedOptimizer:
    """One optimizer family over a ``[K, P]`` parameter tensor; hyper-parameters per member.

    ``names`` are the tuner's optimizer names (``sgd``, ``momentum``, ``adagrad``,
    ``rmsprop``, ``adam``, ``adamw``), all of one family; ``hypers`` their torch
    arguments. The learning rate is handed to :meth:`step` each time, because the
    schedule owns it. State and step counts are per member, so members that joined
    late (refilled slots) get their own bias corrections.
    """

    def __init__(self, names: Sequence[str], hypers: Sequence[Mapping[str, Any]],
                 params: Tensor) -> None:
        families = {FAMILIES.get(n, n) for n in names}
        if len(families) != 1:
            raise ValueError(f"one fused optimizer needs one family, but got {sorted(families)}")
        if len(names) != params.shape[0] or len(hypers) != params.shape[0]:
            raise ValueError(f"`len(names) == len(hypers) == params.shape[0]` must hold, but "
                             f"got ({len(names)}, {len(hypers)}, {params.shape[0]})")
        self.family = families.pop()
        rows = [resolve_hyper(n, h) for n, h in zip(names, hypers, strict=True)]
        device = params.device
        self.hyper = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64, device=device)
                      for k in rows[0]}
        self.steps = torch.zeros(len(rows), dtype=torch.float64, device=device)
        self.state: dict[str, Tensor] = {}
        for key in self._state_names():
            self.state[key] = torch.zeros_like(params)
        if self.family == "adagrad":
            self.state["sum"].add_(_col(self.hyper["initial_accumulator_value"], params.dtype))
        self._scratch = torch.empty_like(params)
        self._prepare(params.dtype)

    def _state_names(self) -> list[str]:
        if self.family == "adam":
            return ["exp_avg", "exp_avg_sq"]
        if self.family == "adagrad":
            return ["sum"]
        names = ["square_avg"] if self.family == "rmsprop" else []
        if bool((self.hyper["momentum"] != 0).any()):
            names.append("momentum_buffer")
        return names

    def _prepare(self, dtype: torch.dtype) -> None:
        """Cache the step-independent columns and which optional terms are in use."""
        h = self.hyper
        self.dtype = dtype
        self._cols = {k: _col(v, dtype) for k, v in h.items()}
        if self.family == "adam":
            self._cols["one_minus_beta1"] = _col(1 - h["beta1"], dtype)
            self._cols["one_minus_beta2"] = _col(1 - h["beta2"], dtype)
        if self.family == "rmsprop":
            self._cols["one_minus_alpha"] = _col(1 - h["alpha"], dtype)
        self._host = {k: v.tolist() for k, v in h.items()}  # per-member floats
        self._rows: tuple[Any, ...] | None = None  # per-member row views, see _adam_rows
        self._coupled_wd = bool((h["weight_decay"] != 0).any())
        self._decoupled_wd = "decoupled_wd" in h and bool((h["decoupled_wd"] != 0).any())
        self._dampening = "dampening" in h and bool((h["dampening"] != 0).any())

    # -- the update ----------------------------------------------------------------------

    @torch.no_grad()
    def step(self, params: Tensor, grad: Tensor, lr: Tensor, ok: Tensor | None = None) -> None:
        """Update ``params`` in place from ``grad`` (which it may overwrite); ``lr`` is ``[K]``.

        ``ok`` (``[K]``, 1 or 0) skips the members at 0, as torch's ``GradScaler`` skips a
        step whose gradients overflowed: their parameters, state and step count stay as
        they were. Their rows of ``grad`` must be zero (:meth:`MemberLossScale.unscale_`
        leaves them so). Skipping is by per-member factors, with no host sync (the CPU's
        member-by-member Adam reads the rates on the host anyway).
        """
        self._ok = None if ok is None else _col(ok, self.dtype)  # [K, 1]
        if ok is not None:
            lr = lr * ok.to(lr.dtype)
        if self._coupled_wd:  # torch's weight_decay: the gradient of (wd/2)*|p|^2, every tensor
            grad.addcmul_(params, self._scaled("weight_decay"))
        self.steps += 1 if ok is None else ok.to(self.steps.dtype)
        getattr(self, f"_{self.family}")(params, grad, lr)

    def _scaled(self, name: str) -> Tensor:
        """The ``[K, 1]`` column ``name``, at 0 for the members this step skips: for the
        factors that move a state towards the gradient (a skipped member's gradient row
        is zero, so a state times 1 plus 0 stays as it was)."""
        if self._ok is None:
            return self._cols[name]
        return self._cols[name] * self._ok

    def _decay(self, name: str) -> Tensor:
        """The ``[K, 1]`` column ``name`` of a factor a state is multiplied by, at 1 for
        the members this step skips."""
        if self._ok is None:
            return self._cols[name]
        return torch.where(self._ok > 0, self._cols[name], 1.0)

    def _sgd(self, p: Tensor, g: Tensor, lr: Tensor) -> None:
        if "momentum_buffer" in self.state:
            buf = self.state["momentum_buffer"]
            # torch starts the buffer as a copy of the gradient; a zero buffer times
            # momentum plus the gradient is exactly that. Dampening is skipped on that
            # first step, and momentum 0 means no buffer at all in torch.
            buf.mul_(self._decay("momentum"))
            if self._dampening:
                plain = (self.steps <= 1) | (self.hyper["momentum"] == 0)
                keep = torch.where(plain, 1.0, 1 - self.hyper["dampening"])
                buf.addcmul_(g, _col(keep, self.dtype))
            else:
                buf.add_(g)
            g = buf
        p.addcmul_(g, _col(-lr, self.dtype))

    def _adagrad(self, p: Tensor, g: Tensor, lr: Tensor) -> None:
        h, s = self.hyper, self._scratch
        # (A member whose first steps were skipped is at step 0, with a rate of 0.)
        clr = lr / (1 + (self.steps - 1).clamp(min=0) * h["lr_decay"])
        state_sum = self.state["sum"]
        state_sum.addcmul_(g, g)
        torch.sqrt(state_sum, out=s).add_(self._cols["eps"])
        torch.div(g, s, out=s)
        p.addcmul_(s, _col(-clr, self.dtype))

    def _rmsprop(self, p: Tensor, g: Tensor, lr: Tensor) -> None:
        s, square_avg = self._scratch, self.state["square_avg"]
        # alpha*v + (1-alpha)*g^2, as a lerp: addcmul_ takes no per-member value.
        torch.mul(g, g, out=s)
        square_avg.lerp_(s, self._scaled("one_minus_alpha"))
        torch.sqrt(square_avg, out=s).add_(self._cols["eps"])
        if "momentum_buffer" in self.state:
            buf = self.state["momentum_buffer"]
            buf.mul_(self._decay("momentum")).addcdiv_(g, s)
            p.addcmul_(buf, _col(-lr, self.dtype))
        else:
            torch.div(g, s, out=s)
            p.addcmul_(s, _col(-lr, self.dtype))

    def _adam(self, p: Tensor, g: Tensor, lr: Tensor) -> None:
        if (p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64)
                and p.shape[1] >= _ADAM_ROWS_FROM):
            self._adam_rows(p, g, lr)
        else:
            self._adam_columns(p, g, lr)

    def _adam_rows(self, p: Tensor, g: Tensor, lr: Tensor) -> None:
        """On a CPU, one call of torch's fused Adam kernel (``Adam(fused=True)``'s) per
        member, on its rows: one pass over the four tensors, where the column update
        takes seven, and the passes are what a step of small members costs."""
        tensors = (p, g, self.state["exp_avg"], self.state["exp_avg_sq"], self.steps)
        key = tuple(t.data_ptr() for t in tensors)
        if self._rows is None or self._rows[0] != key:
            self._rows = (key, [t.unbind(0) for t in tensors])
        ps, gs, ms, vs, steps = self._rows[1]
        h = self._host
        skip = [False] * len(ps) if self._ok is None else (self._ok[:, 0] == 0).tolist()
        for k, rate in enumerate(lr.tolist()):
            if skip[k]:
                continue
            decay = h["decoupled_wd"][k]
            update = torch._fused_adamw_ if decay else torch._fused_adam_
            update([ps[k]], [gs[k]], [ms[k]], [vs[k]], [], [steps[k]], lr=rate,
                   beta1=h["beta1"][k], beta2=h["beta2"][k], weight_decay=decay,
                   eps=h["eps"][k], amsgrad=False, maximize=False)

    def _adam_columns(self, p: Tensor, g: Tensor, lr: Tensor) -> None:
        """Every member at once, hyper-parameters as ``[K, 1]`` columns (for devices where
        a kernel launch per member costs more than the passes)."""
        h, s = self.hyper, self._scratch
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        if self._decoupled_wd:
            p.mul_(_col(1 - lr * h["decoupled_wd"], self.dtype))
        exp_avg.lerp_(g, self._scaled("one_minus_beta1"))
        torch.mul(g, g, out=s)
        exp_avg_sq.lerp_(s, self._scaled("one_minus_beta2"))
        # The bias corrections are per member: a refilled member starts at step 1. (A
        # member whose first steps were skipped is at 0, with a learning rate of 0.)
        steps = self.steps.clamp(min=1)
        bias_correction1 = 1 - h["beta1"] ** steps
        bias_correction2_sqrt = (1 - h["beta2"] ** steps).sqrt()
        # torch's lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), with sqrt(bc2) multiplied
        # through: the same value up to rounding, one pass over the state fewer.
        coef = torch.stack([h["eps"] * bias_correction2_sqrt,
                            -lr * bias_correction2_sqrt / bias_correction1]).to(self.dtype)
        torch.sqrt(exp_avg_sq, out=s).add_(coef[0].unsqueeze(1))
        torch.div(exp_avg, s, out=s)
        p.addcmul_(s, coef[1].unsqueeze(1))

    # -- the member axis -----------------------------------------------------------------

    def select(self, index: Tensor) -> None:
        """Keep only the members at ``index`` (compaction after members finish)."""
        self.hyper = {k: v[index] for k, v in self.hyper.items()}
        self.steps = self.steps[index]
        self.state = {k: v[index] for k, v in self.state.items()}
        self._scratch = self._scratch[index]
        self._prepare(self.dtype)

    def extend(self, other: FusedOptimizer) -> None:
        """Append ``other``'s members (new trials filling freed slots)."""
        if other.family != self.family:
            raise ValueError(f"cannot extend a {self.family!r} optimizer with {other.family!r}")
        self.hyper = {k: torch.cat([v, other.hyper[k]]) for k, v in self.hyper.items()}
        self.steps = torch.cat([self.steps, other.steps])
        for key in set(self.state) | set(other.state):
            mine = self.state.get(key, torch.zeros_like(self._scratch))
            theirs = other.state.get(key, torch.zeros_like(other._scratch))
            self.state[key] = torch.cat([mine, theirs])
        self._scratch = torch.cat([self._scratch, other._scratch])
        self._prepare(self.dtype)


class MemberLossScale:
    """Dynamic loss scaling for float16 passes, one scale per member, as torch's
    ``GradScaler`` keeps one per model and with its defaults: the loss gradient is
    multiplied by the scale before the float16 backward pass; a member whose gradients
    overflowed skips its step and halves its scale; after ``growth_interval`` steps in a
    row without overflow the scale doubles. All on the device, no host sync.
    """

    INIT, GROWTH, BACKOFF, INTERVAL = 2.0 ** 16, 2.0, 0.5, 2000

    def __init__(self, k: int, device: torch.device) -> None:
        self.scale = torch.full((k,), self.INIT, dtype=torch.float32, device=device)
        self.good = torch.zeros(k, dtype=torch.int32, device=device)  # GradScaler's tracker

    @torch.no_grad()
    def unscale_(self, grad: Tensor) -> Tensor:
        """Divide each member's row of ``grad`` (``[K, P]``, scaled) by its scale; zero
        the rows that hold an inf or a NaN. Returns ``ok``, ``[K]``: 1 where finite."""
        # A row's sum is finite exactly when its values are (no finite float16 gradient
        # sums to an overflow in float32): one read instead of an elementwise test.
        # A scale that underflowed to 0 is an overflow too, as GradScaler's 1/0 makes it.
        ok = torch.isfinite(grad.sum(1)) & (self.scale > 0)
        factor = torch.where(ok, self.scale.reciprocal(), 0.0).to(grad.dtype)
        grad.mul_(factor.unsqueeze(1)).nan_to_num_(0.0, 0.0, 0.0)
        return ok.to(grad.dtype)

    @torch.no_grad()
    def update(self, ok: Tensor) -> None:
        """After a step: back off where it overflowed, grow after a run of good steps."""
        good = ok > 0
        self.good = torch.where(good, self.good + 1, 0)
        grow = self.good >= self.INTERVAL
        grown = self.scale * self.GROWTH
        # As GradScaler: the tracker restarts at the interval; the scale grows if finite.
        grown = torch.where(torch.isfinite(grown), grown, self.scale)
        self.scale = torch.where(good, torch.where(grow, grown, self.scale),
                                 self.scale * self.BACKOFF)
        self.good = torch.where(grow, 0, self.good)

    def state(self, i: int) -> dict[str, Any]:
        """Member ``i``'s scale as a ``torch.amp.GradScaler`` state_dict."""
        return {"scale": float(self.scale[i]), "growth_factor": self.GROWTH,
                "backoff_factor": self.BACKOFF, "growth_interval": self.INTERVAL,
                "_growth_tracker": int(self.good[i])}

    def select(self, index: Tensor) -> None:
        self.scale, self.good = self.scale[index], self.good[index]

    def extend(self, other: MemberLossScale) -> None:
        self.scale = torch.cat([self.scale, other.scale])
        self.good = torch.cat([self.good, other.good])


# -- penalties and constraints (the tuner's techniques, per member) -----------------------


@torch.no_grad()
def add_penalty_grad_(grad: Tensor, weights: Tensor, l1: Tensor | None,
                      l2: Tensor | None) -> None:
    """Add the gradients of ``l1*sum|w| + (l2/2)*sum w^2`` to ``grad`` in place.

    ``grad`` and ``weights`` are the ``[K, W]`` weight columns only (matrices, never
    biases or batch-norm parameters, as in :func:`tuner.train.regularizers.penalized_weights`);
    ``l1``/``l2`` are ``[K]``, or None when every member's is zero.
    """
    if l2 is not None:
        grad.addcmul_(weights, l2.to(grad.dtype).unsqueeze(1))
    if l1 is not None:
        # d|w|/dw is sign(w), and 0 at 0 as in autograd.
        grad.addcmul_(torch.sign(weights), l1.to(grad.dtype).unsqueeze(1))


@torch.no_grad()
def apply_max_norm_(weights: Sequence[Tensor], max_norm: Tensor) -> None:
    """Rescale each unit's incoming weights whose L2 norm exceeds its member's ``max_norm``.

    ``weights`` are ``[K, units, fan_in]`` views; ``max_norm`` is ``[K]`` with ``inf``
    for members without the constraint. The rule is ``torch.renorm``'s: rows above c are
    scaled by ``c / (norm + 1e-7)``.
    """
    for w in weights:
        c = max_norm.to(w.dtype).view(-1, 1, 1)
        norms = torch.linalg.vector_norm(w, dim=2, keepdim=True)
        w.mul_(torch.where(norms > c, c / (norms + 1e-7), 1.0))
