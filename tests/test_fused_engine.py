"""The fused population engine against the sequential loop, and its per-member rules."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from tuner.data.builtin import Splits, load_splits, split_arrays
from tuner.fused import (
    MemberResult,
    PopulationHooks,
    group_key,
    train_population,
    unsupported_reason,
)
from tuner.fused._group import Group, Member
from tuner.train.config import TrialConfig
from tuner.train.loop import Checkpoint, EpochMetrics, build_for, evaluate, train
from tuner.train.metrics import METRICS

SMALL = {"hidden": 8, "layers": 2, "batch_size": 16}


def _double(data: Splits) -> Splits:
    return dataclasses.replace(data, **{f: getattr(data, f).double() for f in
                                        ("x_train", "x_val", "x_test")})


@pytest.fixture(scope="module")
def iris64() -> Splits:
    return _double(load_splits("iris", seed=0))


@pytest.fixture(scope="module")
def odd_regression64() -> Splits:
    """61 training rows: with batches of 20 the last one would hold a single sample."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(103, 5))
    y = x @ rng.normal(size=5) + 0.1 * rng.normal(size=103) + 3.0
    data = split_arrays(x, y, "regression", seed=0)
    return dataclasses.replace(_double(data), **{f: getattr(data, f).double() for f in
                                                 ("y_train", "y_val", "y_test")})


def _config(values: dict[str, Any], seed: int, epochs: int = 6, metric: str = "accuracy",
            **kwargs: Any) -> TrialConfig:
    return TrialConfig.from_values({**SMALL, **values}, epochs=epochs, seed=seed,
                                   maximize=METRICS[metric].maximize, **kwargs)


