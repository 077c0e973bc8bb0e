"""The steps of a 1-trial ``tuner start``, one of them timed: run by ``tuner bench startup``
in a fresh interpreter, by its path (so that nothing but the steps is imported)::

    python -X importtime tuner/bench/_startup_steps.py STEP SPACE DEVICE DIR

runs every step before ``STEP`` untimed, then ``STEP`` timed, and prints one JSON line:
``{"seconds": {...}, "end": time.time()}``. ``STEP`` and what precedes it follow the
order in which ``tuner start`` meets them, so each step is timed with what the process
has already imported and built at that point, and the steps add up. The timed part is
marked on stderr (:data:`BEGIN`, :data:`END`) so that the parent can tell which of
``-X importtime``'s lines are the step's.

Only the standard library is imported at module level: the steps import the rest.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BEGIN = "tuner-bench-startup: begin"
END = "tuner-bench-startup: end"
STUDY = "startup"


def _cli(state: dict[str, Any]) -> None:
    # What `python -m tuner start` runs first; the command then defers full collections.
    # By name: the benchmark times the CLI's import in this child process and uses
    # nothing of it (bench depends on no CLI module, docs/architecture.md).
    importlib.import_module("tuner.cli")
    from tuner.run import heap

    heap.defer_full_collections()


def _torch(state: dict[str, Any]) -> None:
    import torch  # noqa: F401


def _datasets(state: dict[str, Any]) -> None:
    import tuner.data.builtin  # noqa: F401  (scikit-learn's datasets and splitter, scipy)


def _modules(state: dict[str, Any]) -> None:
    import tuner.run.start  # noqa: F401  (the runner, objective, training loop, storage)


def _space(state: dict[str, Any]) -> None:
    from tuner.run.start import space_with
    from tuner.train.device import resolve_device

    state["device"] = resolve_device(state["device_spec"])
    state["space"] = space_with(state["space_spec"], {"epochs": 1})


def _data(state: dict[str, Any]) -> None:
    from tuner.data.builtin import load_task_data

    space = state["space"]
    load_task_data(space.task, space.seed, "cpu")  # cached for the rest of the process


def _check(state: dict[str, Any]) -> None:
    from tuner.run.start import plan_start

    state["plan"] = plan_start(state["space"], devices=[str(state["device"])], budget=1,
                               study_name=STUDY)


def _optimizer(state: dict[str, Any]) -> None:
    import torch

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # imports torch._dynamo


def _schema(state: dict[str, Any]) -> None:
    from tuner.storage import TunerStorage

    state["storage"] = TunerStorage(f"sqlite:///{Path(state['dir']) / 'steps.db'}").open()


def _study(state: dict[str, Any]) -> None:
    from tuner.run.study import open_study, save_budget

    save_budget(open_study(state["storage"], state["space"], STUDY), 1)


def _trial(state: dict[str, Any]) -> None:
    from tuner.run import objective, runner

    spent = state["spent"]

    def timed(name: str, function: Callable[..., Any],
              when: Callable[..., bool] = lambda *a: True) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if when(*args):
                    spent[name] = spent.get(name, 0.0) + time.perf_counter() - began
        return call

    objective.evaluate_split = timed("test evaluation", objective.evaluate_split,
                                     lambda model, data, split, *rest: split == "test")
    runner.summarize = timed("summary", runner.summarize)
    plan = state["plan"]
    runner.run_study(plan.space, storage=state["storage"], study_name=STUDY, budget=1,
                     device=state["device"], engine=plan.engine)


# In the order `tuner start` meets them: (name, what it does). The optimizer's first
# constructor comes before the storage here, as its cost is torch's, not the trial's.
STEPS: dict[str, Callable[[dict[str, Any]], None]] = {
    "cli": _cli,
    "torch": _torch,
    "datasets": _datasets,
    "modules": _modules,
    "space": _space,
    "data": _data,
    "check": _check,
    "optimizer": _optimizer,
    "schema": _schema,
    "study": _study,
    "trial": _trial,
}


def run(step: str, space: str, device: str, directory: str) -> dict[str, Any]:
    """The steps before ``step``, then ``step`` timed: its seconds, and those of the parts
    timed inside it (``trial``: its test evaluation and summary)."""
    state: dict[str, Any] = {"space_spec": space, "device_spec": device, "dir": directory,
                             "spent": {}}
    names = list(STEPS)
    for name in names[:names.index(step)]:
        STEPS[name](state)
    os.write(2, f"{BEGIN}\n".encode())
    began = time.perf_counter()
    STEPS[step](state)
    seconds = time.perf_counter() - began
    os.write(2, f"{END}\n".encode())
    return {"seconds": {step: seconds, **state["spent"]}}


if __name__ == "__main__":
    # Run by path, this file's folder is sys.path[0]: put the package's root there instead,
    # so that `tuner` is the copy this file belongs to.
    sys.path[0] = str(Path(__file__).resolve().parents[2])
    from tuner.run import heap

    heap.freeze_at_exit()  # as the `tuner` command exits
    result = run(*sys.argv[1:5])
    sys.stdout.write(json.dumps({**result, "end": time.time()}) + "\n")
    sys.stdout.flush()
