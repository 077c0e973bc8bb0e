"""Your own data: CSV, NPZ or Parquet files, or a Python function that returns arrays
(or torch Datasets: see :mod:`tuner.data.datasets`).

>>> spec = DataSpec("examples/data.csv", target="label")      # doctest: +SKIP
>>> x, y, splits = read_user_data(spec)                       # doctest: +SKIP

Every problem is a :class:`~tuner.errors.DataError` that names the file, the column
and the rule: a missing file or target column, non-numeric features, NaNs, a target
with a single class. The files themselves are read by :mod:`tuner.data.reading`, which
trusts nothing in them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.data.reading import check_file, read_npz, read_table
from tuner.errors import DataError
from tuner.usercode import import_reference, is_reference

if TYPE_CHECKING:
    from tuner.data.datasets import DatasetSplits

SPLIT_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


@dataclass(frozen=True)
class DataSpec:
    """Where user data comes from and which column is the target."""

    source: str  # a file path, or "package.module:function" / "file.py:function"
    target: str | None = None
    task: str | None = None  # classification | regression; inferred when None
    features: tuple[str, ...] | None = None
    aux_target: str | None = None


@dataclass(frozen=True)
class UserArrays:
    x: np.ndarray
    y: np.ndarray
    task: str
    aux: np.ndarray | None = None
    # A predefined split: (x_val, y_val, x_test, y_test), the rest being training data.
    split: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    feature_names: tuple[str, ...] = ()


def read_user_data(spec: DataSpec) -> UserArrays | DatasetSplits:
    """Load, check and return the arrays ``spec`` names (or the Datasets its function
    returned, see :mod:`tuner.data.datasets`)."""
    if is_reference(spec.source):
        return _from_function(spec)
    path = Path(spec.source)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _from_npz(path, spec)
    if suffix in (".csv", ".parquet", ".pq"):
        return _from_table(path, spec)
    check_file(path)  # a missing file is that, whatever its name
    raise DataError(f"unsupported file type {suffix!r}; expected .csv, .npz or .parquet",
                    spec.source)


def _from_table(path: Path, spec: DataSpec) -> UserArrays:
    import pandas as pd

    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if spec.target is None:
        raise DataError(f"name the target column with --target (columns: "
                        f"{', '.join(columns)})", str(path))
    for name, flag in ((spec.target, "--target"), (spec.aux_target, "--aux-target")):
        if name is not None and name not in columns:
            raise DataError(f"{flag} column {name!r} does not exist (columns: "
                            f"{', '.join(columns)})", str(path))
    exclude = {spec.target, spec.aux_target}
    features = list(spec.features) if spec.features else [c for c in columns if c not in exclude]
    missing = [f for f in features if f not in columns]
    if missing:
        raise DataError(f"--features column {missing[0]!r} does not exist", str(path))
    non_numeric = [f for f in features if not pd.api.types.is_numeric_dtype(frame[f])]
    if non_numeric:
        raise DataError(f"feature column {non_numeric[0]!r} is not numeric (dtype "
                        f"{frame[non_numeric[0]].dtype}); encode it or leave it out with "
                        "--features", str(path))
    x = frame[features].to_numpy(dtype=np.float64)
    y = frame[spec.target].to_numpy()
    aux = frame[spec.aux_target].to_numpy() if spec.aux_target else None
    return _checked(str(path), x, y, aux, spec.task, None, tuple(features))


def _from_npz(path: Path, spec: DataSpec) -> UserArrays:
    arrays = read_npz(path)
    if all(k in arrays for k in SPLIT_KEYS):
        return _split_arrays(str(path), arrays, spec)
    x_key = next((k for k in ("x", "X") if k in arrays), None)
    y_key = spec.target or "y"
    if x_key is None or y_key not in arrays:
        raise DataError(f"an .npz needs arrays 'x' and {y_key!r} (or x_train, y_train, "
                        f"x_val, y_val, x_test, y_test); it has: {', '.join(arrays)}",
                        str(path))
    aux = arrays.get(spec.aux_target) if spec.aux_target else None
    if spec.aux_target and aux is None:
        raise DataError(f"--aux-target array {spec.aux_target!r} does not exist", str(path))
    return _checked(str(path), arrays[x_key], arrays[y_key], aux, spec.task, None, ())


def _from_function(spec: DataSpec) -> UserArrays | DatasetSplits:
    function = import_reference(spec.source, "--data")
    try:
        result = function()
    except Exception as exc:  # the user's code: one line, its own words
        raise DataError(f"the function raised {type(exc).__name__}: {exc}",
                        spec.source) from None
    if isinstance(result, (tuple, list)) and result and _is_dataset(result[0]):
        from tuner.data.datasets import dataset_splits

        for key, what in ((spec.target, "--target"), (spec.features, "--features"),
                          (spec.aux_target, "--aux-target")):
            if key:
                raise DataError(f"{what} names a column of a table; Datasets give (x, y) "
                                "items", spec.source)
        return dataset_splits(spec.source, result, spec.task)
    if isinstance(result, Mapping):
        if all(k in result for k in SPLIT_KEYS):
            return _split_arrays(spec.source, {k: _numpy(v) for k, v in result.items()}, spec)
        if "x" in result and "y" in result:
            aux = result.get("aux")
            return _checked(spec.source, _numpy(result["x"]), _numpy(result["y"]),
                            None if aux is None else _numpy(aux), spec.task, None, ())
    if isinstance(result, tuple) and len(result) in (2, 3):
        aux = _numpy(result[2]) if len(result) == 3 else None
        return _checked(spec.source, _numpy(result[0]), _numpy(result[1]), aux, spec.task, None,
                        ())
    raise DataError(f"the function must return (x, y), (x, y, aux), or a dict with x/y or "
                    f"{', '.join(SPLIT_KEYS)}; got {type(result).__name__}", spec.source)


def _is_dataset(value: Any) -> bool:
    """A torch Dataset (torch is loaded by then: the tuner trains with it)."""
    from torch.utils.data import Dataset

    return isinstance(value, Dataset)


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _split_arrays(source: str, arrays: Mapping[str, np.ndarray], spec: DataSpec) -> UserArrays:
    checked = _checked(source, arrays["x_train"], arrays["y_train"], None, spec.task, None, ())
    for part in ("val", "test"):
        _checked(source, arrays[f"x_{part}"], arrays[f"y_{part}"], None, checked.task, None, (),
                 min_rows=1)
    return UserArrays(checked.x, checked.y, checked.task, None,
                      (np.asarray(arrays["x_val"], dtype=np.float64), arrays["y_val"],
                       np.asarray(arrays["x_test"], dtype=np.float64), arrays["y_test"]))


def infer_task(y: np.ndarray) -> str:
    """Classification for labels (strings, booleans, or few distinct integers)."""
    if y.dtype.kind in "OUSb":
        return "classification"
    if y.dtype.kind in "iu" and len(np.unique(y)) <= max(20, int(len(y) ** 0.5)):
        return "classification"
    return "regression"


def _missing(y: np.ndarray) -> int:
    """How many targets are missing: NaN in a float column, None or NaN in an object one."""
    if y.dtype.kind == "f":
        return int(np.isnan(y).sum())
    if y.dtype.kind == "O":  # strings, with None, NaN or pandas' NA where a cell is empty
        import pandas as pd

        return int(pd.isna(y).sum())
    return 0


def _checked(source: str, x: np.ndarray, y: np.ndarray, aux: np.ndarray | None,
             task: str | None, split: Any, names: tuple[str, ...],
             min_rows: int = 10) -> UserArrays:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        x = x.reshape(len(x), -1)
    if x.dtype.kind not in "biuf":
        raise DataError(f"features must be numeric, but got dtype {x.dtype}", source)
    x = x.astype(np.float64)
    if len(x) != len(y):
        raise DataError(f"{len(x)} feature rows but {len(y)} targets", source)
    if len(x) < min_rows:
        raise DataError(f"at least {min_rows} rows are needed, but got {len(x)}", source)
    bad = ~np.isfinite(x).all(axis=0)
    if bad.any():
        index = int(np.argmax(bad))
        column = names[index] if names else f"#{index}"
        nan = int(np.isnan(x[:, index]).sum())
        inf = int(np.isinf(x[:, index]).sum())
        found = " and ".join(f"{n} {kind} value(s)" for n, kind in ((nan, "NaN"), (inf, "infinite"))
                             if n)
        raise DataError(f"feature column {column} has {found}; fill or drop them first",
                        source)
    missing = _missing(y)
    if missing:
        raise DataError(f"the target has {missing} missing value(s) (NaN or empty); fill "
                        "or drop those rows first", source)
    task = task or infer_task(y)
    if task not in ("classification", "regression"):
        raise DataError(f"--task: expected classification or regression, but got {task!r}")
    if task == "classification" and len(np.unique(y)) < 2 and min_rows > 1:
        raise DataError(f"the target has a single class ({np.unique(y)[0]!r}); "
                        "classification needs at least two", source)
    if task == "regression" and y.dtype.kind not in "biuf":
        raise DataError(f"a regression target must be numeric, but got dtype {y.dtype}",
                        source)
    return UserArrays(x, y, task, aux, split, names)