def _sequential(config: TrialConfig, data: Splits, order_seed: int,
                metric: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """tuner.train.loop on the member's own initial weights, with the global generator seeded
    so that its per-epoch ``randperm`` draws the group's batch order."""
    torch.manual_seed(config.seed)
    model = build_for(config, data).to(data.x_train.dtype)
    torch.manual_seed(order_seed)
    result = train(model, data, config, metric=METRICS[metric])
    return result, model.state_dict()


def _rows(history: Sequence[EpochMetrics]) -> np.ndarray:
    return np.array([[h.epoch, h.train_loss, h.val_loss, h.val_metric, h.lr] for h in history])


# -- the float64 equality: fused == sequential on the same batch order -----------

# Two groups (adam family, then SGD family): every optimizer, every schedule, both
# penalties, max-norm and early stopping (members stop at different epochs, so the
# batch is compacted under the others). Dropout and noise are off.
IRIS_MEMBERS: list[dict[str, Any]] = [
    {"optimizer": "adam", "lr": 0.01, "l2": 1e-3, "schedule": "step", "step_size": 2},
    {"optimizer": "adamw", "lr": 0.03, "beta1": 0.8, "weight_decay": 0.1, "l1": 1e-3,
     "max_norm": 0.7, "schedule": "cosine"},
    {"optimizer": "adam", "lr": 0.05, "schedule": "plateau", "patience": 0, "factor": 0.5},
    {"optimizer": "momentum", "lr": 0.05, "momentum": 0.8, "schedule": "exponential",
     "gamma": 0.9},
    {"optimizer": "sgd", "lr": 0.2, "l2": 1e-2, "max_norm": 1.0,
     "schedule": "multistep", "milestones": "2,4"},
]
IRIS_GROUP = [0, 0, 0, 1, 1]
ADAGRAD_RMSPROP: list[dict[str, Any]] = [
    {"optimizer": "adagrad", "lr": 0.1, "l1": 1e-3},
    {"optimizer": "rmsprop", "lr": 0.01, "alpha": 0.9, "max_norm": 0.8},
]


def _assert_same(fused: MemberResult, sequential: Any, state: dict[str, torch.Tensor],
                 label: str) -> None:
    np.testing.assert_allclose(_rows(fused.history), _rows(sequential.history), rtol=1e-6,
                               atol=1e-6, err_msg=label)
    assert (fused.best_epoch, fused.stopped_early) == (sequential.best_epoch,
                                                       sequential.stopped_early), label
    assert fused.best_metric == pytest.approx(sequential.best_metric, abs=1e-6)
    assert fused.state_dict.keys() == state.keys()
    for name, value in state.items():
        torch.testing.assert_close(fused.state_dict[name].to(value.dtype), value, rtol=1e-6,
                                   atol=1e-6, msg=f"{label} {name}")


def test_every_members_epochs_equal_a_sequential_run(iris64: Splits) -> None:
    configs = [_config(v, seed=10 + i, patience=2 if i in (1, 3) else None)
               for i, v in enumerate(IRIS_MEMBERS)]
    configs += [_config(v, seed=20 + i, epochs=4) for i, v in enumerate(ADAGRAD_RMSPROP)]
    groups = [*IRIS_GROUP, 2, 3]  # groups are numbered in order of formation

    results = train_population(configs, iris64, metric=METRICS["accuracy"], seed=100)

    for i, (config, result) in enumerate(zip(configs, results, strict=True)):
        sequential, state = _sequential(config, iris64, 100 + groups[i], "accuracy")
        _assert_same(result, sequential, state, f"member {i} {config.optimizer}")
    assert any(r.stopped_early for r in results)
    assert len({len(r.history) for r in results}) > 1


def test_batch_norm_regression_with_a_folded_tail_equals_sequential(
        odd_regression64: Splits) -> None:
    values: list[dict[str, Any]] = [
        {"optimizer": "momentum", "lr": 0.05, "momentum": 0.8, "l1": 1e-3, "l2": 1e-2},
        {"optimizer": "sgd", "lr": 0.02, "max_norm": 1.0, "schedule": "plateau",
         "patience": 1},
        {"optimizer": "momentum", "lr": 0.01, "momentum": 0.5},
    ]
    configs = [_config({**v, "batch_size": 20, "batchnorm": True}, seed=i, epochs=5,
                       metric="rmse") for i, v in enumerate(values)]

    results = train_population(configs, odd_regression64, metric=METRICS["rmse"], seed=3)

    for i, (config, result) in enumerate(zip(configs, results, strict=True)):
        sequential, state = _sequential(config, odd_regression64, 3, "rmse")
        _assert_same(result, sequential, state, f"member {i}")


# -- with dropout on: the same distribution of outcomes ----------------------------------


def test_with_dropout_fused_and_sequential_outcomes_agree_statistically() -> None:
    """Statistical test. 16 members share one config (Bernoulli dropout 0.3, input noise
    0.2, 3 epochs on digits) and differ only in seed; each is trained fused (one
    population) and sequentially (16 runs, each drawing its own batch order from its
    seed). For the training loss and the validation loss of every epoch (6 samples of
    16 against 16), a two-sided Welch t-test of "same mean" must not reject at alpha =
    0.001 each (family-wise at most 0.6%, Bonferroni). The seeds are fixed, so the
    outcome is deterministic on a platform (observed p-values: 0.4 to 0.98).
    Power: the same tests reject a fused population without dropout (checked here),
    and one whose dropout forgets the 1/(1-p) rescale (p = 6e-4 and 4e-5 for the
    training loss of epochs 1 and 2, checked by hand)."""
    data = load_splits("digits", seed=0)
    base = {"hidden": 32, "layers": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.01,
            "input_noise": 0.2}
    configs = [TrialConfig.from_values({**base, "dropout": 0.3}, epochs=3, seed=s)
               for s in range(16)]
    metric = METRICS["accuracy"]

    fused = train_population(configs, data, metric=metric)
    sequential = []
    for config in configs:
        torch.manual_seed(config.seed)
        sequential.append(train(build_for(config, data), data, config, metric=metric))
    plain = train_population([dataclasses.replace(c, dropout=0.0) for c in configs], data,
                             metric=metric)

    def pvalues(a: Sequence[Any], b: Sequence[Any]) -> dict[tuple[str, int], float]:
        return {(field, epoch): float(stats.ttest_ind(
            [getattr(r.history[epoch], field) for r in a],
            [getattr(r.history[epoch], field) for r in b], equal_var=False).pvalue)
            for field in ("train_loss", "val_loss") for epoch in range(3)}

    same = pvalues(fused, sequential)
    assert min(same.values()) > 1e-3, same
    assert min(pvalues(fused, plain).values()) < 1e-3


# -- per-member rules: pruning, stopping, divergence, compaction -------------------------


def _histories(results: Sequence[MemberResult]) -> list[np.ndarray]:
    return [_rows(r.history)[:, :4] for r in results]  # without the wall time


def test_compaction_leaves_the_other_members_trajectories_unchanged(iris64: Splits) -> None:
    configs = [_config({"optimizer": "adam", "lr": 0.01 * (i + 1), "l2": 1e-3 * i},
                       seed=i, epochs=5) for i in range(4)]
    metric = METRICS["accuracy"]

    pruned = train_population(configs, iris64, metric=metric, hooks=PopulationHooks(
        report=lambda rows: [member for member, m in rows if member == 0 and m.epoch == 2]))
    without = train_population(configs[1:], iris64, metric=metric)

    assert pruned[0].pruned and len(pruned[0].history) == 2
    for got, expected in zip(_histories(pruned[1:]), _histories(without), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_report_prunes_one_member_and_sees_every_epoch(iris64: Splits) -> None:
    configs = [_config({"optimizer": "adam", "lr": 0.02}, seed=i, epochs=4) for i in range(3)]
    calls: list[tuple[int, int]] = []
    finished: list[int] = []

    def report(rows: Sequence[tuple[int, EpochMetrics]]) -> list[int]:
        calls.extend((member, metrics.epoch) for member, metrics in rows)
        return [member for member, metrics in rows if member == 1 and metrics.epoch == 2]

    def finish(done: Sequence[tuple[int, MemberResult]]) -> None:
        finished.extend(member for member, _ in done)

    results = train_population(configs, iris64, metric=METRICS["accuracy"],
                               hooks=PopulationHooks(report=report, finish=finish))

    assert sorted(calls) == [(0, e) for e in range(1, 5)] + [(1, 1), (1, 2)] + [
        (2, e) for e in range(1, 5)]
    assert [r.pruned for r in results] == [False, True, False]
    assert [len(r.history) for r in results] == [4, 2, 4]
    assert sorted(finished) == [0, 1, 2] and finished[0] == 1


def test_patience_stops_one_member_only(iris64: Splits) -> None:
    configs = [_config({"optimizer": "sgd", "lr": lr}, seed=0, epochs=8, patience=2)
               for lr in (1e-12, 0.1)]

    frozen, moving = train_population(configs, iris64, metric=METRICS["accuracy"])

    assert frozen.stopped_early and frozen.best_epoch == 1 and len(frozen.history) == 3
    assert len(moving.history) > 3


def test_a_diverging_member_stops_and_leaves_the_others_alone(
        odd_regression64: Splits) -> None:
    configs = [_config({"optimizer": "sgd", "lr": lr, "batch_size": 20}, seed=i, epochs=6,
                       metric="rmse") for i, lr in enumerate((0.05, 1e4, 0.01))]
    metric = METRICS["rmse"]

    results = train_population(configs, odd_regression64, metric=metric)
    calm = train_population([configs[0], configs[2]], odd_regression64, metric=metric)

    assert results[1].diverged and not math.isfinite(results[1].history[-1].train_loss)
    assert not results[0].diverged and not results[2].diverged
    for got, expected in zip(_histories([results[0], results[2]]), _histories(calm),
                             strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_exported_weights_are_the_best_epochs(iris64: Splits) -> None:
    config = _config({"optimizer": "adam", "lr": 0.05, "hidden": 16}, seed=0, epochs=20,
                     metric="cross_entropy")
    metric = METRICS["cross_entropy"]

    (result,) = train_population([config], iris64, metric=metric)

    assert result.best_epoch < len(result.history)
    model = build_for(config, iris64).double()
    model.load_state_dict(result.state_dict)
    val_loss, val_metric = evaluate(model, iris64.x_val, iris64.y_val, iris64.task, metric)
    assert val_metric.item() == pytest.approx(result.best_metric, abs=1e-9)
    assert val_loss.item() == pytest.approx(result.history[result.best_epoch - 1].val_loss,
                                            abs=1e-9)


# -- refilling freed slots -------------------------------------------------------------


def test_freed_slots_are_refilled_and_every_member_trains_its_epochs(iris64: Splits) -> None:
    first = [_config({"optimizer": "adam", "lr": 0.01}, seed=i, epochs=e)
             for i, e in enumerate((2, 3, 4))]
    queue = [_config({"optimizer": "adamw", "lr": 0.02}, seed=10, epochs=3),  # joins
             _config({"optimizer": "sgd", "lr": 0.1, "hidden": 5}, seed=11, epochs=2),  # new
             _config({"optimizer": "adam", "lr": 0.01, "dropout": 0.2}, seed=12, epochs=2)]
    asked: list[int] = []

    def refill(free: int) -> list[TrialConfig]:
        asked.append(free)
        taken = queue[:min(free, 2)]
        del queue[:len(taken)]
        return taken

    results = train_population(first, iris64, metric=METRICS["accuracy"],
                               hooks=PopulationHooks(refill=refill), population=3)

    assert len(results) == 6 and not queue
    assert [len(r.history) for r in results] == [2, 3, 4, 3, 2, 2]
    assert all([h.epoch for h in r.history] == list(range(1, len(r.history) + 1))
               for r in results)
    assert asked[0] == 1 and max(asked) <= 3
    assert results[3].history[0].lr == pytest.approx(0.02)  # its own schedule from epoch 1


# -- grouping ------------------------------------------------------------------------------


def test_group_keys_fuse_optimizer_families_and_dropout_free_members() -> None:
    def key(**values: Any) -> tuple[Any, ...]:
        return group_key(_config(values, seed=0))

    assert key(optimizer="sgd") == key(optimizer="momentum", momentum=0.5)
    assert key(optimizer="adam") == key(optimizer="adamw", schedule="cosine")
    assert key(optimizer="adam") != key(optimizer="rmsprop")
    assert key(hidden=8) != key(hidden=9)
    assert key(dropout=0.0)[-1] is None and key(dropout=0.1)[-1] == "bernoulli"


def test_configs_that_cannot_be_fused_are_named(iris64: Splits) -> None:
    cnn = _config({}, seed=0, model="cnn")
    nesterov = dataclasses.replace(_config({"optimizer": "momentum"}, seed=0),
                                   optimizer_hyper=(("lr", 0.1), ("nesterov", True)))
    assert "cnn" in (unsupported_reason(cnn) or "")
    assert "nesterov" in (unsupported_reason(nesterov) or "")
    assert unsupported_reason(_config({"optimizer": "rmsprop"}, seed=0)) is None
    with pytest.raises(ValueError, match="cannot be fused"):
        train_population([nesterov], iris64, metric=METRICS["accuracy"])


def test_the_callers_random_state_is_left_alone(iris64: Splits) -> None:
    configs = [_config({"dropout": 0.3, "input_noise": 0.1}, seed=i, epochs=2)
               for i in range(2)]
    torch.manual_seed(0)
    before = torch.get_rng_state()
    train_population(configs, iris64, metric=METRICS["accuracy"])
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_half_precision_population_trains_like_a_float32_one(precision: str) -> None:
    data = load_splits("digits", seed=0)
    configs = [TrialConfig.from_values({"hidden": 32, "layers": 1, "optimizer": "adam",
                                        "lr": 3e-3, "dropout": 0.2}, epochs=4, seed=s)
               for s in range(6)]
    exact = train_population(configs, data, metric=METRICS["accuracy"], seed=1)
    mixed = train_population(configs, data, metric=METRICS["accuracy"], seed=1,
                             precision=precision)
    for e, m in zip(exact, mixed, strict=True):
        # Same batches, same dropout draws, same initial weights: the curves agree to
        # the half precision's, and the exported weights are float32.
        assert m.history[-1].train_loss == pytest.approx(e.history[-1].train_loss, rel=0.1)
        assert m.best_metric == pytest.approx(e.best_metric, abs=0.03)
        assert all(v.dtype in (torch.float32, torch.int64) for v in m.state_dict.values())
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        train_population(configs, data, metric=METRICS["accuracy"], precision="fp8")


def test_fp16_members_that_overflow_skip_their_steps_and_back_off() -> None:
    """A member whose loss scale makes its float16 gradients overflow skips each such
    step (its weights and optimizer stay as they were) and halves its scale, while the
    others train; a member's checkpoint carries its scale for the sequential engine."""
    data = load_splits("digits", seed=0)
    configs = [TrialConfig.from_values({"hidden": 32, "layers": 1, "optimizer": "adam",
                                        "lr": 3e-3}, epochs=4, seed=s) for s in range(3)]
    group = Group([Member(i, c) for i, c in enumerate(configs)], data, seed=0,
                  compute=torch.float16)
    assert group.scaler is not None
    group.scaler.scale[0] = 2.0 ** 50  # far past float16's range on every batch
    before = group.model.params.clone()
    group.train_epoch(data, METRICS["accuracy"])
    n_batches = math.ceil(data.x_train.shape[0] / configs[0].batch_size)
    assert torch.equal(group.model.params[0], before[0])
    assert group.optimizer.steps.tolist() == [0.0, n_batches, n_batches]
    assert group.scaler.scale.tolist() == [2.0 ** (50 - n_batches), 2.0 ** 16, 2.0 ** 16]
    assert not torch.equal(group.model.params[1], before[1])
    assert torch.isfinite(group.model.params).all()
    checkpoint = group.checkpoint(2)
    assert checkpoint.scaler is not None
    assert checkpoint.scaler["scale"] == 2.0 ** 16
    assert checkpoint.scaler["_growth_tracker"] == n_batches


@pytest.mark.parametrize("optimizer", ["momentum", "adagrad", "rmsprop", "adamw"])
def test_a_skipped_fp16_step_leaves_state_alone_with_penalties_on(optimizer: str) -> None:
    """L1/L2's gradients are added after unscaling: a member that skips its step must
    not get them either, or its momentum or accumulators would move (torch's GradScaler
    skips the whole step). A member that never stepped checkpoints as torch's optimizer
    before its first step (SGD: no momentum buffer yet)."""
    data = load_splits("digits", seed=0)
    values = {"hidden": 32, "layers": 1, "optimizer": optimizer, "lr": 1e-2, "l1": 1e-4,
              "l2": 1e-2}
    if optimizer == "rmsprop":
        values["momentum"] = 0.5
    configs = [TrialConfig.from_values(values, epochs=4, seed=s) for s in range(2)]
    group = Group([Member(i, c) for i, c in enumerate(configs)], data, seed=0,
                  compute=torch.float16)
    assert group.scaler is not None and group.l2 is not None
    group.scaler.scale[0] = 2.0 ** 50
    before = {k: v.clone() for k, v in group.optimizer.state.items()}
    params = group.model.params.clone()
    group.train_epoch(data, METRICS["accuracy"])
    assert torch.equal(group.model.params[0], params[0])
    for key, value in group.optimizer.state.items():
        assert torch.equal(value[0], before[key][0]), key
        assert not torch.equal(value[1], before[key][1]), key  # the other member trained
    assert group.optimizer.steps[0].item() == 0
    if optimizer == "momentum":
        state = group.checkpoint(0).optimizer["state"]
        assert state and all("momentum_buffer" not in s for s in state.values())


# -- checkpoints: a member resumed by the sequential engine continues its fused run ---------

def test_a_member_resumed_from_its_checkpoint_continues_as_if_uninterrupted(
        iris64: Splits) -> None:
    """Each member's checkpoint after epoch 3 is a sequential trial's: tuner.train.loop resumes
    it (weights, optimizer state, schedule, best epoch, batch order) and trains epochs
    4-6 exactly as the uninterrupted population did, in float64 without dropout."""
    values = [*IRIS_MEMBERS, *ADAGRAD_RMSPROP]  # sgd without momentum beside momentum
    configs = [_config(v, seed=30 + i) for i, v in enumerate(values)]
    metric = METRICS["accuracy"]
    uninterrupted = train_population(configs, iris64, metric=metric, seed=7)
    saved: dict[int, Checkpoint] = {}

    def keep(member: int, checkpoint: Checkpoint) -> None:
        if checkpoint.epoch == 3:
            saved[member] = Checkpoint.from_bytes(checkpoint.to_bytes())  # as stored

    train_population(configs, iris64, metric=metric, seed=7,
                     hooks=PopulationHooks(checkpoint=keep, checkpoint_every=0))

    assert sorted(saved) == list(range(len(configs)))
    for i, config in enumerate(configs):
        model = build_for(config, iris64).to(torch.float64)
        resumed = train(model, iris64, config, metric=metric, resume=saved[i])
        np.testing.assert_allclose(_rows(resumed.history), _rows(uninterrupted[i].history),
                                   rtol=1e-6, atol=1e-6, err_msg=f"member {i}")
        assert resumed.best_epoch == uninterrupted[i].best_epoch
        for name, value in model.state_dict().items():  # the best epoch's weights
            torch.testing.assert_close(value.to(torch.float64),
                                       uninterrupted[i].state_dict[name].to(torch.float64),
                                       rtol=1e-6, atol=1e-6, msg=f"member {i} {name}")


def test_accuracy_per_epoch_is_hits_over_n_when_training_in_float32() -> None:
    """The value stored for a trial is hits / n as Python divides them, not float32's
    approximation (0.98611110448837 for 355/360)."""
    data = load_splits("iris", seed=0)  # float32, as studies train
    assert data.x_train.dtype == torch.float32
    configs = [_config({"optimizer": "adam", "lr": 0.01}, seed=s, epochs=2) for s in (1, 2)]
    results = train_population(configs, data, metric=METRICS["accuracy"], seed=0)
    n = len(data.y_val)
    values = [epoch.val_metric for r in results for epoch in r.history]
    assert values and all(round(v * n) / n == v for v in values), values
