"""``tuner bench startup``: where a ``tuner start`` process spends its time before and
around its one trial, and the whole process against the targets of the start-up issue.

Every figure comes from fresh interpreters (``sys.executable``), median of ``repeat``:

* the start-up steps (:mod:`tuner.bench._startup_steps`), in the order ``tuner start``
  meets them; each runs in a process of its own after the steps before it, untimed, and is
  timed in-process, so that the steps add up and none pays for what an earlier one
  imported. The processes run under ``-X importtime``, whose lines between the step's
  markers say which packages the step imported (``detail``: their own import time).
* the whole processes, timed from outside: ``python -c pass``, ``python -c "import
  torch"``, ``python -c "import optuna"``, a 1-trial, 1-epoch ``tuner start`` (a second
  run, the first one warming the caches) against its target, ``import torch`` + 1.0 s,
  and the read-back commands (``tuner spaces``, ``studies``, ``trials``, ``best``)
  against theirs: 0.4 s or twice ``import optuna``, whichever is larger.

>>> rows = run_startup_bench(repeat=1, say=lambda line: None)  # doctest: +SKIP
>>> [row.step for row in rows][:2]                               # doctest: +SKIP
['import tuner.cli (optuna, sqlalchemy, click, rich)', 'import torch']
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuner.bench import _startup_steps as steps
from tuner.errors import TunerError

STEP = "start-up step"
WHOLE = "whole process"
COLUMNS = ("part", "step", "seconds", "target_s", "of_target", "detail")

# What each step of _startup_steps.STEPS is, as a row names it.
STEP_NAMES = {
    "cli": "import tuner.cli (optuna, sqlalchemy, click, rich)",
    "torch": "import torch",
    "datasets": "scikit-learn + scipy.stats (import tuner.data.builtin)",
    "modules": "the tuner's other modules (import tuner.run.start)",
    "space": "the space read and validated (space_with)",
    "data": "the dataset loaded and split (load_task_data)",
    "check": "the model checked (plan_start)",
    "optimizer": "torch._dynamo (the first torch.optim constructor)",
    "schema": "schema and views (TunerStorage.open, a new SQLite file)",
    "study": "study creation (open_study, save_budget)",
    "trial": "the trial: 1 epoch, recorded (run_study)",
    "test evaluation": "  of which: the test evaluation",
    "summary": "  of which: the summary (runner.summarize)",
    "exit": "the interpreter's exit, after the trial (heap frozen, as tuner's)",
}
PARTS = ("test evaluation", "summary")  # timed inside the trial, not added again
START_TARGET_S = 1.0  # over `python -c "import torch"`
QUERY_TARGET_S = 0.4  # or twice `python -c "import optuna"`, whichever is larger
VERSIONS = ("torch", "optuna", "sqlalchemy", "scikit-learn", "scipy", "click", "rich")
_TOP_IMPORTS = 5  # packages named in a step's detail
_MIN_IMPORT_S = 0.005  # packages below this are not named


@dataclass(frozen=True)
class StartupRow:
    """One line of the result: a step or a whole process, its median seconds, its target."""

    part: str  # STEP or WHOLE
    step: str
    seconds: float
    target_s: float | None = None
    detail: str = ""

    @property
    def of_target(self) -> float | None:
        """The seconds as a multiple of the target: 1.0 or less meets it."""
        return self.seconds / self.target_s if self.target_s else None

    def to_dict(self) -> dict[str, object]:
        return {"part": self.part, "step": self.step, "seconds": _digits(self.seconds),
                "target_s": None if self.target_s is None else _digits(self.target_s),
                "of_target": None if self.of_target is None else round(self.of_target, 2),
                "detail": self.detail}


def _digits(seconds: float) -> float:
    """Four significant digits: a step of 0.1 ms stays positive, one of 4 s reads 4.227."""
    return float(f"{seconds:.4g}")


def versions() -> str:
    """The interpreter's and the heavy packages' versions, one line."""
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    return " · ".join([f"python {sys.version.split()[0]}",
                       *(f"{name} {version(name)}" for name in VERSIONS)])


def import_seconds(stderr: str) -> dict[str, float]:
    """The own import time of each top-level package, in seconds, from ``-X importtime``'s
    lines between the step's markers (all of them when there are no markers)."""
    lines = stderr.splitlines()
    if steps.BEGIN in lines:
        lines = lines[lines.index(steps.BEGIN) + 1:]
    if steps.END in lines:
        lines = lines[:lines.index(steps.END)]
    spent: dict[str, float] = defaultdict(float)
    for line in lines:
        if not line.startswith("import time:"):
            continue
        fields = line[len("import time:"):].split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header
        spent[fields[2].strip().split(".")[0]] += int(fields[0]) / 1e6
    return dict(spent)


