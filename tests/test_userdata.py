"""User data files and functions: each format, and each way they can be wrong."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import random
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from numpy.lib import format as npy_format

from tuner.cli import cli
from tuner.data import reading as userfiles
from tuner.data.files import DataSpec, infer_task, is_reference, read_user_data
from tuner.errors import DataError
from tuner.export.predict import read_features
from tuner.storage import TunerStorage


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


# A data file from someone else: every way it can be wrong is one line on the command
# line, with the database as it was.

def _csv_text(path: Path) -> None:
    path.write_text("a,b,y\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(30)))


def _npz_bytes(compressed: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(buffer, x=rng.normal(size=(60, 3)), y=np.arange(60) % 2)
    return buffer.getvalue()


def _crafted_npz(path: Path, shape: tuple[int, ...]) -> None:
    """An .npz whose 'x' header declares ``shape`` but holds 80 bytes of data."""
    member = io.BytesIO()
    npy_format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False,
                                               "shape": shape})
    member.write(bytes(80))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", member.getvalue())
        archive.writestr("y.npy", member.getvalue())


def _damaged_member(path: Path) -> None:
    data = bytearray(_npz_bytes(compressed=True))
    data[200:260] = b"\xff" * 60  # inside x.npy's deflated stream
    path.write_bytes(bytes(data))


def _npy_as_npz(path: Path) -> None:
    with path.open("wb") as file:
        np.save(file, np.arange(30))


def _object_npz(path: Path) -> None:
    np.savez(path, x=np.array([{"a": 1}] * 20, dtype=object), y=np.arange(20))


def _text_member(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _device(path: Path) -> None:
    path.symlink_to("/dev/zero")


BAD_FILES: list[tuple[str, Callable[[Path], object], tuple[str, ...]]] = [
    ("fake.npz", _csv_text, ("not an .npz archive", "looks like text", "rename it fake.csv")),
    ("one.npz", _npy_as_npz,
     ("not an .npz archive", "a single .npy array (numpy.save)", "numpy.savez")),
    ("cut.npz", lambda p: p.write_bytes(_npz_bytes()[:700]),
     ("the .npz archive is damaged or truncated", "File is not a zip file")),
    ("flipped.npz", _damaged_member,
     ("the .npz archive is damaged or truncated (member 'x.npy')",)),
    ("obj.npz", _object_npz,
     ("array 'x' holds Python objects (dtype object), which are never loaded", "pickle",
      "save numbers")),
    ("huge.npz", lambda p: _crafted_npz(p, (10**12,)),
     ("array 'x' declares the shape (1000000000000,) of float64, 8000000000000 bytes",
      "its member holds 80 bytes")),
    ("notes.npz", _text_member,
     ("member 'notes.txt' is not a .npy array",)),
    ("latin.csv", lambda p: p.write_bytes("a,b,y\n1,café,0\n".encode("latin-1")),
     ("not UTF-8 text: line 2 has the byte 0xe9", "save it as UTF-8")),
    ("binary.csv", lambda p: p.write_bytes(bytes(range(256)) * 8),
     ("not a CSV file (UTF-8 text)", "binary data")),
    ("archive.csv", lambda p: p.write_bytes(_npz_bytes()),
     ("not a CSV file (UTF-8 text)", "zip archive", "rename it archive.npz")),
    ("empty.csv", lambda p: p.touch(), ("the file is empty",)),
    ("text.parquet", _csv_text, ("not a Parquet file", "rename it text.csv")),
    ("folder.csv", lambda p: p.mkdir(), ("is a directory, not a regular file",)),
    ("pipe.csv", _fifo, ("is a named pipe (FIFO), not a regular file",)),
    ("zero.npz", _device, ("is a character device, not a regular file",)),
]


@pytest.fixture
def study_db(storage_url: str, db_path: Path) -> Path:
    """A tuner database that already holds a study, to show a refusal leaves it alone."""
    storage = TunerStorage(storage_url).open()
    optuna.create_study(study_name="kept", storage=storage.optuna)
    storage.engine.dispose()
    return db_path


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: "), line
    return line


def _unblock_after(path: Path, seconds: float) -> threading.Timer:
    """Should a reader open the FIFO ``path``, a writer comes and goes after ``seconds``,
    so that the test fails instead of hanging."""

    def knock() -> None:
        with contextlib.suppress(OSError):  # no reader: nothing to unblock
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(seconds, knock)
    timer.start()
    return timer


@pytest.mark.parametrize(("name", "write", "fragments"), BAD_FILES,
                         ids=[name for name, _, _ in BAD_FILES])
def test_a_bad_data_file_is_one_line_and_changes_nothing(
        runner: CliRunner, tiny_path: Path, storage_url: str, study_db: Path,
        db_snapshot: Any, name: str, write: Callable[[Path], object],
        fragments: tuple[str, ...]) -> None:
    path = Path(name)  # in the test's own directory, the current one
    write(path)
    before = db_snapshot(study_db)
    timer = _unblock_after(path, 5.0) if name == "pipe.csv" else None
    result = runner.invoke(cli, ["start", "--space", str(tiny_path), "--data", name, "--target",
                                 "y", "--study", "new", "--storage", storage_url, "--device",
                                 "cpu", "--quiet"])
    if timer is not None:
        timer.cancel()
    line = _one_error_line(result)
    assert line.startswith(f"Error: --data {name}: "), line
    for fragment in fragments:
        assert fragment in line, line
    assert db_snapshot(study_db) == before


@pytest.mark.parametrize(("name", "write", "fragment"), [
    ("fake.npz", _csv_text, "not an .npz archive"),
    ("obj.npz", _object_npz, "array 'x' holds Python objects"),
    ("missing.csv", lambda p: None, "no such file"),
    ("few.csv", lambda p: p.write_text("a,y\n1,0\n2,1\n"), "at least 10 rows are needed"),
], ids=["text", "objects", "missing", "too-few-rows"])
def test_task_data_in_a_space_names_the_file_once(
        runner: CliRunner, write_space: Any, tiny_space: dict[str, Any], storage_url: str,
        study_db: Path, db_snapshot: Any, name: str, write: Callable[[Path], object],
        fragment: str) -> None:
    write(Path(name))
    tiny_space["task"] = {"data": name, "target": "y", "model": "mlp", "epochs": 1}
    space = write_space(tiny_space)
    before = db_snapshot(study_db)
    result = runner.invoke(cli, ["start", "--space", str(space), "--study", "new", "--storage",
                                 storage_url, "--device", "cpu", "--quiet"])
    line = _one_error_line(result)
    assert line.startswith(f"Error: {space}: task.data: {name}: {fragment}"), line
    assert "--data" not in line
    assert db_snapshot(study_db) == before


def test_declared_arrays_larger_than_free_memory_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(_npz_bytes())  # 60 x 3 float64 and 60 int64: 1920 bytes
    monkeypatch.setattr(userfiles, "available_memory", lambda: 1000)
    with pytest.raises(DataError) as error:
        read_user_data(DataSpec(str(path)))
    assert str(error.value) == (f"--data {path}: its arrays declare 1920 bytes, more than the "
                                "1000 bytes of memory available")


def test_available_memory_is_known_here() -> None:
    available = userfiles.available_memory()
    assert available is None or available > 0


def test_any_damage_to_an_npz_is_a_data_error(tmp_path: Path) -> None:
    """Cut short anywhere, or with bytes changed anywhere: loaded, or one DataError."""
    rng = random.Random(0)
    path = tmp_path / "d.npz"
    for compressed in (False, True):
        data = _npz_bytes(compressed)
        for trial in range(150):
            damaged = bytearray(data[:rng.randrange(len(data))] if trial % 3 == 0 else data)
            for _ in range(rng.randint(1, 6) if trial % 3 else 0):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            path.write_bytes(bytes(damaged))
            try:
                userfiles.read_npz(path)
            except DataError as exc:
                assert str(exc).startswith(f"--data {path}: ") and "\n" not in str(exc)


def test_prediction_inputs_are_read_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "new.npz"
    _csv_text(path)
    with pytest.raises(DataError, match=r"not an \.npz archive.*rename it new\.csv"):
        read_features(path, names=[], n_features=2)


def test_a_data_error_keeps_its_source_through_pickle() -> None:
    error = pickle.loads(pickle.dumps(DataError("the file is empty", "d.csv")))
    assert (error.problem, error.source) == ("the file is empty", "d.csv")
    assert str(error) == "--data d.csv: the file is empty"
