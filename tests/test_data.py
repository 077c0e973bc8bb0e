"""Splits and standardization of the built-in datasets, checked against the raw arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import datasets as skd

from tuner.data.builtin import DATASETS, Splits, load_splits, split_arrays
from tuner.errors import DataError, TunerError


def _raw_rows(splits: Splits, part: str) -> np.ndarray:
    """A split's features mapped back to the original units."""
    x = getattr(splits, f"x_{part}")
    return (x * splits.x_std + splits.x_mean).double().numpy()


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_iris_splits_are_60_20_20_and_stratified() -> None:
    splits = load_splits("iris", seed=0)

    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (90, 30, 30)
    # Iris has 50 flowers per class: stratification gives exactly 30 / 10 / 10.
    assert torch.bincount(splits.y_train).tolist() == [30, 30, 30]
    assert torch.bincount(splits.y_val).tolist() == [10, 10, 10]
    assert torch.bincount(splits.y_test).tolist() == [10, 10, 10]


def test_wine_splits_keep_class_proportions() -> None:
    _, y = skd.load_wine(return_X_y=True)
    splits = load_splits("wine", seed=3)
    counts = np.bincount(y)

    sizes = [len(splits.y_train), len(splits.y_val), len(splits.y_test)]
    assert sum(sizes) == len(y)
    for size, fraction in zip(sizes, (0.6, 0.2, 0.2), strict=True):
        assert abs(size - fraction * len(y)) <= 1
    for part, fraction in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        got = torch.bincount(getattr(splits, f"y_{part}"), minlength=3).numpy()
        assert np.all(np.abs(got - fraction * counts) <= 1.5), (part, got)


def test_tabular_features_are_standardized_per_feature_on_train() -> None:
    splits = load_splits("wine", seed=0)
    x = splits.x_train.double()

    torch.testing.assert_close(x.mean(dim=0), torch.zeros(13, dtype=torch.float64),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(x.std(dim=0, unbiased=False), torch.ones(13, dtype=torch.float64),
                               rtol=0, atol=1e-5)
    # Validation is scaled with the train statistics, not its own.
    assert not torch.allclose(splits.x_val.double().mean(dim=0), torch.zeros(13,
                              dtype=torch.float64), atol=1e-3)


def test_splits_partition_the_dataset_and_use_train_statistics_everywhere() -> None:
    x, _ = skd.load_wine(return_X_y=True)
    splits = load_splits("wine", seed=0)

    parts = [_raw_rows(splits, part) for part in ("train", "val", "test")]
    train_raw = parts[0]
    np.testing.assert_allclose(splits.x_mean.double().numpy(), train_raw.mean(axis=0),
                               rtol=1e-5)
    np.testing.assert_allclose(splits.x_std.double().numpy(), train_raw.std(axis=0), rtol=1e-5)
    # Undoing the standardization of every split with the train statistics gives back
    # exactly the original rows, each once.
    np.testing.assert_allclose(_sorted_rows(np.concatenate(parts)), _sorted_rows(x),
                               rtol=1e-5, atol=1e-4)


def test_digits_are_standardized_with_one_scalar() -> None:
    splits = load_splits("digits", seed=0)

    assert splits.image_shape == (1, 8, 8)
    assert splits.n_outputs == 10
    assert splits.n_features == 64
    assert torch.all(splits.x_mean == splits.x_mean[0])
    assert torch.all(splits.x_std == splits.x_std[0])
    x = splits.x_train.double()
    assert abs(x.mean().item()) < 1e-5
    assert x.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    # One scalar, so the per-pixel statistics are not normalized: border pixels stay apart.
    assert x.mean(dim=0).abs().max().item() > 0.5


def test_same_seed_same_split_different_seed_different_split() -> None:
    x, y = skd.load_iris(return_X_y=True)

    a = split_arrays(x, y, "classification", seed=7)
    b = split_arrays(x, y, "classification", seed=7)
    c = split_arrays(x, y, "classification", seed=8)

    for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, part), getattr(b, part))
    assert not torch.equal(_sorted_tensor(a.x_test, a), _sorted_tensor(c.x_test, c))


