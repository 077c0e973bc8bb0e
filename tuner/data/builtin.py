"""Built-in datasets, split train / validation / test and standardized on the train split.

The splits are plain tensors; :func:`load_splits` moves them to the device once per
process and caches them, so every trial of a worker reuses the same device copy.

Every split is scikit-learn's ``train_test_split``, and the built-in datasets are its
loaders and generators. Their answers are kept on disk (:mod:`tuner.data.cache`), keyed
by the dataset, its size and seed where they apply, and the versions of scikit-learn and
NumPy that computed them, so that a later run reads the same arrays back without
importing scikit-learn (0.7 s of a short run's start-up).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tuner.catalogue import DATASET_NAMES
from tuner.data import cache
from tuner.errors import DataError

if TYPE_CHECKING:
    from tuner.data.datasets import DatasetSplits

ArrayPair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class DatasetInfo:
    task: str  # "classification" or "regression"
    load: Callable[[int, int, int], ArrayPair]  # (seed, n_samples, n_features) -> X, y
    image_shape: tuple[int, int, int] | None = None
    description: str = ""
    aux: Callable[[np.ndarray], np.ndarray] | None = None  # built-in auxiliary target
    synthetic: bool = False  # drawn with the seed, of the size asked (else a fixed table)


def _coarse_image(x: np.ndarray) -> np.ndarray:
    """Digits' auxiliary task: the 8x8 image averaged down to 4x4 (16 values to predict)."""
    return x.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(len(x), 16)


def _sklearn(loader: str) -> Callable[[int, int, int], ArrayPair]:
    def load(seed: int, n_samples: int, n_features: int) -> ArrayPair:
        from sklearn import datasets as skd

        x, y = getattr(skd, loader)(return_X_y=True)
        return x, y
    return load


