"""The size of the built-in models, computed without building them, and the check that
refuses a space whose largest model cannot train (tuner.run.modelsize)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

import tuner
from tuner import machine
from tuner.cli import cli
from tuner.data.builtin import load_task_data
from tuner.errors import DataError, SpaceError, UsageError
from tuner.run.modelsize import (
    CHECK_FROM,
    MAX_LAYERS,
    check_model_size,
    largest_model,
    parameter_count,
)
from tuner.run.objective import Objective
from tuner.space import builtin_spaces, load_space, parse_space
from tuner.storage import MemoryRecorder
from tuner.train import device as device_module
from tuner.train.models import build_model

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30
CPU = torch.device("cpu")


def _space(params: dict[str, Any], model: str = "mlp", dataset: str = "digits") -> Any:
    return parse_space({"task": {"dataset": dataset, "model": model, "epochs": 1},
                        "params": params}, name="t", source="t.yaml")


def _data(space: Any) -> Any:
    return load_task_data(space.task, space.seed, "cpu")


def _free(monkeypatch: pytest.MonkeyPatch, **free: int) -> None:
    """Make each named device report that many bytes free."""
    monkeypatch.setattr(device_module, "free_memory", lambda d: free[str(d).replace(":", "_")])


# --- the parameter count, against torch --------------------------------------------------

SHAPES = [(1, 8, 8), (3, 5, 7), (2, 3, 3), (1, 16, 16), (1, 1, 1)]


@pytest.mark.parametrize(("model", "image_shape"), [("mlp", s) for s in SHAPES[:3]]
                         + [("cnn", s) for s in SHAPES])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_parameter_count_is_torchs(model: str, image_shape: tuple[int, int, int],
                                   batchnorm: bool) -> None:
    n_features = image_shape[0] * image_shape[1] * image_shape[2]
    for hidden, layers, aux in itertools.product([1, 7, 32], [0, 1, 2, 3, 5], [0, 4]):
        if aux and model == "cnn":
            continue  # only the MLP has an auxiliary head
        built = build_model(model, n_features=n_features, n_outputs=3, image_shape=image_shape,
                            hidden=hidden, layers=layers, dropout=0.2, dropout_kind="bernoulli",
                            batchnorm=batchnorm, aux_outputs=aux)
        expected = sum(p.numel() for p in built.parameters())
        assert parameter_count(model, n_features=n_features, n_outputs=3,
                               image_shape=image_shape, hidden=hidden, layers=layers,
                               batchnorm=batchnorm, aux_outputs=aux) == expected, (
            hidden, layers, aux)


def test_a_cnn_needs_images() -> None:
    with pytest.raises(DataError, match="needs an image dataset"):
        parameter_count("cnn", n_features=4, n_outputs=3, image_shape=None, hidden=8,
                        layers=2, batchnorm=False)


# --- the largest draw -------------------------------------------------------------------


@pytest.mark.parametrize(("model", "hidden", "layers"), [
    ("mlp", {"low": 1, "high": 40, "step": 3}, {"low": 1, "high": 4}),
    # A narrow CNN is largest with one block (its head sees a 4x4 map, not a 2x2 one).
    ("cnn", {"low": 1, "high": 3}, {"low": 1, "high": 4}),
    ("cnn", {"choices": [2, 64]}, {"low": 1, "high": 3})])
def test_the_largest_draw_is_the_largest_of_every_draw(model: str, hidden: dict[str, Any],
                                                       layers: dict[str, Any]) -> None:
    """Against brute force: every combination of the knobs, each one a space of its own."""
    params = {"hidden": hidden, "layers": layers, "batch_size": {"low": 8, "high": 100},
              "batchnorm": {"choices": [False, True]}, "dropout": {"low": 0.0, "high": 0.5},
              "optimizer": {"choices": {"sgd": {}, "adam": {}}}}
    space = _space(params, model)
    data = _data(space)
    grid = {name: (spec["choices"] if "choices" in spec
                   else range(spec["low"], spec["high"] + 1, spec.get("step", 1)))
            for name, spec in (("hidden", hidden), ("layers", layers))}
    every = [largest_model(_space({**params, "hidden": h, "layers": n, "batch_size": 100,
                                   "batchnorm": b}, model), data)
             for h in grid["hidden"] for n in grid["layers"] for b in (False, True)]
    best = max(every, key=lambda s: s.train_bytes)
    assert largest_model(space, data) == best
    assert best.hidden == max(grid["hidden"]) and best.batchnorm


def test_every_branch_counts() -> None:
    """Adam keeps two copies of the weights, SGD none: a choice of both is Adam's size."""
    sgd = largest_model(_space({"hidden": 1000, "optimizer": "sgd"}), _data(_space({})))
    both = _space({"hidden": {"low": 10, "high": 1000, "step": 10},
                   "optimizer": {"choices": {"sgd": {}, "adam": {"beta1": 0.9}}}})
    largest = largest_model(both, _data(both))
    assert largest.hidden == 1000
    assert largest.train_bytes - sgd.train_bytes == 2 * 4 * largest.params


