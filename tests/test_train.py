"""The training loop against a plain reference loop, and its stopping rules."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tuner.data.builtin import Splits, load_splits, split_arrays
from tuner.train.config import TrialConfig
from tuner.train.dropout import epoch_masks
from tuner.train.loop import (
    RECOMPILE_LIMIT,
    Checkpoint,
    EpochMetrics,
    build_for,
    compile_model,
    evaluate,
    train,
)
from tuner.train.metrics import METRICS
from tuner.train.regularizers import penalized_weights

SMALL = {"hidden": 16, "layers": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def iris() -> Splits:
    return load_splits("iris", seed=0)


@pytest.fixture(scope="module")
def diabetes() -> Splits:
    return load_splits("diabetes", seed=0)


@pytest.fixture(scope="module")
def odd_regression() -> Splits:
    """61 training rows: with batches of 20 the last one would hold a single sample."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(103, 5))
    y = x @ rng.normal(size=5) + 0.1 * rng.normal(size=103) + 3.0
    splits = split_arrays(x, y, "regression", seed=0)
    assert splits.x_train.shape[0] == 61
    return splits


def _config(values: dict[str, Any], epochs: int, metric: str = "accuracy",
            **kwargs: Any) -> TrialConfig:
    return TrialConfig.from_values({**SMALL, **values}, epochs=epochs,
                                   maximize=METRICS[metric].maximize, **kwargs)


def _model(config: TrialConfig, data: Splits, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_for(config, data)


# --- (1) the fast loop is a plain loop ------------------------------------------------


def _reference_losses(model: nn.Module, data: Splits, config: TrialConfig,
                      optimizer: torch.optim.Optimizer) -> list[float]:
    """A straightforward loop: one permutation per epoch, batches in order, and a last
    batch of a single sample folded into the one before it (batch norm needs two). The
    model's dropout layers draw an epoch's masks at once, as in the training loop."""
    x, y = data.x_train, data.y_train
    n, bs = x.shape[0], min(config.batch_size, x.shape[0])
    starts = list(range(0, n, bs))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    ends = [*starts[1:], n]
    weights = [p for p in model.parameters() if p.ndim >= 2]
    losses = []
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(n)
        total = 0.0
        with epoch_masks(model, n):
            for start, end in zip(starts, ends, strict=True):
                idx = order[start:end]
                xb, yb = x[idx], y[idx]
                if config.input_noise:
                    xb = xb + config.input_noise * torch.randn(xb.shape)
                out = model(xb)
                if data.task == "classification":
                    loss = F.cross_entropy(out, yb)
                else:
                    loss = ((out[:, 0] - yb) ** 2).mean()
                total += loss.item() * len(idx)
                for w in weights:
                    loss = loss + config.l1 * w.abs().sum() + config.l2 / 2 * (w**2).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if config.max_norm is not None:
                    with torch.no_grad():
                        for w in weights:
                            norms = w.flatten(1).norm(dim=1)
                            # torch.renorm's rule: rows above max_norm scaled to max_norm.
                            scale = torch.where(norms > config.max_norm,
                                                config.max_norm / (norms + 1e-7),
                                                torch.ones_like(norms))
                            w.mul_(scale.view(-1, *[1] * (w.ndim - 1)))
        losses.append(total / n)
    return losses


def test_train_losses_equal_a_plain_loop_adam(iris: Splits) -> None:
    config = _config({"optimizer": "adam", "lr": 0.01, "beta1": 0.8}, epochs=5)
    model = _model(config, iris)
    reference = copy.deepcopy(model)

    torch.manual_seed(123)
    result = train(model, iris, config, metric=METRICS["accuracy"])
    torch.manual_seed(123)
    expected = _reference_losses(
        reference, iris, config,
        torch.optim.Adam(reference.parameters(), lr=0.01, betas=(0.8, 0.999)))

    got = [h.train_loss for h in result.history]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert expected[-1] < expected[0]  # it learned something
    assert [h.epoch for h in result.history] == [1, 2, 3, 4, 5]


def test_train_losses_equal_a_plain_loop_with_every_regularizer(odd_regression: Splits) -> None:
    # Momentum SGD, L1 + L2, max-norm, input noise, dropout and batch norm with a
    # one-sample tail batch that has to be folded into the previous one.
    values = {"optimizer": "momentum", "lr": 0.05, "momentum": 0.8, "batch_size": 20,
              "batchnorm": True, "dropout": 0.2, "l1": 1e-3, "l2": 1e-2, "max_norm": 1.0,
              "input_noise": 0.1}
    config = _config(values, epochs=4, metric="rmse")
    model = _model(config, odd_regression)
    reference = copy.deepcopy(model)

    torch.manual_seed(7)
    result = train(model, odd_regression, config, metric=METRICS["rmse"])
    torch.manual_seed(7)
    expected = _reference_losses(
        reference, odd_regression, config,
        torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.8))

    got = [h.train_loss for h in result.history]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_recorded_lr_follows_the_schedule(iris: Splits) -> None:
    config = _config({"optimizer": "sgd", "lr": 0.1, "schedule": "step", "step_size": 2,
                      "gamma": 0.5}, epochs=6)

    result = train(_model(config, iris), iris, config, metric=METRICS["accuracy"])

    lrs = [h.lr for h in result.history]
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025], rtol=1e-12)


