"""Optimizers and schedules by name, against torch's own classes built directly."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler

from tuner.errors import TunerError, UsageError
from tuner.train.optim import FastStep, build_optimizer, build_scheduler, step_scheduler

# --- optimizers --------------------------------------------------------------------------


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 4, generator=g).requires_grad_(),
            torch.randn(5, generator=g).requires_grad_()]


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int = 6) -> None:
    g = torch.Generator().manual_seed(1)
    a, target = torch.randn(16, 4, generator=g), torch.randn(16, 5, generator=g)
    w, b = params
    for _ in range(steps):
        opt.zero_grad()
        loss = ((a @ w.T + b - target) ** 2).mean() + w.abs().sum() * 0.01
        loss.backward()
        opt.step()


OPTIMIZER_CASES: list[tuple[str, dict[str, Any], type[torch.optim.Optimizer], dict[str, Any]]] = [
    ("sgd", {"lr": 0.1}, torch.optim.SGD, {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "weight_decay": 0.1}, torch.optim.SGD,
     {"lr": 0.05, "weight_decay": 0.1}),
    ("momentum", {"lr": 0.1}, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    ("momentum", {"lr": 0.1, "momentum": 0.5}, torch.optim.SGD, {"lr": 0.1, "momentum": 0.5}),
    ("adagrad", {"lr": 0.1}, torch.optim.Adagrad, {"lr": 0.1}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.9}, torch.optim.RMSprop, {"lr": 0.01, "alpha": 0.9}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.95)}, torch.optim.Adam,
     {"lr": 0.01, "betas": (0.8, 0.95)}),
    ("adamw", {"lr": 0.01, "betas": (0.85, 0.99), "weight_decay": 0.1}, torch.optim.AdamW,
     {"lr": 0.01, "betas": (0.85, 0.99), "weight_decay": 0.1}),
]


@pytest.mark.parametrize(("name", "hyper", "cls", "torch_hyper"), OPTIMIZER_CASES)
def test_optimizer_steps_like_torch(name: str, hyper: dict[str, Any],
                                    cls: type[torch.optim.Optimizer],
                                    torch_hyper: dict[str, Any]) -> None:
    ours, reference = _params(), _params()

    opt = build_optimizer(ours, name, **hyper)
    assert type(opt) is cls
    _run(opt, ours)
    _run(cls(reference, **torch_hyper), reference)

    for p, q in zip(ours, reference, strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(ours[0], _params()[0])  # it did move


def test_momentum_defaults_to_point_nine_and_sgd_has_none() -> None:
    momentum = build_optimizer(_params(), "momentum", lr=0.1)
    sgd = build_optimizer(_params(), "sgd", lr=0.1)

    assert momentum.param_groups[0]["momentum"] == 0.9
    assert sgd.param_groups[0]["momentum"] == 0


def test_adamw_decays_weights_where_adam_does_not() -> None:
    # Decoupled decay: with a zero gradient AdamW still shrinks w by lr * weight_decay.
    w_adamw = torch.ones(3, requires_grad=True)
    w_adam = torch.ones(3, requires_grad=True)
    adamw = build_optimizer([w_adamw], "adamw", lr=0.1, weight_decay=0.5)
    adam = build_optimizer([w_adam], "adam", lr=0.1)
    for w, opt in ((w_adamw, adamw), (w_adam, adam)):
        w.grad = torch.zeros(3)
        opt.step()

    torch.testing.assert_close(w_adamw.detach(), torch.full((3,), 1 - 0.1 * 0.5))
    torch.testing.assert_close(w_adam.detach(), torch.ones(3))


@pytest.mark.parametrize(("name", "hyper", "named"), [
    ("lbfgs", {"lr": 0.1}, "lbfgs"),
    ("Adam", {"lr": 0.1}, "Adam"),
    ("sgd", {"lr": 0.1, "momentum": 0.9}, "momentum"),
    ("sgd", {"lr": 0.1, "nesterov": True}, "nesterov"),
    ("adam", {"lr": 0.1, "alpha": 0.9}, "alpha"),
    ("rmsprop", {"lr": 0.1, "betas": (0.9, 0.99)}, "betas"),
    ("adagrad", {"lr": 0.1, "momentum": 0.9}, "momentum"),
])
def test_unknown_optimizer_or_hyper_parameter_is_a_usage_error(name: str, hyper: dict[str, Any],
                                                                named: str) -> None:
    with pytest.raises(UsageError) as info:
        build_optimizer(_params(), name, **hyper)

    assert isinstance(info.value, TunerError)
    assert f"'{named}'" in str(info.value)


def test_invalid_optimizer_value_is_a_usage_error_naming_the_optimizer() -> None:
    with pytest.raises(UsageError, match="'adam'"):
        build_optimizer(_params(), "adam", lr=-1.0)


# --- schedules ---------------------------------------------------------------------------

EPOCHS = 30
LR = 0.1


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=LR)


def _plateau_metric(epoch: int) -> float:
    # Improves for 8 epochs, then is flat: a plateau scheduler must cut the rate.
    return 1.0 / (1 + min(epoch, 8))


def _lrs(opt: torch.optim.Optimizer, step: Callable[[float], None]) -> list[float]:
    lrs = []
    for epoch in range(EPOCHS):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        step(_plateau_metric(epoch))
    return lrs


SCHEDULE_CASES: list[tuple[str, dict[str, Any], Callable[[torch.optim.Optimizer], Any]]] = [
    ("step", {"step_size": 7, "gamma": 0.5},
     lambda o: lr_scheduler.StepLR(o, step_size=7, gamma=0.5)),
    ("step", {"step_size": 3}, lambda o: lr_scheduler.StepLR(o, step_size=3)),
    ("multistep", {"milestones": [5, 12, 20], "gamma": 0.3},
     lambda o: lr_scheduler.MultiStepLR(o, milestones=[5, 12, 20], gamma=0.3)),
    ("exponential", {"gamma": 0.9}, lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9)),
    ("cosine", {"T_max": EPOCHS}, lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=EPOCHS)),
    ("cosine", {"T_max": 10, "eta_min": 0.01},
     lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.01)),
    ("plateau", {"factor": 0.5, "patience": 2},
     lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=2)),
    ("plateau", {"mode": "max", "factor": 0.2, "patience": 1},
     lambda o: lr_scheduler.ReduceLROnPlateau(o, mode="max", factor=0.2, patience=1)),
]


@pytest.mark.parametrize(("name", "hyper", "make_reference"), SCHEDULE_CASES)
def test_schedule_matches_torch_over_thirty_epochs(
        name: str, hyper: dict[str, Any],
        make_reference: Callable[[torch.optim.Optimizer], Any]) -> None:
    ours_opt, ref_opt = _optimizer(), _optimizer()
    ours = build_scheduler(ours_opt, name, **hyper)
    reference = make_reference(ref_opt)
    assert type(ours) is type(reference)

    def ref_step(metric: float) -> None:
        if isinstance(reference, lr_scheduler.ReduceLROnPlateau):
            reference.step(metric)
        else:
            reference.step()

    got = _lrs(ours_opt, lambda m: step_scheduler(ours, m))
    expected = _lrs(ref_opt, ref_step)

    assert got == expected
    assert len(set(got)) > 1  # the rate did change


def test_schedule_none_keeps_the_rate_constant() -> None:
    opt = _optimizer()
    scheduler = build_scheduler(opt, "none")

    lrs = _lrs(opt, lambda m: step_scheduler(scheduler, m))

    assert lrs == [LR] * EPOCHS


def test_step_scheduler_feeds_the_metric_to_plateau() -> None:
    opt = _optimizer()
    scheduler = build_scheduler(opt, "plateau", mode="min", factor=0.5, patience=0)

    step_scheduler(scheduler, 1.0)
    step_scheduler(scheduler, 0.5)  # improved: rate kept
    assert opt.param_groups[0]["lr"] == LR
    step_scheduler(scheduler, 0.7)  # worse: with patience 0 the rate is halved at once
    assert opt.param_groups[0]["lr"] == pytest.approx(LR / 2)
    step_scheduler(scheduler, torch.tensor(0.1))  # 0-d tensors work too
    assert opt.param_groups[0]["lr"] == pytest.approx(LR / 2)


def test_step_scheduler_ignores_the_metric_elsewhere() -> None:
    opt = _optimizer()
    scheduler = build_scheduler(opt, "step", step_size=1, gamma=0.5)

    opt.step()
    step_scheduler(scheduler, 123.0)

    assert opt.param_groups[0]["lr"] == pytest.approx(LR / 2)


@pytest.mark.parametrize(("name", "hyper", "named"), [
    ("step", {"gamma": 0.5}, "step_size"),
    ("multistep", {"gamma": 0.5}, "milestones"),
    ("exponential", {}, "gamma"),
    ("cosine", {"eta_min": 0.0}, "T_max"),
])
def test_schedule_missing_required_argument_is_a_usage_error(name: str, hyper: dict[str, Any],
                                                             named: str) -> None:
    with pytest.raises(UsageError) as info:
        build_scheduler(_optimizer(), name, **hyper)

    assert isinstance(info.value, TunerError)
    assert named in str(info.value)
    assert f"'{name}'" in str(info.value)


@pytest.mark.parametrize(("name", "hyper", "named"), [
    ("linear", {}, "linear"),
    ("onecycle", {"max_lr": 0.1}, "onecycle"),
    ("step", {"step_size": 3, "T_max": 10}, "T_max"),
    ("exponential", {"gamma": 0.9, "milestones": [3]}, "milestones"),
    ("none", {"gamma": 0.5}, "gamma"),
    ("plateau", {"step_size": 3}, "step_size"),
])
def test_unknown_schedule_or_argument_is_a_usage_error(name: str, hyper: dict[str, Any],
                                                       named: str) -> None:
    with pytest.raises(UsageError, match=f"'{named}'"):
        build_scheduler(_optimizer(), name, **hyper)


def test_invalid_schedule_value_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="'plateau'"):
        build_scheduler(_optimizer(), "plateau", mode="sideways")


# -- FastStep: optimizer.step() without its per-call bookkeeping -----------------------


@pytest.mark.parametrize(("name", "hyper"), [
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1, "fused": True}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1, "betas": (0.8, 0.99), "fused": True}),
    ("adam", {"lr": 0.01, "foreach": True}),
    ("rmsprop", {"lr": 0.01}),  # not eligible: optimizer.step() every time
])
def test_fast_step_equals_optimizer_step(name: str, hyper: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    twin = copy.deepcopy(model)
    opts = [build_optimizer(m.parameters(), name, **hyper) for m in (model, twin)]
    schedules = [build_scheduler(o, "step", step_size=2, gamma=0.5) for o in opts]
    fast = FastStep(opts[1])
    for _ in range(6):
        x = torch.randn(16, 4)
        for m in (model, twin):
            for p in m.parameters():
                p.grad = None
            m(x).pow(2).mean().backward()
        opts[0].step()
        fast()
        for s in schedules:
            s.step()
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(a, b)
    assert fast.eligible == (name != "rmsprop")
    # The state is the optimizer's own: a checkpoint of either is the same.
    left, right = (o.state_dict()["state"] for o in opts)
    for i in left:
        for key, value in left[i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(right[i][key])), key


def test_fast_step_falls_back_when_a_parameter_has_no_gradient() -> None:
    used, unused = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    params = [*used.parameters(), *unused.parameters()]
    optimizer = build_optimizer(params, "adam", lr=0.1)
    fast = FastStep(optimizer)
    before = [p.detach().clone() for p in unused.parameters()]
    for _ in range(3):
        for p in params:
            p.grad = None
        used(torch.ones(2, 3)).sum().backward()
        fast()  # Adam skips a parameter without a gradient; so must this
    assert all(torch.equal(a, b) for a, b in zip(before, unused.parameters(), strict=True))
    assert fast._state is None  # never took the fast path
