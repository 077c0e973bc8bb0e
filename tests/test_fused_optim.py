"""The fused optimizers, schedules, penalties and max-norm against torch, member by member.

Every test gives each member different hyper-parameters, runs the fused version on a
``[K, P]`` float64 tensor and, for each member k, torch's own class (built the way the
tuner builds it, :mod:`tuner.train.optim`) on row k alone, and asserts the two agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tuner.fused import (
    FusedOptimizer,
    FusedSchedule,
    MemberLossScale,
    add_penalty_grad_,
    apply_max_norm_,
    resolve_hyper,
)
from tuner.train.optim import build_optimizer, build_scheduler, step_scheduler
from tuner.train.regularizers import penalty

P = 37  # parameters per member
STEPS = 8


def _lrs(hypers: list[dict[str, Any]], names: list[str]) -> list[float]:
    return [resolve_hyper(n, h)["lr"] for n, h in zip(names, hypers, strict=True)]


def _compare(names: list[str], hypers: list[dict[str, Any]], *,
             lr_decay_per_step: float = 1.0) -> None:
    """STEPS updates with random gradients; the rate is scaled by ``lr_decay_per_step``
    after every step, as a schedule would, to check the rate is read at each step."""
    gen = torch.Generator().manual_seed(0)
    k = len(names)
    start = torch.randn(k, P, generator=gen, dtype=torch.float64)
    grads = [torch.randn(k, P, generator=gen, dtype=torch.float64) for _ in range(STEPS)]

    params = start.clone()
    fused = FusedOptimizer(names, hypers, params)
    lr = torch.tensor(_lrs(hypers, names), dtype=torch.float64)
    for g in grads:
        fused.step(params, g.clone(), lr)
        lr = lr * lr_decay_per_step

    for i, (name, hyper) in enumerate(zip(names, hypers, strict=True)):
        p = start[i].clone().requires_grad_(True)
        reference = build_optimizer([p], name, **hyper)
        for g in grads:
            p.grad = g[i].clone()
            reference.step()
            reference.param_groups[0]["lr"] *= lr_decay_per_step
        np.testing.assert_allclose(params[i].numpy(), p.detach().numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=f"member {i}: {name} {hyper}")


CASES: dict[str, tuple[list[str], list[dict[str, Any]]]] = {
    "sgd": (["sgd", "sgd", "sgd"],
            [{"lr": 0.1}, {"lr": 0.01, "weight_decay": 0.1}, {}]),
    "momentum": (["momentum", "momentum", "momentum", "momentum"],
                 [{"lr": 0.1}, {"lr": 0.05, "momentum": 0.5},
                  {"lr": 0.02, "momentum": 0.99, "dampening": 0.3},
                  {"lr": 0.03, "momentum": 0.0, "dampening": 0.5, "weight_decay": 0.01}]),
    "sgd_and_momentum": (["sgd", "momentum", "sgd"],
                         [{"lr": 0.1}, {"lr": 0.05, "momentum": 0.7}, {"lr": 0.2}]),
    # (Member 1 skips its first step in the skip test: at step 0, lr_decay 1 divides 0/0.)
    "adagrad": (["adagrad"] * 5,
                [{"lr": 0.1}, {"lr": 0.05, "lr_decay": 1.0}, {"lr": 0.05, "lr_decay": 0.1},
                 {"lr": 0.3, "initial_accumulator_value": 0.5, "eps": 1e-6},
                 {"lr": 0.01, "weight_decay": 0.2}]),
    "rmsprop": (["rmsprop"] * 4,
                [{"lr": 0.01}, {"lr": 0.02, "alpha": 0.9},
                 {"lr": 0.005, "alpha": 0.5, "eps": 1e-4, "momentum": 0.9},
                 {"lr": 0.01, "weight_decay": 0.1, "momentum": 0.3}]),
    "adam_and_adamw": (["adam", "adamw", "adam", "adamw"],
                       [{"lr": 0.01}, {"lr": 0.02, "betas": (0.8, 0.99)},
                        {"lr": 0.003, "betas": (0.5, 0.9), "eps": 1e-3,
                         "weight_decay": 0.1},
                        {"lr": 0.05, "weight_decay": 0.3, "eps": 1e-6}]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_member_follows_torch(case: str) -> None:
    names, hypers = CASES[case]
    _compare(names, hypers)


@pytest.mark.parametrize("case", ["momentum", "adagrad", "adam_and_adamw"])
def test_the_rate_is_read_at_every_step(case: str) -> None:
    names, hypers = CASES[case]
    _compare(names, hypers, lr_decay_per_step=0.7)


def test_both_adam_updates_follow_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU, Adam runs torch's fused kernel member by member (``_adam_rows``) for
    members of ``_ADAM_ROWS_FROM`` parameters or more; the update of every member at
    once (``_adam_columns``), for smaller members and other devices, agrees too."""
    names, hypers = CASES["adam_and_adamw"]
    used: list[str] = []
    for path in ("_adam_rows", "_adam_columns"):
        original = getattr(FusedOptimizer, path)

        def spy(self: FusedOptimizer, *args: Any, _path: str = path,
                _original: Any = original) -> None:
            used.append(_path)
            _original(self, *args)
        monkeypatch.setattr(FusedOptimizer, path, spy)
    _compare(names, hypers, lr_decay_per_step=0.7)  # P parameters: below the threshold
    assert set(used) == {"_adam_columns"}
    used.clear()
    monkeypatch.setattr("tuner.fused._optim._ADAM_ROWS_FROM", P)
    _compare(names, hypers, lr_decay_per_step=0.7)
    assert set(used) == {"_adam_rows"}


