"""Hostile and careless input, case by case: every one gets a non-zero exit, one line
that names the input and the rule, no traceback, and leaves the database as it was, to
the byte.

Each case runs in its own folder against a copy of one small study, through the command
line exactly as a user types it. The cases that held before these tests were written are
here too, so that they stay held.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import resource
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner

from tuner.cli import cli
from tuner.run.runner import run_study
from tuner.space import parse_space
from tuner.storage import TunerStorage

# Files a case writes into its folder before it runs: name -> text or bytes.
Files = dict[str, str | bytes]


def _yaml(mapping: dict[str, Any]) -> str:
    return yaml.safe_dump(mapping, sort_keys=False)


TASK = {"task": {"dataset": "iris", "model": "mlp", "epochs": 1}}


def _space(**extra: Any) -> str:
    return _yaml({**TASK, **extra})


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each level a list of `width` aliases of the level below."""
    lines = ["description:", f"  - &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n" + _space()


class _Payload:
    """Pickles to a call that would leave a file behind, were it ever unpickled."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch pwned",))


def _evil_model() -> bytes:
    return pickle.dumps({"format": "tuner-model", "state": _Payload()})


@dataclass(frozen=True)
class Case:
    """``args`` for ``tuner`` in a folder holding ``files``; the one line it prints must
    contain every string of ``says``."""

    name: str
    args: tuple[str, ...]
    says: tuple[str, ...]
    files: Files = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None
    storage: bool = True  # whether the command takes --storage


def _fifo(folder: Path) -> None:
    os.mkfifo(folder / "pipe.yaml")


def _object_npz(folder: Path) -> None:
    import numpy as np

    np.savez(folder / "obj.npz", x=np.array([{"a": 1}] * 20, dtype=object), y=np.arange(20))


CASES = [
    # Space files that would exhaust the machine.
    Case("alias-bomb", ("start", "--space", "bomb.yaml"),
         ("bomb.yaml", "aliases are expanded", "100,000"), {"bomb.yaml": _alias_bomb()}),
    Case("deep-nesting", ("start", "--space", "deep.yaml"),
         ("deep.yaml", "nested more than 64 levels"),
         {"deep.yaml": "description: " + "[" * 200 + "]" * 200 + "\n" + _space()}),
    Case("huge-file", ("start", "--space", "big.yaml"), ("big.yaml", "larger than 1 MiB"),
         {"big.yaml": _space() + "# " + "x" * (2 << 20) + "\n"}),
    Case("fifo-space", ("start", "--space", "pipe.yaml"), ("pipe.yaml", "not a regular file"),
         setup=_fifo),
    # Space files with mistakes in them.
    Case("not-utf8", ("start", "--space", "latin1.yaml"),
         ("latin1.yaml", "line 1, column 17", "not UTF-8", "0xe9"),
         {"latin1.yaml": b"description: caf\xe9\n" + _space().encode()}),
    Case("nan-low", ("start", "--space", "nan.yaml"),
         ("nan.yaml", "params.lr.low", "finite number", "nan"),
         {"nan.yaml": _space() + "params:\n  lr: {low: .nan, high: 0.1}\n"}),
    Case("inf-high", ("start", "--space", "inf.yaml"),
         ("inf.yaml", "params.lr.high", "finite number", "inf"),
         {"inf.yaml": _space() + "params:\n  lr: {low: 0.001, high: .inf}\n"}),
    Case("epochs-as-text-under-override", ("start", "--space", "ten.yaml", "--epochs", "1"),
         ("ten.yaml", "task.epochs", "'ten'", "valid as written"),
         {"ten.yaml": _yaml({"task": {"dataset": "iris", "epochs": "ten"}})}),
    Case("negative-startup-trials", ("start", "--space", "tpe.yaml"),
         ("tpe.yaml", "sampler.n_startup_trials", "n_startup_trials >= 0", "-5"),
         {"tpe.yaml": _space(sampler={"name": "tpe", "n_startup_trials": -5})}),
    Case("sampler-flag-as-text", ("start", "--space", "tpe.yaml"),
         ("tpe.yaml", "sampler.multivariate", "bool", "'yes'"),
         {"tpe.yaml": _space(sampler={"name": "tpe", "multivariate": "yes"})}),
    Case("sampler-function-setting", ("start", "--space", "tpe.yaml"),
         ("tpe.yaml", "sampler.gamma", "Python object"),
         {"tpe.yaml": _space(sampler={"name": "tpe", "gamma": 3})}),
    Case("percentile-out-of-range", ("start", "--space", "p.yaml"),
         ("p.yaml", "pruner.percentile", "0 <= percentile <= 100", "150"),
         {"p.yaml": _space(pruner={"name": "percentile", "percentile": 150})}),
    Case("duplicate-key", ("start", "--space", "dup.yaml"), ("dup.yaml", "duplicate key 'lr'"),
         {"dup.yaml": _space() + "params:\n  lr: 0.1\n  lr: 0.2\n"}),
    Case("unknown-key", ("start", "--space", "k.yaml"), ("k.yaml", "unknown key 'nmae'"),
         {"k.yaml": _space(nmae="x")}),
    Case("malformed-yaml", ("start", "--space", "bad.yaml"), ("bad.yaml", "malformed YAML"),
         {"bad.yaml": "task: {dataset: iris\n"}),
    Case("python-tag", ("start", "--space", "tag.yaml"), ("tag.yaml", "malformed YAML"),
         {"tag.yaml": "description: !!python/object/apply:os.system ['touch pwned']\n"}),
    Case("control-character-file-name", ("start", "--space", "a\x1bb.yaml"),
         ("a\x1bb.yaml", "printable"), {"a\x1bb.yaml": _space()}),
    # Study names.
    Case("blank-study", ("start", "--space", "ok.yaml", "--study", ""), ("--study", "blank"),
         {"ok.yaml": _space()}),
    Case("newline-study", ("start", "--space", "ok.yaml", "--study", "a\nb"),
         ("--study", "printable"), {"ok.yaml": _space()}),
    Case("long-study", ("start", "--space", "ok.yaml", "--study", "x" * 100_000),
         ("--study", "at most 200 characters", "100,000"), {"ok.yaml": _space()}),
    # Queries: fragments of SQL and expressions built to exhaust the parser.
    Case("where-injection", ("trials", "--study", "s", "--where", "value > 0; drop table trials"),
         ("--where",)),
    Case("where-5000-parentheses", ("trials", "--study", "s", "--where", "(" * 5000
                                    + "value > 0" + ")" * 5000),
         ("--where", "at most 10,000 characters")),
    Case("where-deep-nesting", ("trials", "--study", "s", "--where", "(" * 60 + "value>0"
                                + ")" * 60), ("--where", "nest", "50")),
    Case("where-many-terms", ("trials", "--study", "s", "--where",
                              " or ".join(["value>0"] * 300)), ("--where", "200")),
    Case("sort-injection", ("trials", "--study", "s", "--sort", "value; drop table trials"),
         ("--sort",)),
    Case("columns-injection", ("trials", "--study", "s", "--columns", "value) from x; --"),
         ("--columns",)),
    Case("state-injection", ("trials", "--study", "s", "--state", "complete' or 1=1"),
         ("--state",)),
    Case("unknown-study", ("trials", "--study", "nope'; --"), ("nope'; --", "s")),
    # Options.
    Case("workers-100000", ("start", "--space", "ok.yaml", "--workers", "100000"),
         ("--workers", "100000"), {"ok.yaml": _space()}),
    Case("enqueue-not-json", ("start", "--space", "ok.yaml", "--study", "s",
                              "--enqueue", "{lr: 0.1"), ("--enqueue", "JSON"),
         {"ok.yaml": _space()}),
    # Models the space can draw that no machine trains.
    Case("layers-100000", ("start", "--space", "deep.yaml"),
         ("deep.yaml", "params.layers", "layers=100000", "at most 1000"),
         {"deep.yaml": _space(params={"layers": 100000})}),
    Case("hidden-1e8", ("start", "--space", "wide.yaml"),
         ("wide.yaml", "params.hidden", "hidden=100000000", "parameters", "GiB", "free"),
         {"wide.yaml": _space(params={"hidden": 100_000_000})}),
    # Data files.
    Case("csv-renamed-npz", ("start", "--space", "ok.yaml", "--data", "t.npz"),
         ("--data t.npz", "not an .npz archive", "rename it t.csv"),
         {"ok.yaml": _space(), "t.npz": "a,b,y\n" + "1,2,0\n3,4,1\n" * 10}),
    Case("npz-of-objects", ("start", "--space", "ok.yaml", "--data", "obj.npz"),
         ("--data obj.npz", "array 'x'", "Python objects"), {"ok.yaml": _space()},
         setup=_object_npz),
    Case("data-directory", ("start", "--space", "ok.yaml", "--data", "d.csv"),
         ("--data d.csv", "not a regular file"), {"ok.yaml": _space()},
         setup=lambda folder: (folder / "d.csv").mkdir()),
    # A model file with a pickled payload never runs it.
    Case("pickled-model", ("predict", "--model", "evil.pt", "--data", "x.csv"),
         ("evil.pt",), {"evil.pt": _evil_model(), "x.csv": "a,b\n1,2\n"}, storage=False),
]


@pytest.fixture(scope="module")
def study_file(tmp_path_factory: pytest.TempPathFactory, tiny_space_template: Any) -> Path:
    """A small finished study ("s") in a SQLite file, with the tuner's tables filled."""
    path = tmp_path_factory.mktemp("hostile") / "tuner.db"
    storage = TunerStorage(f"sqlite:///{path}", heartbeat=False).open()
    space = parse_space(dict(tiny_space_template), name="s", source="tiny")
    run_study(space, storage=storage, study_name="s", budget=2, device=torch.device("cpu"))
    storage.engine.dispose()
    return path


def _dump(path: Path) -> tuple[str, list[str]]:
    """The file's SHA-256 and its SQL dump, for a before/after comparison."""
    import sqlite3

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return digest, list(conn.iterdump())
    finally:
        conn.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_gets_one_line_and_leaves_the_database_alone(
        case: Case, study_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "case"
    folder.mkdir()
    db = folder / "tuner.db"
    shutil.copyfile(study_file, db)
    for name, content in case.files.items():
        target = folder / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    if case.setup is not None:
        case.setup(folder)
    before = _dump(db)
    os.chdir(folder)
    storage = ["--storage", f"sqlite:///{db}"] if case.storage else []
    with warnings.catch_warnings(record=True) as caught:
        # A warning would print lines of its own on a terminal.
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, [*case.args, *storage])
    shown = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert not shown, [str(w.message) for w in shown]
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    for part in case.says:
        assert part in lines[0], (part, lines[0])
    assert _dump(db) == before
    assert not (folder / "pwned").exists()


def _limited(args: list[str], folder: Path, *, cpu_s: int, memory_gib: int
             ) -> subprocess.CompletedProcess[str]:
    """``tuner ARGS`` in a child with CPU-time and address-space limits; past them the
    kernel stops it (SIGXCPU / MemoryError), which the test then sees."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        size = memory_gib << 30
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=folder, env=env,
                          preexec_fn=limit, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("levels", [9, 12])
@pytest.mark.slow
def test_an_alias_bomb_is_refused_within_bounded_cpu_and_memory(tmp_path: Path,
                                                                 levels: int) -> None:
    """Expanded, nine levels are 387 million nodes and twelve 282 billion: refused while
    parsing, with the limits a laptop's shell would not notice."""
    (tmp_path / "bomb.yaml").write_text(_alias_bomb(levels))
    done = _limited(["start", "--space", "bomb.yaml", "--storage", "sqlite:///t.db"],
                    tmp_path, cpu_s=60, memory_gib=8)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("Error: bomb.yaml: line ")
    assert lines[0].endswith(": refused: more than 100,000 values once aliases are expanded "
                             "(a search space has a few hundred)")
    assert not (tmp_path / "t.db").exists()


@pytest.mark.slow
def test_a_huge_space_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A 4 GiB file (sparse: no disk) under a 3 GiB address-space limit beyond the
    interpreter's: reading it whole would fail; the size bound refuses it first."""
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:
        handle.write(_space().encode())
        handle.truncate(4 << 30)
    done = _limited(["start", "--space", "big.yaml", "--storage", "sqlite:///t.db"],
                    tmp_path, cpu_s=60, memory_gib=8)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "Error: big.yaml: refused: larger than 1 MiB (a search space is a few kilobytes; "
        f"{4 << 30:,} bytes)"]
