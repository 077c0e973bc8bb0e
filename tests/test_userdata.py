"""User data files and functions: each format, and each way they can be wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tuner.errors import DataError
from tuner.userdata import DataSpec, infer_task, is_reference, read_user_data


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 60
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                         "c": rng.integers(0, 5, size=n),
                         "label": np.where(rng.normal(size=n) > 0, "yes", "no"),
                         "aux": rng.normal(size=n)})


def test_csv_reads_features_target_and_aux(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    got = read_user_data(DataSpec(str(path), target="label", aux_target="aux"))
    assert got.task == "classification"
    assert got.feature_names == ("a", "b", "c")
    np.testing.assert_allclose(got.x, frame[["a", "b", "c"]].to_numpy())
    assert list(got.y) == list(frame["label"])
    np.testing.assert_allclose(got.aux, frame["aux"].to_numpy())


def test_parquet_and_features_subset(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    got = read_user_data(DataSpec(str(path), target="a", features=("b", "c")))
    assert got.task == "regression"
    np.testing.assert_allclose(got.x, frame[["b", "c"]].to_numpy())


def test_npz_flat_and_presplit(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 2, size=40)
    np.savez(tmp_path / "flat.npz", x=x, y=y)
    flat = read_user_data(DataSpec(str(tmp_path / "flat.npz")))
    np.testing.assert_allclose(flat.x, x)
    assert flat.task == "classification" and flat.split is None
    np.savez(tmp_path / "split.npz", x_train=x, y_train=y, x_val=x[:5], y_val=y[:5],
             x_test=x[5:9], y_test=y[5:9])
    pre = read_user_data(DataSpec(str(tmp_path / "split.npz")))
    assert pre.split is not None
    np.testing.assert_allclose(pre.split[2], x[5:9])


def test_function_reference_returning_tensors(tmp_path: Path) -> None:
    module = tmp_path / "mydata.py"
    module.write_text("import torch\n"
                      "def load():\n"
                      "    g = torch.Generator().manual_seed(0)\n"
                      "    return torch.randn(30, 4, generator=g), torch.arange(30) % 3\n")
    ref = f"{module}:load"
    assert is_reference(ref)
    got = read_user_data(DataSpec(ref))
    assert got.x.shape == (30, 4) and got.task == "classification"
    assert sorted(set(got.y.tolist())) == [0, 1, 2]


@pytest.mark.parametrize(("spec_kwargs", "content", "match"), [
    ({"target": "nope"}, None, "--target column 'nope' does not exist"),
    ({"target": "label", "features": ("a", "zz")}, None, "--features column 'zz'"),
    ({}, None, "name the target column with --target"),
])
def test_csv_column_errors(tmp_path: Path, frame: pd.DataFrame, spec_kwargs: dict[str, object],
                           content: object, match: str) -> None:
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=match):
        read_user_data(DataSpec(str(path), **spec_kwargs))  # type: ignore[arg-type]


def test_non_numeric_feature_is_named(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame["colour"] = "red"
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="feature column 'colour' is not numeric"):
        read_user_data(DataSpec(str(path), target="label"))


def test_nan_feature_is_named(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.loc[3, "b"] = np.nan
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="feature column b has 1 NaN"):
        read_user_data(DataSpec(str(path), target="label"))


def test_infinite_feature_is_named(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.loc[3, "a"] = np.inf
    frame.loc[5, "a"] = -np.inf
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="feature column a has 2 infinite value"):
        read_user_data(DataSpec(str(path), target="label"))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_missing_string_target_is_refused(tmp_path: Path, frame: pd.DataFrame,
                                            suffix: str) -> None:
    frame.loc[[4, 9], "label"] = None
    path = tmp_path / f"d{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    with pytest.raises(DataError, match="the target has 2 missing value"):
        read_user_data(DataSpec(str(path), target="label"))


def test_single_class_is_refused(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame["label"] = "yes"
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="single class"):
        read_user_data(DataSpec(str(path), target="label", task="classification"))


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_user_data(DataSpec(str(tmp_path / "missing.csv"), target="y"))
    other = tmp_path / "d.txt"
    other.write_text("1,2\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        read_user_data(DataSpec(str(other), target="y"))


def test_function_errors_are_one_line(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("def load():\n    raise RuntimeError('no disk')\n"
                      "def wrong():\n    return 42\n")
    with pytest.raises(DataError, match="RuntimeError: no disk"):
        read_user_data(DataSpec(f"{module}:load"))
    with pytest.raises(DataError, match="must return"):
        read_user_data(DataSpec(f"{module}:wrong"))
    with pytest.raises(DataError, match="has no function 'absent'"):
        read_user_data(DataSpec(f"{module}:absent"))


@pytest.mark.parametrize(("source", "message"), [
    ("def load(:\n", r"cannot import .*: invalid syntax \(broken\.py, line 1\)"),
    ("raise ValueError('not configured')\n", "cannot import .*: ValueError: not configured"),
    ("import no_such_module_xyz\n", "cannot import .*: No module named 'no_such_module_xyz'"),
])
def test_a_file_that_fails_to_import_is_one_line(tmp_path: Path, source: str,
                                                  message: str) -> None:
    module = tmp_path / "broken.py"
    module.write_text(source)
    with pytest.raises(DataError, match=message):
        read_user_data(DataSpec(f"{module}:load"))
    assert "broken" not in sys.modules  # a half-run module does not stay behind


def test_infer_task() -> None:
    assert infer_task(np.array(["a", "b"])) == "classification"
    assert infer_task(np.arange(100) % 4) == "classification"
    assert infer_task(np.linspace(0, 1, 100)) == "regression"