def _sorted_tensor(x: torch.Tensor, splits: Splits) -> torch.Tensor:
    return torch.from_numpy(_sorted_rows((x * splits.x_std + splits.x_mean).double().numpy()))


def test_regression_targets_are_standardized_on_train_and_recorded() -> None:
    _, y = skd.load_diabetes(return_X_y=True)
    splits = load_splits("diabetes", seed=0)

    assert splits.task == "regression"
    assert splits.n_outputs == 1
    assert splits.y_train.dtype == torch.float32
    y_train = splits.y_train.double()
    assert abs(y_train.mean().item()) < 1e-5
    assert y_train.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert splits.y_std == pytest.approx(float(np.std(y)), rel=0.2)
    assert splits.y_std != pytest.approx(1.0)
    # Undone with the recorded y_mean / y_std, every split gives back the raw targets.
    raw = np.concatenate([getattr(splits, f"y_{p}").double().numpy() * splits.y_std
                          + splits.y_mean for p in ("train", "val", "test")])
    np.testing.assert_allclose(np.sort(raw), np.sort(y), rtol=1e-5, atol=1e-3)


def test_class_labels_become_indices() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = np.repeat(np.array([10, 20, 30]), 20)

    splits = split_arrays(x, y, "classification", seed=0)

    assert splits.n_outputs == 3
    assert splits.y_train.dtype == torch.long
    assert set(torch.cat([splits.y_train, splits.y_val, splits.y_test]).tolist()) == {0, 1, 2}


def test_constant_feature_does_not_produce_nan() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=50), np.full(50, 4.0)])
    y = rng.normal(size=50)

    splits = split_arrays(x, y, "regression", seed=0)

    assert torch.isfinite(splits.x_train).all()
    assert torch.all(splits.x_train[:, 1] == 0)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_builtin_dataset_loads_with_the_right_outputs(name: str) -> None:
    info = DATASETS[name]
    x, y = info.load(0, 200, 6)

    splits = load_splits(name, seed=0, n_samples=200, n_features=6)

    assert splits.task == info.task
    assert splits.n_features == x.shape[1]
    expected_outputs = len(np.unique(y)) if info.task == "classification" else 1
    assert splits.n_outputs == expected_outputs
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == len(y)
    assert abs(len(splits.y_train) - 0.6 * len(y)) <= 2  # two rounded splits
    assert splits.x_train.dtype == torch.float32
    if info.task == "classification":
        labels = torch.cat([splits.y_train, splits.y_val, splits.y_test])
        assert labels.min().item() == 0
        assert labels.max().item() == splits.n_outputs - 1


def test_synthetic_datasets_follow_the_requested_size() -> None:
    splits = load_splits("regression", seed=1, n_samples=150, n_features=5)

    assert splits.n_features == 5
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 150


def test_synthetic_classification_with_one_feature_loads() -> None:
    # The search space allows task.n_features >= 1: "of any size".
    splits = load_splits("classification", seed=0, n_samples=200, n_features=1)

    assert splits.n_features == 1
    assert splits.n_outputs >= 2
    labels = torch.cat([splits.y_train, splits.y_val, splits.y_test])
    assert torch.unique(labels).numel() == splits.n_outputs


def test_too_few_samples_to_stratify_is_a_data_error() -> None:
    # 10 samples of 4 classes cannot give every class a place in a 2-sample test split:
    # the user must get one clear DataError, not scikit-learn's ValueError.
    x = np.arange(20.0).reshape(10, 2)
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])

    with pytest.raises(DataError):
        split_arrays(x, y, "classification", seed=0)


def test_unknown_dataset_is_a_data_error_naming_it() -> None:
    with pytest.raises(DataError, match="'mnist'") as info:
        load_splits("mnist", seed=0)
    assert isinstance(info.value, TunerError)
