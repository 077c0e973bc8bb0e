"""The on-disk cache of the built-in datasets and their split rows (tuner.data.cache):
the same arrays, to the bit, as scikit-learn computes them; read back without importing
scikit-learn; damaged files detected, reported in one line and rewritten; workers that
start together; where it lives, and a folder that cannot be written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from tuner.data import builtin, cache
from tuner.data.builtin import DATASETS, Splits, load_splits, split_arrays, split_rows

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 7)
SIZES = {"n_samples": 300, "n_features": 6}  # the synthetic datasets' size in these tests


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache of the test's own, and no splits kept in the process from before."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("TUNER_CACHE_DIR", str(folder))
    load_splits.cache_clear()
    yield folder
    load_splits.cache_clear()


def _uncached(name: str, seed: int, n_samples: int = 2000, n_features: int = 20) -> Splits:
    """The splits as computed before the cache: the loader, then split_arrays."""
    info = DATASETS[name]
    x, y = info.load(seed, n_samples, n_features)
    aux = info.aux(np.asarray(x, dtype=np.float64)) if info.aux else None
    return split_arrays(x, y, info.task, seed, info.image_shape, aux=aux)


def _assert_identical(got: Splits, expected: Splits) -> None:
    for f in fields(Splits):
        a, b = getattr(got, f.name), getattr(expected, f.name)
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), f.name
        else:
            assert a == b, f.name


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.npz"))


def _fail(*args: object, **kwargs: object) -> None:
    raise AssertionError("computed again: the cache was not read")


def _without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every computation fail, so that what loads came from the cache."""
    for name, info in DATASETS.items():
        monkeypatch.setitem(DATASETS, name, replace(info, load=_fail))
    monkeypatch.setattr(builtin, "split_rows", _fail)


def _sizes(name: str) -> dict[str, int]:
    return SIZES if DATASETS[name].synthetic else {}


