"""`tuner bench` (tuner/bench/): the command on a tiny budget, and its measuring parts
checked against references (hand-counted FLOPs, a known storage call)."""

from __future__ import annotations

import json
import time
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from tuner.bench import COLUMNS, VARIANTS, StorageClock, matmul_peak, train_flops_per_sample
from tuner.bench._space import HIDDEN, bench_space
from tuner.cli import cli
from tuner.fused._model import onednn_products
from tuner.space import Fixed
from tuner.train import device

TINY = ["--dataset", "iris", "--trials", "2", "--epochs", "2", "--device", "cpu"]
N_VAL_IRIS = 30


@pytest.fixture(scope="module")
def table() -> Result:
    return CliRunner().invoke(cli, ["bench", *TINY])


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    # With a population, the fused engine is a fourth variant.
    result = CliRunner().invoke(cli, ["bench", "engine", *TINY, "--population", "2", "--json"])
    assert result.exit_code == 0, result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


@pytest.mark.slow
def test_bare_bench_prints_every_column_and_variant(table: Result) -> None:
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    header = next(line for line in lines if line.startswith("variant"))
    for name, _ in COLUMNS:
        assert name in header
    sequential = [v for v in VARIANTS if v != "tuner-fused"]
    for variant in sequential:
        row = next(line for line in lines if line.startswith(variant + " "))
        assert len(row.split()) >= len(COLUMNS)
    # The fused engine runs only when asked for with --population.
    assert not any(line.startswith("tuner-fused") for line in lines)


@pytest.mark.slow
def test_json_has_the_settings_and_a_row_per_variant(report: dict[str, Any]) -> None:
    assert (report["dataset"], report["trials"], report["epochs"], report["device"]) == (
        "iris", 2, 2, "cpu")
    assert report["same_configs"] is True
    assert report["matmul_peak"] > 0 and report["train_flops_per_sample"] > 0
    assert report["population"] == 2
    # The library the fused engine's float32 products ran in, as the model chose it for
    # a population of 2 of the bench's MLP.
    chosen = onednn_products(2, HIDDEN, torch.float32, torch.device("cpu"))
    assert report["fused_matmul"] == ("oneDNN" if chosen else "torch's default BLAS")
    assert [row["variant"] for row in report["rows"]] == list(VARIANTS)
    for row in report["rows"]:
        assert set(key for _, key in COLUMNS) <= set(row)


@pytest.mark.slow
def test_json_numbers_are_sane(report: dict[str, Any]) -> None:
    for row in report["rows"]:
        assert (row["trials"], row["epochs"]) == (2, 4)  # no pruning, no early stopping
        for key in ("epochs_per_s", "samples_per_s", "trials_per_s", "speedup", "wall_s"):
            assert row[key] > 0, key
        assert -100 <= row["storage_pct"] <= 100
        assert 0 < row["peak_fraction"] <= 1
        # A validation accuracy on iris: a whole number of its 30 samples.
        assert 0 <= row["best_value"] <= 1
        assert row["best_value"] * N_VAL_IRIS == pytest.approx(
            round(row["best_value"] * N_VAL_IRIS), abs=1e-4)
    assert report["rows"][0]["speedup"] == pytest.approx(1.0)


@pytest.mark.slow
def test_storage_is_what_separates_the_engine_variants(report: dict[str, Any]) -> None:
    rows = {row["variant"]: row for row in report["rows"]}
    # The same seeds on the CPU: the engine computes the same trials in memory and on SQLite.
    assert rows["tuner-memory"]["best_value"] == rows["tuner-sqlite"]["best_value"]
    assert rows["tuner-memory"]["storage_pct"] < rows["tuner-sqlite"]["storage_pct"]


def test_bad_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["bench", "--dataset", "diabetes"])
    assert result.exit_code == 2
    assert "diabetes" in result.output
    result = CliRunner().invoke(cli, ["bench", "--samples", "500"])  # digits has its size
    assert result.exit_code == 2
    assert "--samples and --features size the synthetic 'classification' dataset" in (
        result.output)
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_the_synthetic_dataset_takes_the_size_asked_for() -> None:
    result = CliRunner().invoke(cli, ["bench", "--dataset", "classification", "--samples",
                                      "500", "--features", "7", "--trials", "1", "--epochs",
                                      "1", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    from tuner.data.builtin import load_splits

    data = load_splits("classification", 0, "cpu", 500, 7)
    assert data.x_train.shape[1] == 7
    for row in report["rows"]:
        assert row["samples"] == data.x_train.shape[0]  # one epoch of the training split
    # The FLOPs of a step are those of the MLP on the 7 inputs.
    from tuner.bench._run import _flops_per_sample

    assert report["train_flops_per_sample"] == _flops_per_sample(data)
    assert _flops_per_sample(data) < _flops_per_sample(load_splits("classification", 0))


# --- the parts ------------------------------------------------------------------------


def test_every_variant_samples_the_same_parameters_in_the_same_order() -> None:
    from tuner.bench._baseline import define_model

    space_order = [p.name for p in bench_space().params if not isinstance(p, Fixed)]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    define_model(trial, 4, 3)
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)  # as the baseline's objective does next
    assert list(trial.params) == space_order


def test_flops_of_an_mlp_step_match_a_hand_count() -> None:
    sizes = [(6, 8), (8, 8), (8, 3)]
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    forward = sum(2 * i * o for i, o in sizes)
    weight_grads = forward
    input_grads = sum(2 * i * o for i, o in sizes[1:])  # the input needs no gradient
    assert train_flops_per_sample(model, x, y) == forward + weight_grads + input_grads
    assert all(p.grad is None for p in model.parameters())  # gradients left as they were


def test_matmul_peak_is_a_plausible_rate() -> None:
    peak = matmul_peak(torch.device("cpu"), seconds=0.05, size=256)
    assert 1e8 < peak < 1e14  # between 0.1 GFLOP/s and 100 TFLOP/s


@pytest.mark.parametrize("exact", [True, False])
def test_matmul_peak_is_the_better_library_where_onednn_is_exact(
        exact: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The float32 peak is the better of the default BLAS and oneDNN, and oneDNN counts
    only where its products are exact."""
    def fake_peak(where: torch.device, dtype: torch.dtype, seconds: float, n: int) -> float:
        flag = device._onednn_flag()  # None in a torch without the switch
        on = flag is not None and flag.fp32_precision == "bf16"
        return 2e11 if on else 1e11

    monkeypatch.setattr("tuner.bench._peak._matmul_peak", fake_peak)
    monkeypatch.setattr("tuner.bench._peak.onednn_fp32_exact", lambda: exact)
    assert matmul_peak(torch.device("cpu")) == (2e11 if exact else 1e11)
    assert matmul_peak(torch.device("cpu"), torch.bfloat16) == 1e11  # float32 only


def test_storage_clock_counts_storage_calls_once_and_restores_them() -> None:
    original = optuna.storages.InMemoryStorage.get_trial
    study = optuna.create_study()
    with StorageClock() as clock:
        assert optuna.storages.InMemoryStorage.get_trial is not original
        trial = study.ask()  # ask and tell make several storage calls each
        time.sleep(0.05)  # not storage
        study.tell(trial, 1.0)
    assert optuna.storages.InMemoryStorage.get_trial is original
    assert clock.calls > 0
    assert 0 < clock.seconds < clock.wall
    assert clock.wall >= 0.05 and clock.seconds < 0.05