# --- (2) early stopping keeps the best weights -----------------------------------------


@pytest.mark.parametrize("metric", ["accuracy", "cross_entropy"])
def test_returned_model_holds_the_best_epoch(iris: Splits, metric: str) -> None:
    config = _config({"optimizer": "adam", "lr": 0.05, "hidden": 32}, epochs=20, metric=metric)
    model = _model(config, iris)

    torch.manual_seed(0)
    result = train(model, iris, config, metric=METRICS[metric])

    values = np.array([h.val_metric for h in result.history])
    best = int(np.argmax(values) if METRICS[metric].maximize else np.argmin(values))
    assert result.best_epoch == best + 1
    assert result.best_metric == values[best]
    assert result.best_epoch < len(result.history)  # training went past the best epoch
    best_row = result.history[best]
    assert best_row.val_loss != result.history[-1].val_loss

    val_loss, val_metric = evaluate(model, iris.x_val, iris.y_val, iris.task, METRICS[metric])

    assert val_metric.item() == pytest.approx(best_row.val_metric, abs=1e-6)
    assert val_loss.item() == pytest.approx(best_row.val_loss, abs=1e-6)


# --- (3) pruning through report -------------------------------------------------------


def test_report_returning_true_prunes(iris: Splits) -> None:
    config = _config({}, epochs=10)
    seen: list[EpochMetrics] = []

    def report(metrics: EpochMetrics) -> bool:
        seen.append(metrics)
        return metrics.epoch == 3

    result = train(_model(config, iris), iris, config, metric=METRICS["accuracy"],
                   report=report)

    assert result.pruned
    assert not result.stopped_early and not result.diverged
    assert len(result.history) == 3
    assert seen == result.history


def test_report_returning_false_trains_every_epoch(iris: Splits) -> None:
    config = _config({}, epochs=4)
    calls: list[int] = []

    result = train(_model(config, iris), iris, config, metric=METRICS["accuracy"],
                   report=lambda m: calls.append(m.epoch) is not None)

    assert calls == [1, 2, 3, 4]
    assert not result.pruned and not result.stopped_early
    assert len(result.history) == 4


# --- (4) patience ---------------------------------------------------------------------


def test_patience_stops_after_that_many_epochs_without_improvement(iris: Splits) -> None:
    # A rate of 1e-12 leaves the model where it is: the metric never improves after epoch 1.
    config = _config({"optimizer": "sgd", "lr": 1e-12}, epochs=20, patience=3)

    result = train(_model(config, iris), iris, config, metric=METRICS["accuracy"])

    assert result.stopped_early
    assert not result.pruned
    assert result.best_epoch == 1
    assert len(result.history) == 4  # epoch 1 is the best, then 3 epochs without gain


def test_min_delta_larger_than_any_gain_stops_early(iris: Splits) -> None:
    # Accuracy lies in [0, 1]: no later epoch can beat the first by more than 1.
    config = _config({"optimizer": "adam", "lr": 0.05}, epochs=20, patience=2, min_delta=1.0)

    result = train(_model(config, iris), iris, config, metric=METRICS["accuracy"])

    assert result.stopped_early
    assert result.best_epoch == 1
    assert len(result.history) == 3