def _synthetic_classification(seed: int, n_samples: int, n_features: int) -> ArrayPair:
    from sklearn import datasets as skd

    informative = max(1, min(n_features, n_features // 2 + 1))
    classes = 4 if informative >= 2 else 2
    return skd.make_classification(n_samples=n_samples, n_features=n_features,
                                   n_informative=informative, n_redundant=0,
                                   n_classes=classes, n_clusters_per_class=1,
                                   flip_y=0.02, random_state=seed)


def _synthetic_regression(seed: int, n_samples: int, n_features: int) -> ArrayPair:
    from sklearn import datasets as skd

    x, y = skd.make_regression(n_samples=n_samples, n_features=n_features,
                               n_informative=max(1, n_features // 2), noise=10.0,
                               random_state=seed)
    return x, y


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("classification", _sklearn("load_digits"), (1, 8, 8),
                          "8x8 handwritten digits, 1797 images, 10 classes",
                          aux=_coarse_image),
    "wine": DatasetInfo("classification", _sklearn("load_wine"),
                        description="178 wines, 13 features, 3 classes"),
    "breast_cancer": DatasetInfo("classification", _sklearn("load_breast_cancer"),
                                 description="569 tumours, 30 features, 2 classes"),
    "iris": DatasetInfo("classification", _sklearn("load_iris"),
                        description="150 flowers, 4 features, 3 classes"),
    "diabetes": DatasetInfo("regression", _sklearn("load_diabetes"),
                            description="442 patients, 10 features, disease progression"),
    "classification": DatasetInfo("classification", _synthetic_classification,
                                  description="synthetic, any size (task.n_samples, n_features)",
                                  synthetic=True),
    "regression": DatasetInfo("regression", _synthetic_regression,
                              description="synthetic, any size (task.n_samples, n_features)",
                              synthetic=True),
}


@dataclass(frozen=True)
class Splits:
    """Train / validation / test tensors plus what is needed to undo preprocessing."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str
    n_outputs: int  # classes, or 1 for regression
    image_shape: tuple[int, int, int] | None
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: float = 0.0
    y_std: float = 1.0  # regression targets are standardized; metrics are scaled back
    classes: tuple[Any, ...] | None = None  # the original labels, by class index
    # An auxiliary target for multi-task regularization (see the `aux_weight` parameter).
    aux_train: torch.Tensor | None = None
    aux_val: torch.Tensor | None = None
    aux_test: torch.Tensor | None = None
    aux_task: str | None = None
    aux_outputs: int = 0

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n_features,)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    @property
    def in_memory(self) -> bool:
        return True

    def describe(self) -> str:
        return f"arrays on {self.device} ({self.n_train} training rows x {self.n_features})"

    def has(self, split: str) -> bool:
        return True

    def with_workers(self, workers: int | None) -> Splits:
        """Loader processes are for Datasets: arrays on the device need none."""
        return self

    def train_batches(self, sizes: Sequence[int], seed: int, aux: bool = False) -> Iterator[
            tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """One epoch's batches, in a fresh random order drawn now from torch's generator
        (``seed`` is for the loader processes of Datasets: none here). One gather puts
        the samples in the epoch's order; batches are views of it."""
        order = torch.randperm(self.n_train, device=self.device)
        parts = list(sizes)
        with_aux = aux and self.aux_train is not None
        return zip(self.x_train[order].split(parts), self.y_train[order].split(parts),
                   self.aux_train[order].split(parts) if with_aux and self.aux_train is not None
                   else [None] * len(parts), strict=True)

    def outputs(self, model: torch.nn.Module, split: str,
                rows: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's outputs on a whole split (in the mode it is in), in large batches,
        and the split's targets."""
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        return torch.cat([model(x[i:i + rows]) for i in range(0, x.shape[0], rows)]), y

    def to(self, device: torch.device) -> Splits:
        moved = {f: getattr(self, f).to(device) for f in
                 ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "aux_train",
                  "aux_val", "aux_test") if getattr(self, f) is not None}
        return replace(self, **moved)


Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # train, validation, test


def split_rows(y: np.ndarray, task: str, seed: int,
               fractions: tuple[float, float] = (0.2, 0.2)) -> Rows:
    """The rows of the train / validation / test splits: scikit-learn's ``train_test_split``
    twice (test first, then validation from the rest), stratified for classification."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    stratify = y if task == "classification" else None
    val_frac, test_frac = fractions
    rows = np.arange(len(y))
    try:
        rest, test, y_rest, _ = train_test_split(
            rows, y, test_size=test_frac, random_state=seed, stratify=stratify)
        train, val = train_test_split(
            rest, test_size=val_frac / (1 - test_frac), random_state=seed,
            stratify=y_rest if stratify is not None else None)
    except ValueError as exc:
        raise DataError(f"cannot split {len(y)} samples into train/validation/test "
                        f"({1 - val_frac - test_frac:.0%}/{val_frac:.0%}/{test_frac:.0%}): "
                        f"{exc}") from None
    return train, val, test


def split_arrays(x: np.ndarray, y: np.ndarray, task: str, seed: int,
                 image_shape: tuple[int, int, int] | None = None,
                 fractions: tuple[float, float] = (0.2, 0.2),
                 aux: np.ndarray | None = None) -> Splits:
    """Split 60/20/20 (stratified for classification) and standardize on train only.

    ``aux``, an auxiliary target per sample, is split with the same rows.
    """
    return split_by_rows(x, y, split_rows(y, task, seed, fractions), task, image_shape, aux)


def split_by_rows(x: np.ndarray, y: np.ndarray, rows: Rows, task: str,
                  image_shape: tuple[int, int, int] | None = None,
                  aux: np.ndarray | None = None) -> Splits:
    """Split at the rows of :func:`split_rows` and standardize on train only."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    train, val, test = rows
    splits = standardize(x[train], y[train], x[val], y[val], x[test], y[test], task,
                         image_shape)
    if aux is None:
        return splits
    aux = np.asarray(aux)
    return with_aux(splits, aux[train], aux[val], aux[test])


def with_aux(splits: Splits, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> Splits:
    """Attach an auxiliary target: class labels, or values standardized on train."""
    from tuner.data.files import infer_task

    task = infer_task(np.concatenate([train, val, test]).reshape(-1)) if train.ndim == 1 \
        else "regression"
    if task == "classification":
        classes = np.unique(np.concatenate([train, val, test]))
        parts = [torch.as_tensor(np.searchsorted(classes, a), dtype=torch.long)
                 for a in (train, val, test)]
        outputs = len(classes)
    else:
        mean, std = train.mean(axis=0), train.std(axis=0)
        std = np.where(std == 0, 1.0, std)
        parts = [torch.as_tensor((a - mean) / std, dtype=torch.float32) for a in
                 (train, val, test)]
        outputs = 1 if train.ndim == 1 else train.shape[1]
    return replace(splits, aux_train=parts[0], aux_val=parts[1], aux_test=parts[2],
                   aux_task=task, aux_outputs=outputs)


def standardize(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                y_val: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, task: str,
                image_shape: tuple[int, int, int] | None = None) -> Splits:
    """Standardize features (and regression targets) with the training split's statistics."""
    x_train, x_val, x_test = (np.asarray(a, dtype=np.float64) for a in (x_train, x_val, x_test))
    y = np.concatenate([np.asarray(y_train), np.asarray(y_val), np.asarray(y_test)])
    if image_shape is not None:
        # One scalar for the whole image keeps the background uniform under shifts.
        mean = np.full(x_train.shape[1], x_train.mean())
        std = np.full(x_train.shape[1], x_train.std() or 1.0)
    else:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0

    def features(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((a - mean) / std, dtype=torch.float32)

    y_mean, y_std = 0.0, 1.0
    labels = None
    if task == "classification":
        classes = np.unique(y)
        labels = tuple(c.item() if hasattr(c, "item") else c for c in classes)
        n_outputs = len(classes)

        def targets(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.searchsorted(classes, a), dtype=torch.long)
    else:
        n_outputs = 1
        y_mean = float(np.mean(y_train))
        y_std = float(np.std(y_train) or 1.0)

        def targets(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor((a - y_mean) / y_std, dtype=torch.float32)

    return Splits(
        features(x_train), targets(y_train), features(x_val), targets(y_val),
        features(x_test), targets(y_test), task=task, n_outputs=n_outputs,
        image_shape=image_shape, x_mean=torch.as_tensor(mean, dtype=torch.float32),
        x_std=torch.as_tensor(std, dtype=torch.float32), y_mean=y_mean, y_std=y_std,
        classes=labels)


@functools.lru_cache(maxsize=4)
def load_splits(dataset: str, seed: int, device: str = "cpu", n_samples: int = 2000,
                n_features: int = 20) -> Splits:
    """A built-in dataset, split with ``seed``, on ``device`` (cached per process, and its
    arrays and split rows on disk: see the module's docstring)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; expected one of: {', '.join(DATASETS)}")
    info = DATASETS[dataset]
    x, y = builtin_arrays(dataset, seed, n_samples, n_features)
    rows = builtin_rows(dataset, seed, n_samples, n_features, y)
    aux = info.aux(np.asarray(x, dtype=np.float64)) if info.aux else None
    return split_by_rows(x, y, rows, info.task, info.image_shape, aux=aux).to(
        torch.device(device))


def builtin_arrays(dataset: str, seed: int, n_samples: int = 2000,
                   n_features: int = 20) -> ArrayPair:
    """A built-in dataset's features and targets as its loader gives them, read from the
    cache when a run with the same scikit-learn and NumPy computed them before."""
    info = DATASETS[dataset]
    key = _entry_key(dataset, seed, n_samples, n_features, info.synthetic)
    found = _cached(_entry_name(key), key, ("x", "y"), _check_arrays, lambda: dict(zip(
        ("x", "y"), info.load(seed, n_samples, n_features), strict=True)))
    return found["x"], found["y"]


def builtin_rows(dataset: str, seed: int, n_samples: int, n_features: int, y: np.ndarray,
                 fractions: tuple[float, float] = (0.2, 0.2)) -> Rows:
    """The rows of :func:`split_rows` for a built-in dataset whose targets are ``y`` (from
    :func:`builtin_arrays`), read from the cache as :func:`builtin_arrays` reads."""
    key = {**_entry_key(dataset, seed, n_samples, n_features, True),
           "split": f"{fractions[0]}-{fractions[1]}"}
    found = _cached(_entry_name(key), key, ("train", "val", "test"),
                    lambda arrays: _check_rows(arrays, len(y)),
                    lambda: dict(zip(("train", "val", "test"),
                                     split_rows(y, DATASETS[dataset].task, seed, fractions),
                                     strict=True)))
    return found["train"], found["val"], found["test"]


def _entry_key(dataset: str, seed: int, n_samples: int, n_features: int,
               seeded: bool) -> dict[str, object]:
    """What an entry is computed from: the size where the dataset has one, the seed where
    it is drawn with one (``seeded``), the versions that computed it."""
    key: dict[str, object] = {"dataset": dataset}
    if DATASETS[dataset].synthetic:
        key |= {"n_samples": n_samples, "n_features": n_features}
    if seeded:
        key["seed"] = seed
    return key | _versions()


def _entry_name(key: dict[str, object]) -> str:
    """``sklearn-1.9.1.numpy-2.4.6/digits.seed-0.split-0.2-0.2.npz``, say: one folder a pair
    of versions (the older ones can go), the rest of the key in the file's name."""
    name = ".".join([str(key["dataset"])] + [
        f"{short}-{key[part]}" for part, short in (
            ("n_samples", "n"), ("n_features", "f"), ("seed", "seed"), ("split", "split"))
        if part in key])
    return f"sklearn-{key['scikit-learn']}.numpy-{key['numpy']}/{name}.npz"


def _versions() -> dict[str, str]:
    """What computes the arrays, known without importing scikit-learn: another version's
    loaders and splits could answer otherwise, so its entries are others."""
    try:
        sklearn = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        sklearn = "none"
    return {"scikit-learn": sklearn, "numpy": np.__version__}


def _cached(relpath: str, key: dict[str, object], names: tuple[str, ...],
            check: Callable[[cache.Arrays], str | None],
            compute: Callable[[], cache.Arrays]) -> cache.Arrays:
    found = cache.read_entry(relpath, key, names, check)
    if found is not None:
        return found
    arrays = compute()
    # Written only when the scikit-learn that computed it is the installed one that names
    # the entry (a path can put another first).
    if getattr(sys.modules.get("sklearn"), "__version__", None) == key["scikit-learn"]:
        cache.write_entry(relpath, key, arrays)
    return arrays


def _check_arrays(arrays: cache.Arrays) -> str | None:
    x, y = arrays["x"], arrays["y"]
    if (x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or x.dtype.kind != "f"
            or y.dtype.kind not in "iuf"):
        return (f"holds features of shape {list(x.shape)} ({x.dtype}) and targets of shape "
                f"{list(y.shape)} ({y.dtype}), not a row of floats a target")
    return None


def _check_rows(arrays: cache.Arrays, n: int) -> str | None:
    rows = [arrays[part] for part in ("train", "val", "test")]
    if any(r.ndim != 1 or r.dtype.kind not in "iu" for r in rows) or not np.array_equal(
            np.sort(np.concatenate(rows)), np.arange(n)):
        return f"holds split rows that are not a partition of the dataset's {n} rows"
    return None


@functools.lru_cache(maxsize=4)
def load_user_splits(source: str, seed: int, device: str = "cpu", target: str | None = None,
                     kind: str | None = None, features: tuple[str, ...] | None = None,
                     aux_target: str | None = None,
                     where: str | None = None) -> Splits | DatasetSplits:
    """User data (see :mod:`tuner.data.files`), split with ``seed`` unless it comes split;
    Datasets (see :mod:`tuner.data.datasets`) as they are. ``where`` is the directory a
    relative ``source`` is read from (default: the current one): cached reads of one
    directory are not another's."""
    from tuner.data.files import UserArrays

    arrays = _read_user(source, target, kind, features, aux_target, where or os.getcwd())
    if not isinstance(arrays, UserArrays):
        return arrays.to(torch.device(device))
    if arrays.split is not None:
        x_val, y_val, x_test, y_test = arrays.split
        splits = standardize(arrays.x, arrays.y, x_val, y_val, x_test, y_test, arrays.task)
    else:
        splits = split_arrays(arrays.x, arrays.y, arrays.task, seed, aux=arrays.aux)
    return splits.to(torch.device(device))


# The user's data as read, by (source, target, features, aux target, directory): the
# kind given (None: inferred) and what was read. At most this many are kept.
_READS: dict[tuple[Any, ...], tuple[str | None, Any]] = {}
_KEEP_READS = 2


def _read_user(source: str, target: str | None, kind: str | None,
               features: tuple[str, ...] | None, aux_target: str | None, where: str) -> Any:
    """The user's data as read, once per process whatever the seeds it is split with: a
    data function of yours runs once, Datasets' labels are scanned once. A read whose
    kind was inferred serves a request for that kind (the space records the inferred
    kind, a check before it asks with none)."""
    from tuner.data.files import DataSpec, read_user_data

    key = (source, target, features, aux_target, where)
    if key in _READS:
        given, read = _READS[key]
        if given == kind or (given is None and read.task == kind):
            return read
    read = read_user_data(DataSpec(source, target, kind, features, aux_target))
    _READS.pop(key, None)
    while len(_READS) >= _KEEP_READS:
        _READS.pop(next(iter(_READS)))
    _READS[key] = (kind, read)
    return read


def load_task_data(task: Any, seed: int, device: str = "cpu") -> Splits | DatasetSplits:
    """The data a search space's task names: a built-in dataset or the user's own."""
    if getattr(task, "data", None):
        return load_user_splits(task.data, seed, device, task.target, task.kind,
                                task.features, task.aux_target, os.getcwd())
    return load_splits(task.dataset, seed, device, task.n_samples, task.n_features)


if tuple(DATASETS) != DATASET_NAMES:  # pragma: no cover - a programming error, caught in tests
    raise RuntimeError("tuner.data.builtin.DATASETS and the catalogue's DATASET_NAMES disagree")
