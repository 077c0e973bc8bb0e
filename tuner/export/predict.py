"""Predictions of an exported model for a file of raw features (``tuner predict``).

>>> x = read_features("new.csv", names=["a", "b"], n_features=2)   # doctest: +SKIP
>>> predict_rows(load_model("best.pt"), x)                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuner.data.reading import check_file, read_npz, read_table
from tuner.errors import DataError
from tuner.export.model_file import ExportedModel


def read_features(path: str | Path, names: Sequence[str], n_features: int,
                  chosen: Sequence[str] | None = None) -> np.ndarray:
    """The feature matrix of a CSV, Parquet or NPZ file, in the model's column order.

    With the model's feature ``names`` (a study on your own table), those columns are
    read by name; otherwise (``chosen`` columns, or every column) there must be exactly
    ``n_features`` numeric ones.
    """
    source = Path(path)
    suffix = source.suffix.lower()
    if suffix == ".npz":
        archive = read_npz(source)
        key = next((k for k in ("x", "X", "x_test") if k in archive), None)
        if key is None:
            raise DataError(f"--data {path}: an .npz needs an array 'x'; it has: "
                            f"{', '.join(archive)}")
        x = archive[key]
        x = x.reshape(len(x), -1) if x.ndim != 1 else x[:, None]
        columns: list[str] = []
    elif suffix in (".csv", ".parquet", ".pq"):
        import pandas as pd

        frame = read_table(source)
        frame.columns = [str(c) for c in frame.columns]
        wanted = list(chosen or names or frame.columns)
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise DataError(f"--data {path}: the model reads column {missing[0]!r}, which the file "
                            f"does not have (columns: {', '.join(frame.columns)})")
        non_numeric = [c for c in wanted if not pd.api.types.is_numeric_dtype(frame[c])]
        if non_numeric:
            raise DataError(f"--data {path}: feature column {non_numeric[0]!r} is not numeric "
                            f"(dtype {frame[non_numeric[0]].dtype})")
        x, columns = frame[wanted].to_numpy(dtype=np.float64), wanted
    else:
        check_file(source)  # a missing file is that, whatever its name
        raise DataError(f"--data {path}: unsupported file type {suffix!r}; expected .csv, .npz "
                        "or .parquet")
    if x.shape[1] != n_features:
        hint = "; pick them with --features" if columns else ""
        raise DataError(f"--data {path}: the model takes {n_features} features, but the file "
                        f"has {x.shape[1]}{hint}")
    if x.dtype.kind not in "biuf" or np.isnan(x.astype(np.float64)).any():
        raise DataError(f"--data {path}: features must be numeric with no NaN values")
    return x.astype(np.float64)


def predict_rows(model: ExportedModel, x: np.ndarray, batch_size: int = 8192) -> list[Any]:
    """Labels (as in the training data) or regression values, one per row."""
    out: list[Any] = []
    for i in range(0, len(x), batch_size):
        out.extend(model.predict(x[i:i + batch_size]))
    return out


def probability_rows(model: ExportedModel, x: np.ndarray, batch_size: int = 8192
                     ) -> tuple[list[Any], list[Any], list[list[float]]]:
    """The class labels (one per column), each row's predicted label (the most probable,
    as :func:`predict_rows` gives it) and its probability of each class."""
    if model.task == "regression":
        raise DataError("--proba: the model is a regression; it predicts values, not classes")
    rows: list[list[float]] = []
    index: list[int] = []
    for i in range(0, len(x), batch_size):
        probabilities = model.predict_proba(x[i:i + batch_size])
        rows.extend(probabilities.tolist())
        index.extend(probabilities.argmax(dim=-1).tolist())
    n = len(rows[0]) if rows else len(model.classes or ())
    labels = list(model.classes) if model.classes is not None else list(range(n))
    return labels, [labels[i] for i in index], rows
