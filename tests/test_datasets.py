"""Your data as torch Datasets, read through a DataLoader: held to the in-memory path,
which must train to the same losses on the same data, seed and batch order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import IterableDataset, TensorDataset

from tuner.cli import cli
from tuner.data.builtin import Splits, load_splits
from tuner.data.datasets import DatasetSplits, dataset_splits, loader_workers
from tuner.errors import DataError
from tuner.train.config import TrialConfig
from tuner.train.loop import Data, build_for, evaluate_split, train
from tuner.train.metrics import METRICS
from tuner.train.seeding import seed_everything


def as_datasets(data: Splits, classes: bool = True) -> DatasetSplits:
    """The same tensors, as TensorDatasets (targets as the tuner holds them)."""
    parts = [TensorDataset(getattr(data, f"x_{s}"), getattr(data, f"y_{s}"))
             for s in ("train", "val", "test")]
    if classes and data.classes is not None:
        parts[0].classes = list(data.classes)  # type: ignore[attr-defined]
    task = data.task
    return dataset_splits("test", parts, task)


def _history(data: Data, config: TrialConfig, metric: str = "accuracy") -> list[Any]:
    seed_everything(config.seed)
    model = build_for(config, data)
    result = train(model, data, config, metric=METRICS[metric])
    return [(m.train_loss, m.val_loss, m.val_metric) for m in result.history]


@pytest.mark.parametrize(("dataset", "metric", "config"), [
    ("iris", "accuracy", TrialConfig(epochs=5, seed=1, hidden=16, batch_size=16)),
    # Dropout masks, batch norm, noise, max-norm and the L1/L2 terms draw and act as in
    # the in-memory path; a last batch of one sample is folded into the one before.
    ("digits", "accuracy", TrialConfig(epochs=3, seed=2, hidden=32, layers=2, dropout=0.3,
                                       batchnorm=True, input_noise=0.1, max_norm=2.0, l1=1e-5,
                                       l2=1e-4, batch_size=67)),
    ("diabetes", "rmse", TrialConfig(epochs=4, seed=3, hidden=16, batch_size=32,
                                     maximize=False, dropout_kind="gaussian", dropout=0.2)),
])
def test_datasets_train_to_the_losses_of_the_same_arrays(dataset: str, metric: str,
                                                         config: TrialConfig) -> None:
    arrays = load_splits(dataset, seed=0)
    datasets = as_datasets(arrays)
    assert datasets.n_train == arrays.n_train and datasets.input_shape == arrays.input_shape
    # Datasets give targets as they are: here the arrays' standardized ones, so the
    # in-memory path's RMSE, in the data's units, is y_std times theirs.
    expected = [(train, val, value / arrays.y_std) if arrays.y_std != 1.0 else
                (train, val, value) for train, val, value in _history(arrays, config, metric)]
    got = _history(datasets, config, metric)
    assert [row[:2] for row in got] == [row[:2] for row in expected]
    assert [row[2] for row in got] == pytest.approx([row[2] for row in expected], rel=1e-6)
    if arrays.task == "classification":
        assert got == expected  # exactly


def test_datasets_of_images_train_the_builtin_cnn_as_arrays_do() -> None:
    arrays = load_splits("digits", seed=0)
    images = dataset_splits("test", [TensorDataset(getattr(arrays, f"x_{s}").view(-1, 1, 8, 8),
                                                   getattr(arrays, f"y_{s}"))
                                     for s in ("train", "val", "test")], None)
    assert images.input_shape == (1, 8, 8) and images.image_shape == (1, 8, 8)
    assert images.n_outputs == 10 and images.classes == tuple(range(10))
    config = TrialConfig(epochs=2, seed=5, model="cnn", hidden=8, layers=2, batch_size=64)
    assert _history(images, config) == _history(arrays, config)
    # The flat mlp reads images flattened, again as from the arrays.
    mlp = TrialConfig(epochs=2, seed=5, hidden=16, batch_size=64)
    assert _history(images, mlp) == _history(arrays, mlp)


def test_the_test_split_is_evaluated_like_the_arrays() -> None:
    arrays = load_splits("iris", seed=0)
    datasets = as_datasets(arrays)
    seed_everything(0)
    model = build_for(TrialConfig(epochs=1, hidden=8), arrays)
    assert [float(v) for v in evaluate_split(model, datasets, "test", METRICS["accuracy"])] == [
        float(v) for v in evaluate_split(model, arrays, "test", METRICS["accuracy"])]


def test_what_the_tuner_learns_from_datasets() -> None:
    x = torch.randn(40, 3)
    labels = dataset_splits("f", [TensorDataset(x, torch.arange(40) % 4),
                                  TensorDataset(x[:8], torch.tensor([0, 1, 2, 5] * 2))], None)
    # The classes: 0..the largest label of any split; no test set, no test metric.
    assert labels.task == "classification" and labels.n_outputs == 6
    assert labels.test is None and not labels.has("test")
    values = dataset_splits("f", [TensorDataset(x, torch.randn(40)),
                                  TensorDataset(x, torch.randn(40))], None)
    assert values.task == "regression" and values.n_outputs == 1


class Stream(IterableDataset):  # type: ignore[type-arg]
    def __iter__(self):  # type: ignore[no-untyped-def]
        yield torch.zeros(2), 0


class Labelled(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, items: list[Any], **attrs: Any) -> None:
        self.items = items
        for key, value in attrs.items():
            setattr(self, key, value)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


class Broken(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> Any:
        raise OSError("disk gone")


@pytest.mark.parametrize(("parts", "message"), [
    (lambda: [TensorDataset(torch.zeros(3, 2), torch.zeros(3).long())],
     "Datasets come as (train, val) or (train, val, test), but got 1"),
    (lambda: [Stream(), Stream()], "the train set is an IterableDataset"),
    (lambda: [TensorDataset(torch.zeros(0, 2), torch.zeros(0)), TensorDataset(
        torch.zeros(1, 2), torch.zeros(1))], "the train set is empty"),
    (lambda: [Broken(), Broken()], "reading the first item of the train set raised OSError: "
                                   "disk gone"),
    (lambda: [TensorDataset(torch.zeros(3, 2)), TensorDataset(torch.zeros(3, 2))],
     "the items of a Dataset must be (x, y) pairs"),
    (lambda: [TensorDataset(torch.zeros(3, 2), torch.tensor([0, -1, 1])),
              TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 1]))],
     "class labels must be 0, 1, ..., but the train set has -1"),
    (lambda: [Labelled([(torch.zeros(2), "cat")]), Labelled([(torch.zeros(2), "dog")])],
     "classification needs integer class labels (0, 1, ...), but the first train item's "
     "target is 'cat' (str)"),
    (lambda: [Labelled([(torch.zeros(2), 1.0)], classes=["a", "b"]),
              Labelled([(torch.zeros(2), 0.0)])],
     "the first train item's target is 1.0 (float)"),
    (lambda: [TensorDataset(torch.zeros(3, 1, 8, 8), torch.tensor([0, 1, 1])),
              TensorDataset(torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 1]))],
     "the first val item's input has shape [1, 4, 4], but the training set's has [1, 8, 8]"),
    (lambda: [Labelled([(torch.zeros(2), 0), (torch.zeros(2), 1)], classes=["a", "b"]),
              Labelled([(torch.zeros(2), 0)], targets=[12])],
     "the val set has label 12, but the training set's classes are 2 (labels 0 to 1)"),
    (lambda: [TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 1])),
              TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 1])),
              Labelled([("text", 0)])],
     "the first test item's input must be a tensor or an array of numbers, but is str"),
])
def test_unusable_datasets_are_refused_in_one_line(parts: Any, message: str) -> None:
    with pytest.raises(DataError, match=r"^--data f: ") as error:
        dataset_splits("f", parts(), None)
    assert message in str(error.value)


def test_loader_processes_follow_the_device() -> None:
    assert loader_workers(torch.device("cpu")) == 0
    assert loader_workers(torch.device("cpu"), 3) == 3


DATA = '''
import torch
from torch.utils.data import Dataset
from sklearn.datasets import load_iris

class Flowers(Dataset):
    classes = ["setosa", "versicolor", "virginica"]

    def __init__(self, rows):
        x, y = load_iris(return_X_y=True)
        self.x = torch.tensor(x[rows], dtype=torch.float32)
        self.y = y[rows]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])

def load():
    rows = torch.randperm(150, generator=torch.Generator().manual_seed(0)).tolist()
    return Flowers(rows[:90]), Flowers(rows[90:120]), Flowers(rows[120:])

def no_test():
    return load()[:2]
'''


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "flowers.py"
    path.write_text(DATA)
    return path


def test_a_study_on_datasets_says_how_it_reads_them_and_records_a_test_metric(
        runner: CliRunner, write_space: Any, storage_url: str, data_file: Path) -> None:
    space = write_space({"task": {"epochs": 6}, "sampler": {"name": "random"},
                         "pruner": {"name": "none"}, "params": {"hidden": 16, "lr": 0.05}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--trials", "2", "--data", f"{data_file}:load"])
    assert result.exit_code == 0, result.output
    assert "data: Datasets through a DataLoader (0 loader process(es); 90 training items of " \
           "shape [4], 3 classes)" in result.output
    assert "test accuracy" in result.output
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert study.best_value > 0.6
    exported = runner.invoke(cli, ["export", "--study", "tiny", "--storage", storage_url,
                                   "--out", "m.pt"])
    assert exported.exit_code == 0, exported.output
    import tuner

    model = tuner.load_model("m.pt")
    assert set(model.predict([[5.1, 3.5, 1.4, 0.2], [6.5, 3.0, 5.5, 2.0]])) <= {
        "setosa", "versicolor", "virginica"}


def test_datasets_without_a_test_set_give_no_test_metric(
        runner: CliRunner, write_space: Any, storage_url: str, data_file: Path) -> None:
    space = write_space({"task": {"epochs": 2}, "pruner": {"name": "none"},
                         "params": {"hidden": 8}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--trials", "1", "--quiet", "--data", f"{data_file}:no_test"])
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.output and "test accuracy" not in result.output


@pytest.mark.parametrize(("extra", "message"), [
    (["--target", "label"], "--target names a column of a table; Datasets give (x, y) items"),
    (["--engine", "fused"], "but the data are Datasets, read batch by batch; use --engine "
                            "sequential"),
])
def test_options_that_datasets_cannot_take_are_refused(
        runner: CliRunner, write_space: Any, storage_url: str, db_path: Path,
        data_file: Path, extra: list[str], message: str) -> None:
    space = write_space({"task": {"epochs": 2}, "params": {"hidden": 8}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--quiet", "--data", f"{data_file}:load", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1
    assert not db_path.exists()


IMAGES = '''
import os
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset
from sklearn.datasets import load_digits

def load(dtype=torch.uint8):
    with open(os.environ["CALLS"], "a") as out:
        out.write("called\\n")
    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x[:600], dtype=dtype).view(-1, 1, 8, 8)  # raw 0-16 pixels
    labels = torch.tensor(y[:600])
    return (TensorDataset(images[:400], labels[:400]), TensorDataset(images[400:500],
            labels[400:500]), TensorDataset(images[500:], labels[500:]))

def floats():
    return load(torch.float32)

def cnn(config, input_shape, n_outputs):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(input_shape[0], 4, 3, padding=1)
            self.head = nn.Linear(4 * 64, n_outputs)
        def forward(self, x):
            assert x.shape[1:] == (1, 8, 8), x.shape  # items keep their shape
            return self.head(torch.relu(self.conv(x.float() / 16)).flatten(1))
    return Net()
'''


@pytest.mark.parametrize(("data", "model"), [("floats", "{images}:cnn"), ("load", "mlp"),
                                             ("load", "cnn")])
def test_image_datasets_of_raw_pixels_train_with_augmentation(
        runner: CliRunner, write_space: Any, storage_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, data: str, model: str) -> None:
    """Augmented batches keep the items' shape for a network of yours; the built-in ones
    read integer pixels as floats. The data function runs once, whatever the seed."""
    images = tmp_path / "images.py"
    images.write_text(IMAGES)
    calls = tmp_path / "calls"
    monkeypatch.setenv("CALLS", str(calls))
    space = write_space({"seed": 5, "task": {"epochs": 2}, "sampler": {"name": "random"},
                         "pruner": {"name": "none"},
                         "params": {"hidden": 8, "augment": True, "input_noise": 0.1}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--trials", "2", "--quiet", "--data", f"{images}:{data}",
                                 "--model", model.format(images=images)])
    assert result.exit_code == 0, result.output
    assert "2/2 finished (0 pruned, 0 failed)" in result.output
    assert calls.read_text().count("called") == 1


def test_augmenting_integer_items_for_a_network_of_yours_says_what_to_do(
        runner: CliRunner, write_space: Any, storage_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    images = tmp_path / "images.py"
    images.write_text(IMAGES)
    monkeypatch.setenv("CALLS", str(tmp_path / "calls"))
    space = write_space({"task": {"epochs": 1}, "pruner": {"name": "none"},
                         "params": {"augment": True}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--trials", "1", "--quiet", "--data", f"{images}:load",
                                 "--model", f"{images}:cnn"])
    assert result.exit_code == 1
    assert "augment and input_noise warp and add to floating-point inputs, but the Dataset's " \
           "items are torch.uint8: convert them in its __getitem__" in result.output


def test_the_grid_sampler_names_a_user_param_under_user_params(write_space: Any) -> None:
    from tuner.errors import SpaceError
    from tuner.space import load_space

    space = write_space({"task": {"dataset": "iris"}, "sampler": {"name": "grid"},
                         "params": {"hidden": 8}, "user_params": {"w": {"low": 0.1,
                                                                         "high": 0.5}}})
    with pytest.raises(SpaceError, match=r"user_params\.w: the grid sampler needs finite"):
        load_space(space)


def test_a_label_out_of_range_mid_trial_fails_the_trials_in_one_line(
        runner: CliRunner, write_space: Any, storage_url: str, tmp_path: Path) -> None:
    """Labels the start-up check could not read cheaply (a declared `classes`, no
    `targets`): the trial that meets one fails with what torch said, not the command."""
    path = tmp_path / "late.py"
    path.write_text("import torch\nfrom torch.utils.data import Dataset\n"
                    "class Set(Dataset):\n    classes = [0, 1]\n"
                    "    def __init__(self, labels): self.labels = labels\n"
                    "    def __len__(self): return len(self.labels)\n"
                    "    def __getitem__(self, i): return torch.ones(2) * i, self.labels[i]\n"
                    "def load():\n    return Set([0, 1] * 20), Set([0] + [12] * 9)\n")
    space = write_space({"task": {"epochs": 1}, "pruner": {"name": "none"},
                         "params": {"hidden": 4}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--trials", "1", "--quiet", "--data", f"{path}:load"])
    assert result.exit_code == 1
    assert result.output == ("Error: 5 trials in a row failed; the last error: IndexError: "
                             "Target 12 is out of bounds.\n")
