"""Losses and metrics against numpy, and the improvement rule of early stopping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tuner.train.metrics import METRICS, is_better, loss_fn, metric_value


@pytest.fixture
def logits_and_labels() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)


@pytest.fixture
def predictions_and_targets() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 1, generator=g), torch.randn(40, generator=g)


def _np_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64)
    log_softmax = z - z.max(axis=1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
    return float(-log_softmax[np.arange(len(labels)), labels].mean())


def test_metric_directions() -> None:
    assert METRICS["accuracy"].maximize
    assert METRICS["accuracy"].task == "classification"
    assert not METRICS["cross_entropy"].maximize
    assert METRICS["cross_entropy"].task == "classification"
    for name in ("rmse", "mae"):
        assert not METRICS[name].maximize
        assert METRICS[name].task == "regression"


def test_accuracy_is_the_fraction_of_argmax_hits(
        logits_and_labels: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = logits_and_labels
    expected = float((logits.numpy().argmax(axis=1) == labels.numpy()).mean())

    got = metric_value(METRICS["accuracy"], logits, labels)

    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, abs=1e-7)
    assert 0 < expected < 1  # a fixture that tests something


def test_accuracy_by_hand() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])

    assert metric_value(METRICS["accuracy"], logits, labels).item() == 0.5


def test_cross_entropy_matches_numpy(
        logits_and_labels: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = logits_and_labels
    expected = _np_cross_entropy(logits.numpy(), labels.numpy())

    metric = metric_value(METRICS["cross_entropy"], logits, labels)
    loss = loss_fn("classification", logits, labels)

    assert metric.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("y_scale", [1.0, 2.5])
def test_rmse_matches_numpy_in_target_units(
        predictions_and_targets: tuple[torch.Tensor, torch.Tensor], y_scale: float) -> None:
    out, target = predictions_and_targets
    error = out.numpy()[:, 0].astype(np.float64) - target.numpy()
    expected = math.sqrt((error**2).mean()) * y_scale

    got = metric_value(METRICS["rmse"], out, target, y_scale)

    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("y_scale", [1.0, 2.5])
def test_mae_matches_numpy_in_target_units(
        predictions_and_targets: tuple[torch.Tensor, torch.Tensor], y_scale: float) -> None:
    out, target = predictions_and_targets
    expected = np.abs(out.numpy()[:, 0].astype(np.float64) - target.numpy()).mean() * y_scale

    got = metric_value(METRICS["mae"], out, target, y_scale)

    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_regression_loss_is_mse_without_broadcasting(
        predictions_and_targets: tuple[torch.Tensor, torch.Tensor]) -> None:
    out, target = predictions_and_targets  # (n, 1) against (n,)
    expected = ((out.numpy()[:, 0].astype(np.float64) - target.numpy()) ** 2).mean()

    got = loss_fn("regression", out, target)

    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_rmse_by_hand() -> None:
    out = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    target = torch.tensor([1.0, 0.0, 3.0, 8.0])  # errors 0, 2, 0, -4: mse 5

    assert metric_value(METRICS["rmse"], out, target, 2.0).item() == pytest.approx(
        2 * math.sqrt(5))
    assert metric_value(METRICS["mae"], out, target, 2.0).item() == pytest.approx(2 * 1.5)


# --- is_better -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "best", "min_delta", "better"), [
    (0.81, 0.80, 0.0, True),
    (0.80, 0.80, 0.0, False),
    (0.79, 0.80, 0.0, False),
    (0.84, 0.80, 0.05, False),
    (0.86, 0.80, 0.05, True),
    (0.10, None, 0.05, True),
])
def test_is_better_when_maximizing(value: float, best: float | None, min_delta: float,
                                   better: bool) -> None:
    assert is_better(METRICS["accuracy"], value, best, min_delta) is better


@pytest.mark.parametrize(("value", "best", "min_delta", "better"), [
    (0.79, 0.80, 0.0, True),
    (0.80, 0.80, 0.0, False),
    (0.81, 0.80, 0.0, False),
    (0.76, 0.80, 0.05, False),
    (0.74, 0.80, 0.05, True),
    (9.00, None, 0.05, True),
])
def test_is_better_when_minimizing(value: float, best: float | None, min_delta: float,
                                   better: bool) -> None:
    assert is_better(METRICS["rmse"], value, best, min_delta) is better


@pytest.mark.parametrize("name", ["accuracy", "rmse"])
def test_nan_is_never_better(name: str) -> None:
    assert not is_better(METRICS[name], math.nan, None)
    assert not is_better(METRICS[name], math.nan, 0.5)


def test_accuracy_is_exactly_hits_over_n() -> None:
    """355 hits of 360 is 355 / 360 as Python divides them: float32 would store
    0.98611110448837 (in the study database, and every output after it)."""
    labels = torch.zeros(360, dtype=torch.long)
    logits = torch.zeros(360, 2)
    logits[355:, 1] = 1.0  # the last five are wrong
    value = metric_value(METRICS["accuracy"], logits, labels)
    assert value.item() == 355 / 360
    assert float(torch.stack([torch.tensor(0.5), value])[1]) == 355 / 360  # as train reads it


def test_fused_accuracy_is_exactly_hits_over_n() -> None:
    from tuner.fused._metrics import member_metric

    target = torch.zeros(360, dtype=torch.long)
    output = torch.zeros(3, 360, 2)  # [members, samples, classes]
    for k, wrong in enumerate((0, 5, 7)):
        output[k, :wrong, 1] = 1.0
    values = member_metric(METRICS["accuracy"], output, target).tolist()
    assert values == [1.0, 355 / 360, 353 / 360]