def test_without_patience_every_epoch_runs(iris: Splits) -> None:
    config = _config({"optimizer": "sgd", "lr": 1e-12}, epochs=6)

    result = train(_model(config, iris), iris, config, metric=METRICS["accuracy"])

    assert not result.stopped_early
    assert len(result.history) == 6


# --- (5) divergence ---------------------------------------------------------------------


def test_huge_learning_rate_diverges(diabetes: Splits) -> None:
    config = _config({"optimizer": "sgd", "lr": 1e4, "batch_size": 32}, epochs=10,
                     metric="rmse")

    result = train(_model(config, diabetes), diabetes, config, metric=METRICS["rmse"])

    assert result.diverged
    assert not result.pruned and not result.stopped_early
    assert len(result.history) < 10
    assert not math.isfinite(result.history[-1].train_loss)
    assert all(math.isfinite(h.train_loss) for h in result.history[:-1])


# --- (6) penalties and max-norm inside the loop ---------------------------------------


def _norm(model: nn.Module, p: int) -> float:
    return sum(w.detach().abs().pow(p).sum().item() for w in penalized_weights(model))


@pytest.mark.parametrize(("penalty", "p"), [("l1", 1), ("l2", 2)])
def test_penalty_shrinks_the_weights(iris: Splits, penalty: str, p: int) -> None:
    base = {"optimizer": "adam", "lr": 0.01}
    plain_config = _config(base, epochs=10, metric="cross_entropy")
    penalized_config = _config({**base, penalty: 0.05}, epochs=10, metric="cross_entropy")
    plain, penalized = _model(plain_config, iris), _model(penalized_config, iris)
    assert _norm(plain, p) == _norm(penalized, p)  # same start

    for model, config in ((plain, plain_config), (penalized, penalized_config)):
        torch.manual_seed(0)
        train(model, iris, config, metric=METRICS["cross_entropy"])

    assert _norm(penalized, p) < 0.8 * _norm(plain, p)


def test_max_norm_holds_after_training(iris: Splits) -> None:
    c = 0.5
    free_config = _config({"optimizer": "adam", "lr": 0.05}, epochs=8)
    clipped_config = _config({"optimizer": "adam", "lr": 0.05, "max_norm": c}, epochs=8)
    free, clipped = _model(free_config, iris), _model(clipped_config, iris)

    for model, config in ((free, free_config), (clipped, clipped_config)):
        torch.manual_seed(0)
        train(model, iris, config, metric=METRICS["accuracy"])

    def row_norms(model: nn.Module) -> torch.Tensor:
        return torch.cat([w.detach().flatten(1).norm(dim=1) for w in penalized_weights(model)])

    assert row_norms(free).max() > c  # without the constraint some unit grows past c
    assert row_norms(clipped).max() <= c + 1e-5


# --- (7) evaluate -----------------------------------------------------------------------


def test_evaluate_classification_matches_a_plain_computation(iris: Splits) -> None:
    config = _config({"dropout": 0.5}, epochs=2)
    model = _model(config, iris)
    train(model, iris, config, metric=METRICS["accuracy"])
    model.train()

    loss, accuracy = evaluate(model, iris.x_val, iris.y_val, iris.task, METRICS["accuracy"],
                              batch_size=7)

    assert model.training  # evaluate puts the mode back
    model.eval()
    with torch.no_grad():
        out = model(iris.x_val)
    expected_accuracy = (out.argmax(dim=1) == iris.y_val).double().mean().item()
    assert accuracy.item() == pytest.approx(expected_accuracy, abs=1e-7)
    assert loss.item() == pytest.approx(F.cross_entropy(out, iris.y_val).item(), rel=1e-5)


def test_evaluate_regression_reports_rmse_in_target_units(diabetes: Splits) -> None:
    config = _config({"batchnorm": True, "dropout": 0.3}, epochs=2, metric="rmse")
    model = _model(config, diabetes)
    train(model, diabetes, config, metric=METRICS["rmse"])

    loss, rmse = evaluate(model, diabetes.x_val, diabetes.y_val, diabetes.task, METRICS["rmse"],
                          diabetes.y_std)

    model.eval()
    with torch.no_grad():
        error = (model(diabetes.x_val)[:, 0] - diabetes.y_val).double()
    assert diabetes.y_std > 10  # raw diabetes targets: a scale that matters
    assert rmse.item() == pytest.approx(error.pow(2).mean().sqrt().item() * diabetes.y_std,
                                        rel=1e-5)
    assert loss.item() == pytest.approx(error.pow(2).mean().item(), rel=1e-5)