# -- bit-identical -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DATASETS))
def test_cached_splits_are_bit_identical_to_the_uncached_path(
        name: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _sizes(name)
    expected = {seed: _uncached(name, seed, **sizes) for seed in SEEDS}

    written = {seed: load_splits(name, seed, **sizes) for seed in SEEDS}  # computed, written
    load_splits.cache_clear()
    _without_sklearn(monkeypatch)
    read = {seed: load_splits(name, seed, **sizes) for seed in SEEDS}

    # One entry of arrays (a synthetic dataset: one a seed) and one of rows a seed.
    assert len(_entries(cache_dir)) == (2 * len(SEEDS) if sizes else 1 + len(SEEDS))
    for seed in SEEDS:
        _assert_identical(written[seed], expected[seed])
        _assert_identical(read[seed], expected[seed])


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_cached_arrays_and_rows_are_the_loaders_and_train_test_splits(
        name: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info, sizes = DATASETS[name], _sizes(name)
    n, f = sizes.get("n_samples", 2000), sizes.get("n_features", 20)
    x, y = info.load(3, n, f)
    rows = split_rows(y, info.task, 3)
    builtin.builtin_arrays(name, 3, n, f)
    builtin.builtin_rows(name, 3, n, f, y)

    _without_sklearn(monkeypatch)
    cached_x, cached_y = builtin.builtin_arrays(name, 3, n, f)
    cached_rows = builtin.builtin_rows(name, 3, n, f, cached_y)

    for got, want in [(cached_x, x), (cached_y, y), *zip(cached_rows, rows, strict=True)]:
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)


# -- the reference: scikit-learn's train_test_split ----------------------------------

def _reference_rows(y: np.ndarray, seed: int, stratified: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60/20/20 as the tuner documents it: a 20% test split, then 25% of the rest."""
    rows = np.arange(len(y))
    rest, test = train_test_split(rows, test_size=0.2, random_state=seed,
                                  stratify=y if stratified else None)
    train, val = train_test_split(rest, test_size=0.25, random_state=seed,
                                  stratify=y[rest] if stratified else None)
    return train, val, test


@pytest.mark.parametrize("n", [40, 97, 150, 178, 569, 1000, 1797])
def test_split_rows_are_train_test_split_over_many_seeds_and_sizes(n: int) -> None:
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 4, size=n)
    labels[:8] = [0, 0, 1, 1, 2, 2, 3, 3]  # every class can be stratified
    targets = rng.normal(size=n)
    for seed in range(25):
        for y, task in ((labels, "classification"), (targets, "regression")):
            got = split_rows(y, task, seed)
            want = _reference_rows(y, seed, stratified=task == "classification")
            for a, b in zip(got, want, strict=True):
                assert a.dtype == b.dtype and np.array_equal(a, b), (n, seed, task)


@pytest.mark.parametrize("name", ["classification", "regression"])
def test_cached_rows_of_the_synthetic_datasets_are_train_test_split(
        name: str, cache_dir: Path) -> None:
    info = DATASETS[name]
    for n_samples, n_features, seed in [(100, 1, 0), (100, 4, 5), (257, 3, 11), (999, 8, 2)]:
        _, y = info.load(seed, n_samples, n_features)
        want = _reference_rows(y, seed, stratified=info.task == "classification")
        for _ in range(2):  # computed and written, then read
            got = builtin.builtin_rows(name, seed, n_samples, n_features, y)
            for a, b in zip(got, want, strict=True):
                assert a.dtype == b.dtype and np.array_equal(a, b)


# -- a warm cache, read in a fresh process -------------------------------------------

_DIGESTS = """
import hashlib, json, sys
from tuner.data.builtin import load_splits
sizes = json.loads(sys.argv[1])
if len(sys.argv) > 2:  # wait for the go
    import os, time
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.01)
out = {}
for name, size in sizes.items():
    splits = load_splits(name, 4, **size)
    h = hashlib.sha256()
    for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        t = getattr(splits, part)
        h.update(str(t.dtype).encode() + t.numpy().tobytes())
    out[name] = h.hexdigest()
print(json.dumps({"digests": out, "imported": sorted(
    m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy"))}))
"""


def _digests_in_process() -> dict[str, str]:
    out = {}
    for name in DATASETS:
        splits = _uncached(name, 4, **_sizes(name))
        h = hashlib.sha256()
        for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            t = getattr(splits, part)
            h.update(str(t.dtype).encode() + t.numpy().tobytes())
        out[name] = h.hexdigest()
    return out


def _start(*extra: str) -> subprocess.Popen[str]:
    sizes = json.dumps({name: _sizes(name) for name in DATASETS})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", _DIGESTS, sizes, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen[str]) -> tuple[dict[str, object], str]:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    return json.loads(out), err


def test_a_warm_cache_is_read_in_a_fresh_process_without_sklearn(cache_dir: Path) -> None:
    expected = _digests_in_process()

    cold, cold_err = _result(_start())
    warm, warm_err = _result(_start())

    assert cold["digests"] == warm["digests"] == expected
    assert "sklearn" in cold["imported"]  # the first run computed them
    assert warm["imported"] == []
    assert cold_err == warm_err == ""
    assert len(_entries(cache_dir)) == 2 * len(DATASETS)


_START = """
import sys
from tuner.cli import cli
try:
    cli(sys.argv[1:], standalone_mode=False)
finally:
    print(sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy")),
          file=sys.stderr)
"""


def test_a_second_tuner_start_does_not_import_sklearn(cache_dir: Path, tmp_path: Path) -> None:
    def start(study: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", _START, "start", "--space", "quick", "--trials", "1",
             "--epochs", "1", "--device", "cpu", "--quiet", "--study", study,
             "--storage", f"sqlite:///{tmp_path / 'tuner.db'}"],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
            timeout=240, check=False)
        assert done.returncode == 0, done.stderr
        return done.stderr.strip().splitlines()

    assert "sklearn" in start("first")[-1]
    assert start("second") == ["[]"]


# -- damaged files -------------------------------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _rewrite(path: Path, change: Callable[[dict[str, np.ndarray]], None],
             allow_pickle: bool = False) -> None:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    change(arrays)
    with path.open("wb") as out:
        np.savez(out, allow_pickle=allow_pickle, **arrays)


def _wrong_checksum(path: Path) -> None:
    _rewrite(path, lambda a: a.update({cache.CHECKSUM: np.array("0" * 64)}))


def _other_values(path: Path) -> None:  # the archive is sound, the checksum is not its own
    _rewrite(path, lambda a: a.update({"x": a["x"] + 1.0}))


def _object_array(path: Path) -> None:
    _rewrite(path, lambda a: a.update({"x": a["x"].astype(object)}), allow_pickle=True)


def _another_key(path: Path) -> None:
    def change(arrays: dict[str, np.ndarray]) -> None:
        key = json.loads(str(arrays[cache.KEY])) | {"dataset": "iris"}
        text = json.dumps(key, sort_keys=True)
        data = {n: a for n, a in arrays.items() if n not in (cache.KEY, cache.CHECKSUM)}
        arrays.update({cache.KEY: np.array(text), cache.CHECKSUM: np.array(
            cache.checksum(text, data))})
    _rewrite(path, change)


def _not_a_zip(path: Path) -> None:
    path.write_bytes(b"\x80\x04 not an archive at all")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _bare_npy(path: Path) -> None:
    with path.open("wb") as out:
        np.save(out, np.zeros(3))


def _a_row_short(path: Path) -> None:  # the checksum holds; the table does not
    def change(arrays: dict[str, np.ndarray]) -> None:
        arrays["x"] = arrays["x"][:-1]
        text = str(arrays[cache.KEY])
        data = {n: a for n, a in arrays.items() if n not in (cache.KEY, cache.CHECKSUM)}
        arrays[cache.CHECKSUM] = np.array(cache.checksum(text, data))
    _rewrite(path, change)


DAMAGE = {
    "truncated": (_truncate, "cannot be read"),
    "flipped bytes": (_flip, "cannot be read"),
    "wrong checksum": (_wrong_checksum, "fails its checksum"),
    "other values": (_other_values, "fails its checksum"),
    "object array": (_object_array, "cannot be read"),
    "another key": (_another_key, "was written for another key"),
    "not a zip": (_not_a_zip, "not an .npz archive"),
    "empty": (_empty, "not an .npz archive"),
    "a bare .npy": (_bare_npy, "not an .npz archive"),
    "a row short": (_a_row_short, "holds features"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_file_is_reported_in_one_line_and_recomputed(
        damage: str, cache_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    expected = _uncached("wine", 2)
    load_splits("wine", 2)
    path = next(p for p in _entries(cache_dir) if p.name == "wine.npz")
    spoil, reason = DAMAGE[damage]
    spoil(path)
    load_splits.cache_clear()
    capfd.readouterr()

    _assert_identical(load_splits("wine", 2), expected)

    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Warning: the data cache file "), err
    assert str(path) in err and reason in err and "recomputing it" in err
    assert "Traceback" not in err
    # Rewritten: the next run reads it, silently.
    load_splits.cache_clear()
    _assert_identical(load_splits("wine", 2), expected)
    assert capfd.readouterr().err == ""
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(["x", "y", cache.KEY, cache.CHECKSUM])


def test_damaged_split_rows_are_recomputed(cache_dir: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    expected = _uncached("iris", 5)
    load_splits("iris", 5)
    path = next(p for p in _entries(cache_dir) if ".split-" in p.name)

    def shift(arrays: dict[str, np.ndarray]) -> None:  # a valid checksum over rows out of range
        arrays["train"] = arrays["train"] + 1
        text = str(arrays[cache.KEY])
        data = {n: a for n, a in arrays.items() if n not in (cache.KEY, cache.CHECKSUM)}
        arrays[cache.CHECKSUM] = np.array(cache.checksum(text, data))

    _rewrite(path, shift)
    load_splits.cache_clear()
    capfd.readouterr()

    _assert_identical(load_splits("iris", 5), expected)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "not a partition" in err


def test_the_file_is_checked_by_zip_crc_before_the_checksum(cache_dir: Path) -> None:
    # What "flipped bytes" relies on: the archive's members carry a CRC-32 each.
    load_splits("wine", 2)
    path = next(p for p in _entries(cache_dir) if p.name == "wine.npz")
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert {i.filename for i in archive.infolist()} == {
            "x.npy", "y.npy", f"{cache.KEY}.npy", f"{cache.CHECKSUM}.npy"}


# -- workers starting together -------------------------------------------------------

def test_two_processes_loading_first_both_get_the_right_arrays(cache_dir: Path,
                                                               tmp_path: Path) -> None:
    expected = _digests_in_process()
    go = tmp_path / "go"
    first, second = _start(str(go)), _start(str(go))
    go.touch()  # both past their imports, or nearly: they compute and write together

    results = [_result(first), _result(second)]

    for result, err in results:
        assert result["digests"] == expected
        assert err == ""
    assert len(_entries(cache_dir)) == 2 * len(DATASETS)
    assert not [p for p in cache_dir.rglob("*") if p.name.endswith(".tmp")]
    warm, _ = _result(_start())
    assert warm["digests"] == expected and warm["imported"] == []


def test_an_entry_is_written_beside_and_renamed_into_place(
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[Path, Path, bool]] = []
    real = os.replace

    def replace_(source: str, target: Path) -> None:
        renames.append((Path(source), Path(target), Path(target).exists()))
        real(source, target)

    monkeypatch.setattr(cache.os, "replace", replace_)
    load_splits("iris", 0)

    assert len(renames) == 2
    for source, target, existed in renames:
        assert source.parent == target.parent and source.name.startswith(f".{target.name}.")
        assert not existed  # no reader saw a name before its file was whole
    assert sorted(p.name for p in cache_dir.rglob("*")) == sorted(
        [p.name for p in _entries(cache_dir)] + ["data", renames[0][1].parent.name])


# -- where it lives ------------------------------------------------------------------

def test_the_cache_folder_follows_the_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "mine"
    assert cache.data_dir() == tmp_path / "mine" / "data"

    monkeypatch.delenv("TUNER_CACHE_DIR")
    assert cache.cache_dir() == tmp_path / "xdg" / "tuner"

    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "tuner"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "tuner"


def test_tuner_cache_dir_is_where_the_entries_go(cache_dir: Path) -> None:
    load_splits("iris", 0)

    versions = builtin._versions()
    folder = cache_dir / "data" / f"sklearn-{versions['scikit-learn']}.numpy-{versions['numpy']}"
    assert [p.name for p in _entries(cache_dir)] == ["iris.npz", "iris.seed-0.split-0.2-0.2.npz"]
    assert all(p.parent == folder for p in _entries(cache_dir))


def test_the_test_session_keeps_its_cache_out_of_the_users(_data_cache: Path) -> None:
    assert os.environ["TUNER_CACHE_DIR"] == str(_data_cache)
    assert Path.home() / ".cache" not in _data_cache.parents


def test_a_cache_folder_that_cannot_be_written_is_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TUNER_CACHE_DIR", str(blocker / "cache"))
    load_splits.cache_clear()
    capfd.readouterr()

    _assert_identical(load_splits("wine", 1), _uncached("wine", 1))
    _assert_identical(load_splits("classification", 1, **SIZES),
                      _uncached("classification", 1, **SIZES))

    assert capfd.readouterr().err == ""
    assert blocker.read_text() == "not a folder"
    load_splits.cache_clear()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_cache_folder_is_left_alone(
        cache_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cache_dir.mkdir()
    cache_dir.chmod(0o500)
    try:
        _assert_identical(load_splits("wine", 1), _uncached("wine", 1))
    finally:
        cache_dir.chmod(0o700)
    assert capfd.readouterr().err == ""
    assert _entries(cache_dir) == []


def test_another_scikit_learn_version_is_another_entry(
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_splits("iris", 0)
    before = _entries(cache_dir)
    load_splits.cache_clear()
    monkeypatch.setattr(builtin, "_versions", lambda: {"scikit-learn": "0.0.1",
                                                       "numpy": np.__version__})

    _assert_identical(load_splits("iris", 0), _uncached("iris", 0))

    # Computed by the scikit-learn imported, which is not 0.0.1: not written under its name.
    assert _entries(cache_dir) == before


def test_a_failed_split_writes_no_rows(cache_dir: Path) -> None:
    from tuner.errors import DataError

    with pytest.raises(DataError):
        load_splits("classification", 0, n_samples=5, n_features=4)
    assert [p.name for p in _entries(cache_dir)] == ["classification.n-5.f-4.seed-0.npz"]