def _skips(k: int) -> list[torch.Tensor]:
    """Per step, which members take it (1) or skip it (0): member 1 skips its first
    step, member 2 every third, member 0 none."""
    return [torch.tensor([1.0, float(s != 0), float(s % 3 != 2)] + [1.0] * (k - 3),
                         dtype=torch.float64) for s in range(STEPS)]


# Adam also member by member (the rows path, for large members on a CPU).
@pytest.mark.parametrize(("case", "rows"),
                         [(case, False) for case in CASES] + [("adam_and_adamw", True)])
def test_a_skipped_step_leaves_the_member_as_torch_leaves_it(
        case: str, rows: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member whose step is skipped (float16's overflow) keeps its parameters, state and
    step count, as when torch's GradScaler skips ``optimizer.step()``: the member
    follows torch's optimizer stepped only on the steps it took. The others are as
    if nobody skipped."""
    if rows:
        monkeypatch.setattr("tuner.fused._optim._ADAM_ROWS_FROM", P)
    names, hypers = CASES[case]
    k = len(names)
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(k, P, generator=gen, dtype=torch.float64)
    grads = [torch.randn(k, P, generator=gen, dtype=torch.float64) for _ in range(STEPS)]
    oks = _skips(k)
    params = start.clone()
    fused = FusedOptimizer(names, hypers, params)
    lr = torch.tensor(_lrs(hypers, names), dtype=torch.float64)
    for g, ok in zip(grads, oks, strict=True):
        fused.step(params, g * ok.unsqueeze(1), lr, ok)  # skipped rows come zeroed
    for i, (name, hyper) in enumerate(zip(names, hypers, strict=True)):
        p = start[i].clone().requires_grad_(True)
        reference = build_optimizer([p], name, **hyper)
        for g, ok in zip(grads, oks, strict=True):
            if ok[i]:
                p.grad = g[i].clone()
                reference.step()
        np.testing.assert_allclose(params[i].numpy(), p.detach().numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=f"member {i}: {name} {hyper}")
    assert fused.steps.tolist() == [float(sum(ok[i] for ok in oks)) for i in range(k)]


def test_member_loss_scales_follow_torchs_grad_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each member's scale moves as a ``torch.amp.GradScaler``'s fed that member's
    overflows (backoff on an overflow, growth after a run of good steps, none past
    float32's range), and unscaling divides a finite row by its scale and zeroes a row
    with an inf or a NaN."""
    monkeypatch.setattr(MemberLossScale, "INTERVAL", 3)
    k, steps = 3, 12
    overflow = [[s in (0, 1, 7) for s in range(steps)], [False] * steps,
                [s % 2 == 0 for s in range(steps)]]
    scaler = MemberLossScale(k, torch.device("cpu"))
    references = [torch.amp.GradScaler("cpu", growth_interval=3) for _ in range(k)]
    for s in range(steps):
        grad = torch.full((k, 4), 2.0 ** 10)
        for i in range(k):
            if overflow[i][s]:
                grad[i, 1] = torch.inf if i % 2 else torch.nan
        scale_before = scaler.scale.clone()
        ok = scaler.unscale_(grad)
        assert ok.tolist() == [0.0 if overflow[i][s] else 1.0 for i in range(k)]
        for i in range(k):
            expected = 0.0 if overflow[i][s] else 2.0 ** 10 / scale_before[i].item()
            assert grad[i].tolist() == [expected] * 4
        scaler.update(ok)
        for i, reference in enumerate(references):
            p = torch.nn.Parameter(torch.ones(1))
            optimizer = torch.optim.SGD([p], lr=0.0)
            reference.scale(p.sum() * (torch.inf if overflow[i][s] else 1.0)).backward()
            reference.step(optimizer)
            reference.update()
            assert scaler.state(i) == reference.state_dict(), (s, i)

    # At the top of float32's range the scale stops growing, as GradScaler's does; a
    # scale that underflowed to 0 counts as an overflow.
    top = MemberLossScale(2, torch.device("cpu"))
    top.scale = torch.tensor([2.0 ** 127, 0.0])
    top.good.fill_(2)
    ok = top.unscale_(torch.ones(2, 3))
    assert ok.tolist() == [1.0, 0.0]
    top.update(ok)
    reference = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=3)
    reference.load_state_dict({**reference.state_dict(), "_growth_tracker": 2})
    p = torch.nn.Parameter(torch.ones(1))
    reference.scale(p.sum()).backward()
    reference.step(torch.optim.SGD([p], lr=0.0))
    reference.update()
    assert top.state(0) == reference.state_dict()
    assert top.scale[0].item() == 2.0 ** 127


def test_select_and_extend_keep_each_members_state() -> None:
    """Compaction drops rows; a member that joins later gets its own step count (Adam's
    bias corrections start again) while the others go on."""
    gen = torch.Generator().manual_seed(1)
    names = ["adam", "adamw", "adam"]
    hypers: list[dict[str, Any]] = [{"lr": 0.01}, {"lr": 0.02}, {"lr": 0.03,
                                                                 "betas": (0.7, 0.9)}]
    start = torch.randn(3, P, generator=gen, dtype=torch.float64)
    grads = [torch.randn(3, P, generator=gen, dtype=torch.float64) for _ in range(6)]
    lr = torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64)

    params = start[:2].clone()
    fused = FusedOptimizer(names[:2], hypers[:2], params)
    for g in grads[:3]:
        fused.step(params, g[:2].clone(), lr[:2])
    fused.select(torch.tensor([1]))  # member 0 leaves
    params = params[[1]]
    late = start[2:].clone()
    fused.extend(FusedOptimizer(names[2:], hypers[2:], late))  # member 2 joins
    params = torch.cat([params, late])
    for g in grads[3:]:
        fused.step(params, g[1:].clone(), lr[1:])

    for row, i, steps in ((0, 1, range(6)), (1, 2, range(3, 6))):
        p = start[i].clone().requires_grad_(True)
        reference = build_optimizer([p], names[i], **hypers[i])
        for t in steps:
            p.grad = grads[t][i].clone()
            reference.step()
        np.testing.assert_allclose(params[row].numpy(), p.detach().numpy(), rtol=1e-10)