def test_history_val_metric_is_in_target_units(diabetes: Splits) -> None:
    config = _config({}, epochs=1, metric="mae")
    model = _model(config, diabetes)

    result = train(model, diabetes, config, metric=METRICS["mae"])

    model.eval()
    with torch.no_grad():
        error = (model(diabetes.x_val)[:, 0] - diabetes.y_val).double()
    assert result.history[0].val_metric == pytest.approx(
        error.abs().mean().item() * diabetes.y_std, rel=1e-5)


# --- resuming from a checkpoint ---------------------------------------------------------


def test_fp16_skips_overflowing_steps_and_its_loss_scale_survives_a_checkpoint(
        iris: Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a loss scale far past float16's range the first steps overflow and are
    skipped while the scale backs off (GradScaler's rule); a checkpoint carries the
    scale, so a resumed run goes on with it (a fresh scale would skip steps again)."""

    class HugeScale(torch.amp.GradScaler):
        def __init__(self, device: str) -> None:
            super().__init__(device, init_scale=2.0 ** 40)

    monkeypatch.setattr(torch.amp, "GradScaler", HugeScale)
    config = _config({"optimizer": "adam", "lr": 0.01}, epochs=5)
    model = _model(config, iris)
    initial = copy.deepcopy(model.state_dict())
    checkpoints: list[Checkpoint] = []
    torch.manual_seed(5)
    full = train(model, iris, config, metric=METRICS["accuracy"], precision="fp16",
                 checkpoint=checkpoints.append, checkpoint_every=0.0)
    batches = math.ceil(iris.x_train.shape[0] / config.batch_size)
    # Epoch 1: 2^40 halves once per batch, every step skipped: no weight moved.
    assert checkpoints[0].scaler is not None
    assert checkpoints[0].scaler["scale"] == 2.0 ** (40 - batches)
    assert all(torch.equal(checkpoints[0].model[k], v) for k, v in initial.items())
    # Backed off until in range, then steps that went through and trained.
    last = checkpoints[-1].scaler
    assert last is not None and last["scale"] < 2.0 ** (40 - 3 * batches)
    assert last["_growth_tracker"] > 0
    assert full.history[-1].train_loss < full.history[0].train_loss

    # Resumed mid-way through backing off (after epoch 3).
    fresh = _model(config, iris, seed=99)
    resumed = train(fresh, iris, config, metric=METRICS["accuracy"], precision="fp16",
                    resume=Checkpoint.from_bytes(checkpoints[2].to_bytes()))
    assert _without_seconds(resumed.history) == _without_seconds(full.history)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


@pytest.mark.slow
def test_a_compiled_model_trains_as_the_uncompiled_one(iris: Splits) -> None:
    """torch.compile'd, without dropout and with a last batch of another size: the same
    curve to float rounding, and the state_dict keys of the plain model (checkpoints and
    exports stay loadable)."""
    config = _config({"optimizer": "adam", "lr": 0.01, "batch_size": 32}, epochs=3)
    runs = []
    for compiled in (False, True):
        model = _model(config, iris)
        if compiled:
            compile_model(model)
        torch.manual_seed(3)
        runs.append((model, train(model, iris, config, metric=METRICS["accuracy"])))
    (plain_model, plain), (compiled_model, compiled_run) = runs
    np.testing.assert_allclose([h.train_loss for h in compiled_run.history],
                               [h.train_loss for h in plain.history], rtol=1e-5)
    np.testing.assert_allclose([h.val_loss for h in compiled_run.history],
                               [h.val_loss for h in plain.history], rtol=1e-5)
    assert compiled_model.state_dict().keys() == plain_model.state_dict().keys()
    for name, tensor in plain_model.state_dict().items():
        torch.testing.assert_close(compiled_model.state_dict()[name], tensor, rtol=1e-4,
                                   atol=1e-5)
    from torch._dynamo import config as dynamo_config

    assert dynamo_config.recompile_limit >= RECOMPILE_LIMIT


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
@pytest.mark.slow
def test_compiled_dropout_is_one_graph_for_every_rate(iris: Splits, kind: str) -> None:
    """With dropout the whole forward pass is one graph (no break at the dropout layers,
    which would leave all but the head uncompiled), every trial's rate reuses it, the
    state_dict is the plain model's, and the masks drop at the rate."""
    from torch._dynamo.utils import counters

    config = _config({"optimizer": "adam", "lr": 0.01, "dropout": 0.2, "dropout_kind": kind,
                      "batch_size": 32}, epochs=2)
    counters.clear()
    model = compile_model(_model(config, iris))
    result = train(model, iris, config, metric=METRICS["accuracy"])
    assert dict(counters["graph_break"]) == {}
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    assert model.state_dict().keys() == _model(config, iris).state_dict().keys()
    assert all(math.isfinite(h.train_loss) for h in result.history)
    other = dataclasses.replace(config, dropout=0.4)
    train(compile_model(_model(other, iris, seed=1)), iris, other, metric=METRICS["accuracy"])
    assert counters["stats"]["unique_graphs"] == graphs  # the same graphs
    # The compiled layer itself: a unit is kept with probability 1 - p (Bernoulli:
    # scaled by 1/(1-p)) or multiplied by N(1, p/(1-p)) (Gaussian).
    layer = next(m for m in model.modules() if type(m).__name__ in ("Dropout",
                                                                     "GaussianDropout"))
    out = torch.compile(layer)(torch.ones(200_000))
    if kind == "bernoulli":
        kept = out[out != 0]
        assert abs(kept.numel() / out.numel() - 0.8) < 0.005
        torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.8))
    else:
        assert abs(out.mean().item() - 1) < 0.005
        assert abs(out.std().item() - math.sqrt(0.2 / 0.8)) < 0.005