def _imports_detail(spent: Sequence[dict[str, float]]) -> str:
    """The packages a step imported, by median own import time, largest first."""
    names = {name for one in spent for name in one}
    medians = {name: statistics.median(one.get(name, 0.0) for one in spent) for name in names}
    top = sorted((s, n) for n, s in medians.items() if s >= _MIN_IMPORT_S)[::-1][:_TOP_IMPORTS]
    return ("imports: " + ", ".join(f"{n} {s:.2f}" for s, n in top)) if top else ""


class _Runner:
    """Runs fresh interpreters of ``sys.executable`` in ``directory``, finding this copy of
    the tuner."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        root = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        self.env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}

    def run(self, args: Sequence[str], what: str) -> tuple[float, str, str]:
        """Run ``python args``: its wall time, stdout and stderr; an error if it fails."""
        began = time.perf_counter()
        done = subprocess.run([sys.executable, *args], cwd=self.directory, env=self.env,
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - began
        if done.returncode != 0:
            said = [line for line in done.stderr.splitlines()
                    if not line.startswith("import time:")]
            raise TunerError(f"{what} failed (exit code {done.returncode}): "
                             + " / ".join(said[-5:]))
        return wall, done.stdout, done.stderr


def _step_rows(runner: _Runner, space: str, device: str, repeat: int,
               say: Callable[[str], None]) -> list[StartupRow]:
    seconds: dict[str, list[float]] = defaultdict(list)
    spent: dict[str, list[dict[str, float]]] = defaultdict(list)
    script = str(Path(steps.__file__).resolve())
    for r in range(repeat):
        say(f"start-up steps, round {r + 1} of {repeat}: one fresh process each")
        for step in steps.STEPS:
            where = runner.directory / f"{step}-{r}"
            where.mkdir()
            _, out, err = runner.run(["-X", "importtime", script, step, space, device,
                                      str(where)], f"the start-up step {step!r}")
            ended = time.time()
            result = json.loads(out.strip().splitlines()[-1])
            for name, value in result["seconds"].items():
                seconds[name].append(value)
            if step == "trial":
                seconds["exit"].append(ended - result["end"])
            spent[step].append(import_seconds(err))
    # STEPS ends with the trial: its parts, then the exit, go under it.
    names = [name for name in (*steps.STEPS, *PARTS, "exit") if seconds[name]]
    rows = [StartupRow(STEP, STEP_NAMES[name], statistics.median(seconds[name]),
                       detail=_imports_detail(spent.get(name, []))) for name in names]
    total = sum(row.seconds for name, row in zip(names, rows, strict=True)
                if name not in PARTS)
    return [*rows, StartupRow(STEP, "the steps, in all", total,
                              detail="the rows above but the trial's parts")]


def _whole_rows(runner: _Runner, space: str, device: str, repeat: int, steps_s: float,
                say: Callable[[str], None]) -> list[StartupRow]:
    def tuner(*args: str) -> list[str]:
        return ["-m", "tuner", *args]

    def start(url: str) -> list[str]:
        return tuner("start", "--space", space, "--trials", "1", "--epochs", "1", "--device",
                     device, "--storage", url, "--study", steps.STUDY)

    url = f"sqlite:///{runner.directory / 'whole.db'}"
    say("whole processes: a first `tuner start`, to warm the caches (untimed)")
    first_s, _, _ = runner.run(start(url), "tuner start")
    commands = {
        "pass": ("python -c pass", ["-c", "pass"]),
        "torch": ('python -c "import torch"', ["-c", "import torch"]),
        "optuna": ('python -c "import optuna"', ["-c", "import optuna"]),
        "start": (f"tuner start --space {Path(space).name} --trials 1 --epochs 1 "
                  "(second run)", []),
        "spaces": ("tuner spaces", tuner("spaces")),
        "studies": ("tuner studies", tuner("studies", "--storage", url)),
        "trials": (f"tuner trials --study {steps.STUDY}",
                   tuner("trials", "--study", steps.STUDY, "--storage", url)),
        "best": (f"tuner best --study {steps.STUDY}",
                 tuner("best", "--study", steps.STUDY, "--storage", url)),
    }
    walls: dict[str, list[float]] = defaultdict(list)
    for r in range(repeat):
        say(f"whole processes, round {r + 1} of {repeat}")
        for key, (label, args) in commands.items():
            if key == "start":
                args = start(f"sqlite:///{runner.directory / f'start-{r}.db'}")
            walls[key].append(runner.run(args, label)[0])
    median = {key: statistics.median(values) for key, values in walls.items()}
    start_target = median["torch"] + START_TARGET_S
    query_target = max(QUERY_TARGET_S, 2 * median["optuna"])
    query_why = (f"target: {QUERY_TARGET_S} s or 2 x import optuna "
                 f"({2 * median['optuna']:.2f} s), the larger")
    rows = []
    for key, (label, _) in commands.items():
        if key == "start":
            rows.append(StartupRow(
                WHOLE, label, median[key], start_target,
                f"target: import torch + {START_TARGET_S} s; the first run took "
                f"{first_s:.2f} s; python -c pass + the steps: "
                f"{median['pass'] + steps_s:.2f} s"))
        elif key in ("pass", "torch", "optuna"):
            rows.append(StartupRow(WHOLE, label, median[key],
                                   detail="the interpreter's start-up" if key == "pass"
                                   else ""))
        else:
            rows.append(StartupRow(WHOLE, label, median[key], query_target, query_why))
    return rows


def run_startup_bench(*, space: str = "quick", device: str = "auto", repeat: int = 3,
                      say: Callable[[str], None] = print) -> list[StartupRow]:
    """Time the start-up steps and the whole processes (see the module's docstring):
    ``space`` is a built-in space's name or a YAML file's path, trained for 1 trial of 1
    epoch on ``device``; every figure is the median of ``repeat`` fresh processes, the
    steps (and then the whole processes) taking turns."""
    if repeat < 1:
        raise TunerError(f"`repeat >= 1` must hold, but got (repeat={repeat})")
    if Path(space).suffix in (".yaml", ".yml") or Path(space).exists():
        space = str(Path(space).resolve())  # the processes run in a folder of their own
    say(versions())
    with tempfile.TemporaryDirectory(prefix="tuner-bench-startup-") as tmp:
        runner = _Runner(Path(tmp))
        step_rows = _step_rows(runner, space, device, repeat, say)
        whole = _whole_rows(runner, space, device, repeat, step_rows[-1].seconds, say)
    return step_rows + whole


def format_startup(rows: Sequence[StartupRow], fmt: str = "table") -> str:
    """The rows as a table, CSV or JSON (:func:`tuner.formatting.format_rows`)."""
    from tuner.formatting import format_rows

    return format_rows([row.to_dict() for row in rows], COLUMNS, fmt)