@pytest.mark.parametrize(("name", "hyper"), [
    ("momentum", {"nesterov": True}), ("adam", {"amsgrad": True}),
    ("rmsprop", {"centered": True}), ("adam", {"maximize": True}),
])
def test_what_is_not_fused_is_refused(name: str, hyper: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(hyper))):
        resolve_hyper(name, hyper)


# -- schedules ---------------------------------------------------------------------------

EPOCHS = 14
SCHEDULES: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("step", {"step_size": 3, "gamma": 0.5}),
    ("step", {"step_size": 1}),
    ("multistep", {"milestones": [2, 5, 5, 9], "gamma": 0.3}),
    ("exponential", {"gamma": 0.8}),
    ("cosine", {"T_max": 14}),
    ("cosine", {"T_max": 4, "eta_min": 0.01}),  # past T_max: the restart branch
    ("plateau", {"mode": "min", "factor": 0.5, "patience": 1}),
    ("plateau", {"mode": "max", "factor": 0.2, "patience": 0, "cooldown": 2,
                 "threshold": 0.05}),
    ("plateau", {"mode": "min", "patience": 2, "threshold_mode": "abs", "threshold": 0.1,
                 "min_lr": 0.004}),
    ("plateau", {"mode": "max", "factor": 0.5, "patience": 0}),  # cuts below eps: skipped
]
BASE_LRS = [0.1, 0.2, 0.05, 0.3, 0.1, 0.1, 0.07, 0.1, 0.1, 0.02, 2e-8]