def _without_seconds(history: list[EpochMetrics]) -> list[tuple[float, ...]]:
    return [(h.epoch, h.train_loss, h.val_loss, h.val_metric, h.lr) for h in history]


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(iris: Splits) -> None:
    # Dropout and noise draw from the RNG, momentum and the schedule carry state: all
    # must survive the checkpoint for the curve to be the same.
    values = {"optimizer": "momentum", "lr": 0.05, "dropout": 0.3, "input_noise": 0.1,
              "schedule": "step", "step_size": 2, "gamma": 0.5}
    config = _config(values, epochs=6)
    model = _model(config, iris)
    initial = copy.deepcopy(model.state_dict())
    checkpoints: list[Checkpoint] = []

    torch.manual_seed(5)
    full = train(model, iris, config, metric=METRICS["accuracy"],
                 checkpoint=checkpoints.append, checkpoint_every=0.0)
    assert [c.epoch for c in checkpoints] == [1, 2, 3, 4, 5, 6]

    blob = checkpoints[2].to_bytes()  # after epoch 3, through the database's bytes
    fresh = _model(config, iris, seed=99)
    assert not torch.equal(fresh.state_dict()["head.weight"], initial["head.weight"])
    torch.manual_seed(1234)  # the checkpoint's RNG state must win over this
    resumed = train(fresh, iris, config, metric=METRICS["accuracy"],
                    resume=Checkpoint.from_bytes(blob))

    assert _without_seconds(resumed.history) == _without_seconds(full.history)
    assert [h.lr for h in full.history] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.0125,
                                                          0.0125])
    assert (resumed.best_epoch, resumed.best_metric) == (full.best_epoch, full.best_metric)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


@pytest.mark.parametrize("half", ["bf16", "fp16"])
def test_mixed_precision_follows_float32_and_keeps_float32_weights(iris: Splits,
                                                                  half: str) -> None:
    config = _config({"optimizer": "adam", "lr": 0.01}, epochs=4)
    runs = []
    for precision in ("fp32", half):
        model = _model(config, iris)
        torch.manual_seed(7)
        runs.append((model, train(model, iris, config, metric=METRICS["accuracy"],
                                  precision=precision)))
    (exact_model, exact), (mixed_model, mixed) = runs
    assert all(p.dtype == torch.float32 for p in mixed_model.parameters())
    # The same batches and initial weights; half-precision products drift by about a
    # percent.
    np.testing.assert_allclose([h.train_loss for h in mixed.history],
                               [h.train_loss for h in exact.history], rtol=0.05)
    assert mixed.history[-1].train_loss < mixed.history[0].train_loss
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        train(_model(config, iris), iris, config, metric=METRICS["accuracy"], precision="fp8")
    assert not torch.equal(mixed_model.head.weight, exact_model.head.weight)