def test_the_auxiliary_head_counts_when_its_weight_can_be_drawn() -> None:
    plain = _space({"aux_weight": 0.0})
    weighted = _space({"aux_weight": {"low": 0.0, "high": 0.5}})
    data = _data(plain)
    head = 128 * data.aux_outputs + data.aux_outputs
    assert largest_model(weighted, data).params - largest_model(plain, data).params == head


# --- the check --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(builtin_spaces()))
def test_the_builtin_spaces_pass_without_asking_the_device(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(device: torch.device) -> int:
        raise AssertionError("a small model needs no look at the device")

    monkeypatch.setattr(device_module, "free_memory", never)
    space = load_space(name)
    assert largest_model(space, _data(space)).train_bytes < CHECK_FROM
    assert Objective(space, MemoryRecorder(), CPU).check_model(devices=[CPU] * 4) == []


def test_too_many_layers_are_refused_at_once() -> None:
    space = _space({"hidden": 16, "layers": {"low": 1, "high": 100_000}})
    start = time.perf_counter()
    with pytest.raises(SpaceError) as caught:
        Objective(space, MemoryRecorder(), CPU).check_model()
    assert time.perf_counter() - start < 1.0
    assert str(caught.value) == (
        f"t.yaml: params.layers: the space can draw layers=100000, but the built-in mlp takes "
        f"at most {MAX_LAYERS} hidden blocks (a plain stack deeper than that does not train, "
        f"and is slow to build and to run); lower the upper bound of params.layers")
    check_model_size(_space({"layers": MAX_LAYERS}), _data(space), [CPU])  # the bound is fine


def test_a_model_too_large_for_the_device_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _free(monkeypatch, cpu=95 * GIB)
    space = _space({"hidden": {"low": 16, "high": 100_000_000, "log": True}})
    with pytest.raises(SpaceError) as caught:
        check_model_size(space, _data(space), [CPU])
    assert str(caught.value) == (
        "t.yaml: params.hidden: the largest model the space can draw (hidden=100000000, "
        "layers=2, batch_size=64) has 1.0e+16 parameters and needs about 1.9e+08 GiB to "
        "train; cpu has 95.0 GiB free: lower the upper bound of params.hidden")


def test_the_message_blames_the_knobs_that_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The knobs of which one alone, back at its default, makes the draw fit; else all
    those above their defaults."""
    data = _data(_space({}))
    _free(monkeypatch, cpu=8 * GIB)
    with pytest.raises(SpaceError, match=r"^t\.yaml: params\.hidden, params\.layers: .* lower "
                       r"the upper bound of params\.hidden or params\.layers$"):
        check_model_size(_space({"hidden": 3000, "layers": 200}), data, [CPU])
    with pytest.raises(SpaceError, match=r"^t\.yaml: params\.hidden: "):
        check_model_size(_space({"hidden": 100_000, "layers": 1000}), data, [CPU])
    _free(monkeypatch, cpu=256 << 20)  # 1000 blocks of 128 units need 0.3 GiB
    with pytest.raises(SpaceError, match=r"^t\.yaml: params\.layers: .* lower the upper "
                       r"bound of params\.layers$"):
        check_model_size(_space({"hidden": 1024, "layers": 1000}), data, [CPU])
    with pytest.raises(SpaceError, match=r"^t\.yaml: params\.hidden, params\.layers: .* lower "
                       r"the upper bounds of params\.hidden and params\.layers$"):
        check_model_size(_space({"hidden": 30_000, "layers": 1000}), data, [CPU])


def test_the_device_with_least_free_memory_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _free(monkeypatch, cuda_0=140 * GIB, cuda_1=20 * GIB)
    space = _space({"hidden": 40000})  # 1.6e9 parameters: about 30 GiB
    devices = [torch.device("cuda:0"), torch.device("cuda:1")]
    with pytest.raises(SpaceError, match=r"; cuda:1 has 20\.0 GiB free: lower"):
        check_model_size(space, _data(space), devices)


def test_workers_sharing_a_device_are_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    """What may not fit runs, with a warning: the estimate is low rather than high, and
    the workers may not all draw their largest at once."""
    _free(monkeypatch, cuda_0=40 * GIB, cuda_1=140 * GIB)
    space = _space({"hidden": 20000})  # about 7.5 GiB
    data = _data(space)
    one, two = torch.device("cuda:0"), torch.device("cuda:1")
    assert check_model_size(space, data, [one, two, two]) == []
    [warning] = check_model_size(space, data, [one] * 3 + [two])
    assert warning == (
        "t.yaml: the largest model the space can draw (hidden=20000, layers=2, batch_size=64) "
        "needs about 7.5 GiB to train; 3 workers on cuda:0 could need 22.6 GiB at once, and "
        "cuda:0 has 40.0 GiB free: its trials may run out of memory")
    _free(monkeypatch, cpu=12 * GIB)
    [alone] = check_model_size(space, data, [CPU])
    assert "needs about 7.5 GiB to train, and cpu has 12.0 GiB free" in alone


def test_a_fused_population_is_counted_as_many_models(monkeypatch: pytest.MonkeyPatch) -> None:
    _free(monkeypatch, cpu=16 * GIB)
    space = _space({"hidden": 4096, "layers": 3})  # about 0.6 GiB each
    data = _data(space)
    assert check_model_size(space, data, [CPU], copies=1) == []
    with pytest.raises(SpaceError, match=r"needs about 20\.\d GiB to train 32 at once "
                       r"\(engine fused\); cpu has 16\.0 GiB free"):
        check_model_size(space, data, [CPU], copies=32)


def test_free_memory_on_cuda_is_what_cuda_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (12 * GIB, 80 * GIB))
    assert device_module.free_memory(torch.device("cuda:0")) == 12 * GIB


def test_free_memory_on_the_cpu_is_the_least_of_what_bounds_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    free = device_module.free_memory(CPU)
    assert free is not None and free > 0
    monkeypatch.setattr(machine, "_mem_available", lambda: 90 * GIB)
    monkeypatch.setattr(machine, "_cgroup_left", lambda: None)  # no container limit
    monkeypatch.setattr(machine, "_address_space_left", lambda: 3 * GIB)
    assert device_module.free_memory(CPU) == 3 * GIB
    monkeypatch.setattr(machine, "_address_space_left", lambda: None)
    assert device_module.free_memory(CPU) == 90 * GIB


# --- through the command line and the API -----------------------------------------------

HUGE = {"layers": {"layers": 100000}, "hidden": {"hidden": 100000000, "layers": 2}}
EXPECTED = {"layers": ["params.layers: ", "layers=100000", f"at most {MAX_LAYERS}"],
            "hidden": ["params.hidden: ", "(hidden=100000000, layers=2, batch_size=32)",
                       "parameters", "GiB to train; cpu has", "GiB free",
                       "lower the upper bound of params.hidden"]}


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("knob", list(HUGE))
def test_start_refuses_and_leaves_the_database_as_it_was(
        knob: str, runner: CliRunner, write_space: Callable[..., Path],
        tiny_space: dict[str, Any], tiny_path: Path, storage_url: str, db_path: Path,
        db_snapshot: Callable[[Path], Any]) -> None:
    def start(space: Path, study: str) -> Result:
        return runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                   "--device", "cpu", "--quiet", "--trials", "1",
                                   "--study", study])

    assert start(tiny_path, "tiny").exit_code == 0
    before, rows = db_path.read_bytes(), db_snapshot(db_path)
    files = sorted(p.name for p in db_path.parent.iterdir())
    tiny_space["params"].update(HUGE[knob])
    huge = write_space(tiny_space, name="huge")
    for study in ("tiny", "huge"):  # resuming the study, or a new one
        line = _one_error_line(start(huge, study))
        assert line.startswith(f"Error: {huge}: {EXPECTED[knob][0]}"), line
        for fragment in EXPECTED[knob][1:]:
            assert fragment in line, line
    assert db_path.read_bytes() == before
    assert db_snapshot(db_path) == rows
    assert sorted(p.name for p in db_path.parent.iterdir()) == files


@pytest.mark.parametrize("knob", list(HUGE))
def test_optimize_refuses_before_the_database_is_opened(knob: str, tiny_space: dict[str, Any],
                                                        write_space: Callable[..., Path],
                                                        storage_url: str,
                                                        db_path: Path) -> None:
    tiny_space["params"].update(HUGE[knob])
    with pytest.raises(SpaceError, match=EXPECTED[knob][0]):
        tuner.optimize(write_space(tiny_space), storage=storage_url, device="cpu")
    assert not db_path.exists()


def test_start_and_optimize_say_what_may_not_fit(runner: CliRunner, tiny_space: dict[str, Any],
                                                write_space: Callable[..., Path],
                                                storage_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A warning, one line, and the study goes on (here, to a stand-in that stops it)."""
    def stop(*args: Any, **kwargs: Any) -> None:
        raise UsageError("the study would run now")

    monkeypatch.setattr("tuner.run.runner.run_study", stop)  # for both: one path
    _free(monkeypatch, cpu=12 * GIB)
    tiny_space["params"].update(hidden=20000, layers=2)  # 4e8 parameters: about 7.5 GiB
    space = write_space(tiny_space)
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--device", "cpu", "--quiet"])
    assert result.exit_code == 2, result.output
    warning, error = result.stderr.strip().splitlines()
    assert warning.startswith(f"Warning: {space}: the largest model the space can draw "
                              "(hidden=20000, layers=2, batch_size=32) needs about"), warning
    assert warning.endswith("cpu has 12.0 GiB free: its trials may run out of memory")
    assert error == "Error: the study would run now"
    with pytest.warns(UserWarning, match="its trials may run out of memory"), \
            pytest.raises(UsageError, match="would run now"):
        tuner.optimize(space, storage=storage_url, device="cpu")


def _limited(memory: int, seconds: int) -> Callable[[], None]:
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))

    return limit