def _metrics() -> np.ndarray:
    """Per-epoch validation metrics with plateaus, ties and NaN."""
    rng = np.random.default_rng(0)
    values = np.round(rng.uniform(0.0, 1.0, size=(EPOCHS, len(SCHEDULES))), 1)
    values[6, :] = np.nan
    return values


def test_every_schedule_follows_torch() -> None:
    kinds = [k for k, _ in SCHEDULES]
    hypers = [h for _, h in SCHEDULES]
    metrics = _metrics()
    fused = FusedSchedule(kinds, hypers, torch.tensor(BASE_LRS, dtype=torch.float64))
    got = [fused.lr.tolist()]
    for epoch in range(EPOCHS):
        fused.step(torch.from_numpy(metrics[epoch]))
        got.append(fused.lr.tolist())

    for i, (kind, hyper) in enumerate(SCHEDULES):
        optimizer = build_optimizer([torch.zeros(1, requires_grad=True)], "sgd",
                                    lr=BASE_LRS[i])
        scheduler = build_scheduler(optimizer, kind, **hyper)
        expected = [optimizer.param_groups[0]["lr"]]
        for epoch in range(EPOCHS):
            optimizer.step()
            step_scheduler(scheduler, float(metrics[epoch, i]))
            expected.append(optimizer.param_groups[0]["lr"])
        np.testing.assert_allclose(np.array(got)[:, i], expected, rtol=1e-12, atol=0,
                                   err_msg=f"{kind} {hyper}")
    assert len(set(np.array(got)[:, 8].tolist())) > 2  # the plateau members did cut


def test_schedule_select_and_extend() -> None:
    kinds = ["step", "plateau"]
    hypers: list[dict[str, Any]] = [{"step_size": 2, "gamma": 0.5},
                                    {"mode": "min", "patience": 0, "factor": 0.5}]
    full = FusedSchedule(kinds, hypers, torch.tensor([1.0, 1.0], dtype=torch.float64))
    part = FusedSchedule(kinds[:1], hypers[:1], torch.tensor([1.0], dtype=torch.float64))
    late = FusedSchedule(kinds[1:], hypers[1:], torch.tensor([1.0], dtype=torch.float64))
    metric = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for _ in range(3):
        full.step(metric)
        part.step(metric[:1])
    part.extend(late)  # the plateau member joins at its epoch 0
    part.step(metric)
    part.select(torch.tensor([1]))
    for _ in range(2):
        part.step(metric[1:])
    # The late member's own epochs: 3; torch's plateau cuts on epochs 2 and 3.
    assert part.lr.tolist() == [0.25]
    assert full.lr.tolist() == [0.5, 0.25]


# -- penalties and max-norm ---------------------------------------------------------------


def test_penalty_gradients_equal_autograd_of_the_penalty() -> None:
    gen = torch.Generator().manual_seed(2)
    weights = torch.randn(3, 20, generator=gen, dtype=torch.float64)
    weights[0, :3] = 0.0  # sign(0) = 0, as autograd's abs
    l1 = torch.tensor([0.0, 0.1, 0.01], dtype=torch.float64)
    l2 = torch.tensor([0.5, 0.0, 0.02], dtype=torch.float64)
    grad = torch.randn(3, 20, generator=gen, dtype=torch.float64)

    got = grad.clone()
    add_penalty_grad_(got, weights, l1, l2)

    for i in range(3):
        w = weights[i].clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(
            penalty([w.view(4, 5)], float(l1[i]), float(l2[i])), [w])
        np.testing.assert_allclose(got[i].numpy(), (grad[i] + expected).numpy(), rtol=1e-14)


def test_max_norm_follows_torch_renorm() -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64)
    c = torch.tensor([0.5, 1.5, float("inf")], dtype=torch.float64)
    got = w.clone()
    apply_max_norm_([got], c)
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(),
                                   torch.renorm(w[i], p=2, dim=0, maxnorm=float(c[i])).numpy(),
                                   rtol=1e-14)
    assert torch.equal(got[2], w[2])  # no constraint
