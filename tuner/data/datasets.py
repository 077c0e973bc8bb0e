"""Your data as torch Datasets, read through DataLoaders instead of moved to the device whole.

``--data my_data.py:load`` may return ``(train, val)`` or ``(train, val, test)``, each a
map-style ``torch.utils.data.Dataset`` whose items are ``(x, y)``: image folders, files
read lazily, anything larger than the device. Batches are drawn exactly as the
in-memory path draws them (one ``torch.randperm`` of the training set per epoch from
the trial's seeded generator, the same batch sizes), then collated, pinned and moved to
the device batch by batch.

Loader processes (``num_workers``): none when trials train on the CPU (they would take
cores from training); on a GPU, ``min(4, cores per GPU - 1)``, with pinned memory.
``engine: {loader_workers: N}`` in the space sets the number. They start with each epoch,
seeded from the trial's seed and the epoch (random transforms in ``__getitem__`` draw the
same in a rerun). Items' inputs keep their dtype for a network of yours (token ids stay
integers); the built-in models read them flattened, as floats.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from tuner.errors import DataError

# Input values held at once when evaluating (float32): 16 MiB a batch.
EVAL_VALUES = 1 << 22
EVAL_ROWS = 8192  # at most, as the in-memory path evaluates


def loader_workers(device: torch.device, requested: int | None = None) -> int:
    """How many loader processes feed trials on ``device`` (see the module's docstring)."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    per_gpu = cores // max(1, torch.cuda.device_count())
    return max(0, min(4, per_gpu - 1))


class _EpochOrder:
    """A DataLoader's batch sampler whose batches are set before each epoch, so that one
    loader serves every epoch and trial of a worker."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class DatasetSplits:
    """Train / validation (/ test) Datasets and what the tuner knows of them."""

    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any] | None
    task: str  # classification or regression
    n_outputs: int
    input_shape: tuple[int, ...]
    classes: tuple[Any, ...] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int | None = None  # loader processes; None: the rule of loader_workers
    _loaders: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    # What the in-memory Splits also have, for the code that reads both.
    aux_train = aux_val = aux_test = aux_task = None
    aux_outputs = 0
    y_mean, y_std = 0.0, 1.0

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        shape = self.input_shape
        return (shape[0], shape[1], shape[2]) if len(shape) == 3 else None

    @property
    def n_train(self) -> int:
        return len(self.train)  # type: ignore[arg-type]

    @property
    def in_memory(self) -> bool:
        return False

    def describe(self) -> str:
        workers = loader_workers(self.device, self.workers)
        pinned = ", pinned" if self.device.type == "cuda" else ""
        task = (f"{self.n_outputs} classes" if self.task == "classification"
                else "regression")
        return (f"Datasets through a DataLoader ({workers} loader process(es){pinned}; "
                f"{self.n_train} training items of shape {list(self.input_shape)}, {task})")

    def to(self, device: torch.device) -> DatasetSplits:
        return replace(self, device=device, _loaders={})

    def with_workers(self, workers: int | None) -> DatasetSplits:
        return self if workers == self.workers else replace(self, workers=workers, _loaders={})

    def _loader(self, split: str, batch_size: int | None) -> tuple[DataLoader[Any], Any]:
        key = (split, batch_size)
        if key not in self._loaders:
            workers = loader_workers(self.device, self.workers)
            # Not persistent: each epoch's processes take their seeds from the generator,
            # seeded for that epoch of that trial, so random transforms in your
            # __getitem__ draw the same in a rerun whatever ran before in the process.
            common: dict[str, Any] = dict(
                num_workers=workers, pin_memory=self.device.type == "cuda",
                generator=torch.Generator())
            if split == "train":
                order = _EpochOrder()
                loader = DataLoader(self.train, batch_sampler=order, **common)
            else:
                order = None
                loader = DataLoader(getattr(self, split), batch_size=batch_size,
                                    shuffle=False, **common)
            self._loaders[key] = (loader, order)
        return self._loaders[key]

    def _move(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        blocking = self.device.type != "cuda"
        x = x.to(self.device, torch.float32 if x.is_floating_point() else None,
                 non_blocking=not blocking)
        y = y.to(self.device, torch.long if self.task == "classification" else torch.float32,
                 non_blocking=not blocking)
        return x, y

    def train_batches(self, sizes: Sequence[int], seed: int,
                      aux: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, None]]:
        """One epoch's batches, in a fresh random order (drawn now, from torch's generator
        as the in-memory path draws it); ``seed`` seeds the loader processes."""
        order = torch.randperm(self.n_train)
        loader, sampler = self._loader("train", None)
        sampler.batches = [part.tolist() for part in order.split(list(sizes))]
        loader.generator.manual_seed(seed)
        return ((*self._move(batch), None) for batch in loader)

    def outputs(self, model: nn.Module, split: str,
                rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's outputs on a whole split (in the mode it is in) and the targets,
        on the device."""
        rows = rows or max(1, min(EVAL_ROWS, EVAL_VALUES // max(1, self.n_features)))
        loader, _ = self._loader(split, rows)
        outputs, targets = [], []
        for batch in loader:
            x, y = self._move(batch)
            outputs.append(model(x))
            targets.append(y)
        return torch.cat(outputs), torch.cat(targets)

    def has(self, split: str) -> bool:
        return getattr(self, split) is not None


def dataset_splits(source: str, parts: Sequence[Any], kind: str | None) -> DatasetSplits:
    """Check what a data function returned as Datasets and learn what training needs:
    the task (classification when the training set declares ``classes`` or its labels are
    integers, regression for float targets, unless ``kind`` says), the input shape, the
    classes (the ``classes`` attribute, else 0 .. the largest label). Every set's first
    item must match the training set's in shape and kind of target; every label is
    checked against the classes where the sets have ``targets`` (else, without
    ``classes``, where each item is read to find them)."""
    names = ("train", "val", "test")
    if len(parts) not in (2, 3):
        raise DataError(f"Datasets come as (train, val) or (train, val, test), but got "
                        f"{len(parts)}", source)
    for name, part in zip(names, parts, strict=False):
        if isinstance(part, IterableDataset):
            raise DataError(f"the {name} set is an IterableDataset, which the tuner cannot "
                            "shuffle or size; give a map-style Dataset (with __len__ and "
                            "__getitem__)", source)
        if not (hasattr(part, "__len__") and hasattr(part, "__getitem__")):
            raise DataError(f"the {name} set must be a torch Dataset with __len__ and "
                            f"__getitem__, but got {type(part).__name__}", source)
        if len(part) < 1:
            raise DataError(f"the {name} set is empty", source)
    train = parts[0]
    declared = getattr(train, "classes", None)
    items = [_item(source, part, name) for name, part in zip(names, parts, strict=False)]
    x, y = items[0]
    task = kind or ("classification" if declared is not None or not _is_float(y)
                    else "regression")
    shape = _shape(x)
    for name, (x_i, y_i) in zip(names, items, strict=False):
        if _shape(x_i) != shape:
            raise DataError(f"the first {name} item's input has shape {list(_shape(x_i))}, "
                            f"but the training set's has {list(shape)}", source)
        if task == "classification" and not _is_label(y_i):
            raise DataError(f"classification needs integer class labels (0, 1, ...), but "
                            f"the first {name} item's target is {y_i!r} "
                            f"({type(y_i).__name__})", source)
        if task == "regression" and not (_is_float(y_i) or _is_label(y_i)):
            raise DataError(f"a regression needs numeric targets, but the first {name} "
                            f"item's is {y_i!r} ({type(y_i).__name__})", source)
    classes: tuple[Any, ...] | None = None
    n_outputs = 1
    if task == "classification":
        sets = list(zip(names, parts, strict=False))
        if declared is not None:
            classes = tuple(declared)
            # Checked where it costs nothing: sets that list their targets.
            tops = [(name, _labels(source, part, name)) for name, part in sets
                    if getattr(part, "targets", None) is not None]
        else:
            tops = [(name, _labels(source, part, name)) for name, part in sets]
            classes = tuple(range(max(top for _, top in tops) + 1))
        n_outputs = len(classes)
        for name, top in tops:
            if top >= n_outputs:
                raise DataError(f"the {name} set has label {top}, but the training set's "
                                f"classes are {n_outputs} (labels 0 to {n_outputs - 1})",
                                source)
        if n_outputs < 2:
            raise DataError("the targets have a single class; classification needs at "
                            "least two", source)
    return DatasetSplits(train, parts[1], parts[2] if len(parts) == 3 else None, task,
                         n_outputs, shape, classes)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in (x if isinstance(x, torch.Tensor) else torch.as_tensor(
        np.asarray(x))).shape)


def _is_label(value: Any) -> bool:
    """An integer class label: a Python or NumPy integer, or an integer tensor of one."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_floating_point() and not value.is_complex()
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _item(source: str, dataset: Any, name: str) -> tuple[Any, Any]:
    try:
        item = dataset[0]
    except Exception as exc:  # code of yours: one line, its own words
        raise DataError(f"reading the first item of the {name} set raised "
                        f"{type(exc).__name__}: {exc}", source) from None
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"the items of a Dataset must be (x, y) pairs, but the first {name} "
                        f"item is {type(item).__name__}", source)
    try:
        _shape(item[0])
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"the first {name} item's input must be a tensor or an array of "
                        f"numbers, but is {type(item[0]).__name__}", source) from None
    return item[0], item[1]


def _is_float(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    return isinstance(value, (float, np.floating))


def _labels(source: str, dataset: Any, name: str) -> int:
    """The largest class label of a set (its ``targets`` attribute, else each item's)."""
    targets = getattr(dataset, "targets", None)
    labels = (torch.as_tensor(np.asarray(targets)) if targets is not None
              else torch.as_tensor([int(_item_at(source, dataset, i, name))
                                    for i in range(len(dataset))]))
    if labels.numel() and int(labels.min()) < 0:
        raise DataError(f"class labels must be 0, 1, ..., but the {name} set has "
                        f"{int(labels.min())}", source)
    return int(labels.max()) if labels.numel() else 0


def _item_at(source: str, dataset: Any, index: int, name: str) -> Any:
    try:
        return dataset[index][1]
    except Exception as exc:  # code of yours: one line, its own words
        raise DataError(f"reading item {index} of the {name} set raised "
                        f"{type(exc).__name__}: {exc}", source) from None