# `tuner start` on each space named, in one process; the exit code of each on stdout.
START_EACH = """
import sys
from tuner.cli import cli
for space in sys.argv[2:]:
    try:
        cli.main(["start", "--space", space, "--storage", sys.argv[1], "--device", "cpu",
                  "--quiet"], prog_name="tuner")
    except SystemExit as exc:
        print(exc.code, flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is enforced on Linux")
@pytest.mark.slow
def test_the_refusal_allocates_nothing_and_takes_no_time(
        tiny_space: dict[str, Any], write_space: Callable[..., Path], db_path: Path) -> None:
    """In a process of 4 GiB of address space and 20 s of CPU: building either model
    would exceed one or the other (and be killed, or fail its trials); the check exits
    with its one line, each time."""
    spaces = [write_space({**tiny_space, "params": {**tiny_space["params"], **HUGE[knob]}},
                          name=knob) for knob in HUGE]
    env = {**{k: v for k, v in os.environ.items() if k not in ("TUNER_STORAGE", "TUNER_DEVICE")},
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", START_EACH, f"sqlite:///{db_path}",
                           *map(str, spaces)], capture_output=True, text=True, env=env,
                          timeout=120, check=False, preexec_fn=_limited(4 * GIB, 20))
    assert (done.returncode, done.stdout.split()) == (0, ["2", "2"]), done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr[-2000:]
    for line, space, knob in zip(lines, spaces, HUGE, strict=True):
        assert line.startswith(f"Error: {space}: {EXPECTED[knob][0]}"), line
    assert not db_path.exists()
