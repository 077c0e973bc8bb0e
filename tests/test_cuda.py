"""The GPU path: both engines, mixed precision, torch.compile and `tuner bench` on CUDA.

Skipped without a CUDA device. On a GPU machine, `benchmarks/gpu/check.sh` runs these
and the GPU benchmarks. ``TUNER_TEST_DEVICE=cpu`` runs the same checks on the CPU, which
is how the tests themselves are checked on a machine without a GPU.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pytest
import torch

from tuner.bench import run_bench
from tuner.data.builtin import Splits, load_splits
from tuner.fused import train_population
from tuner.train.config import TrialConfig
from tuner.train.loop import build_for, compile_model, train
from tuner.train.metrics import METRICS

DEVICE = os.environ.get("TUNER_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA device: run benchmarks/gpu/check.sh on a GPU "
                              "machine (TUNER_TEST_DEVICE=cpu runs these on the CPU)"),
]

ACCURACY = METRICS["accuracy"]
MEMBERS: list[dict[str, Any]] = [
    {"optimizer": "adam", "lr": 0.01, "l2": 1e-3, "schedule": "step", "step_size": 2},
    {"optimizer": "adamw", "lr": 0.03, "beta1": 0.8, "weight_decay": 0.1, "l1": 1e-3,
     "max_norm": 0.7, "schedule": "cosine"},
    {"optimizer": "momentum", "lr": 0.05, "momentum": 0.8, "schedule": "exponential",
     "gamma": 0.9},
    {"optimizer": "rmsprop", "lr": 0.01, "alpha": 0.9, "max_norm": 0.8},
]


def _config(values: dict[str, Any], seed: int, epochs: int = 4) -> TrialConfig:
    return TrialConfig.from_values({"hidden": 16, "layers": 2, "batch_size": 16, **values},
                                   epochs=epochs, seed=seed)


@pytest.fixture(scope="module")
def iris64() -> Splits:
    data = load_splits("iris", seed=0, device=DEVICE)
    return dataclasses.replace(data, **{f: getattr(data, f).double() for f in
                                        ("x_train", "x_val", "x_test")})


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_splits("digits", seed=0, device=DEVICE)


def test_the_data_lives_on_the_device(digits: Splits) -> None:
    assert digits.x_train.device.type == DEVICE
    assert digits.y_train.device.type == DEVICE
    model = build_for(_config({}, seed=0), digits)
    assert all(p.device.type == DEVICE for p in model.parameters())


def test_fused_members_equal_sequential_runs_in_float64(iris64: Splits) -> None:
    """The issue's equality on the device: every member's epochs equal tuner.train.loop's on
    the same batch order (the group's generator and the global one, seeded alike)."""
    configs = [_config(v, seed=10 + i) for i, v in enumerate(MEMBERS)]
    results = train_population(configs, iris64, metric=ACCURACY, seed=100)
    groups = [0, 0, 1, 2]  # adam family, SGD family, RMSprop: groups in order of formation
    for i, (config, result) in enumerate(zip(configs, results, strict=True)):
        torch.manual_seed(config.seed)
        model = build_for(config, iris64).double()
        torch.manual_seed(100 + groups[i])
        sequential = train(model, iris64, config, metric=ACCURACY)
        np.testing.assert_allclose([h.train_loss for h in result.history],
                                   [h.train_loss for h in sequential.history],
                                   rtol=1e-6, atol=1e-6, err_msg=f"member {i}")
        np.testing.assert_allclose([h.val_metric for h in result.history],
                                   [h.val_metric for h in sequential.history], atol=1e-9)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(result.state_dict[name].to(value.device, value.dtype),
                                       value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_follows_float32_in_both_engines(digits: Splits, precision: str) -> None:
    configs = [TrialConfig.from_values({"hidden": 64, "layers": 2, "optimizer": "adam",
                                        "lr": 3e-3, "dropout": 0.2}, epochs=4, seed=s)
               for s in range(4)]
    exact = train_population(configs, digits, metric=ACCURACY, seed=1)
    mixed = train_population(configs, digits, metric=ACCURACY, seed=1, precision=precision)
    for e, m in zip(exact, mixed, strict=True):
        assert m.history[-1].train_loss != e.history[-1].train_loss  # it ran in half
        assert m.history[-1].train_loss == pytest.approx(e.history[-1].train_loss, rel=0.1)
        assert m.best_metric == pytest.approx(e.best_metric, abs=0.03)
        assert m.history[-1].train_loss < m.history[0].train_loss
    runs = []
    for p in ("fp32", precision):
        torch.manual_seed(0)
        model = build_for(configs[0], digits)
        torch.manual_seed(1)
        runs.append((model, train(model, digits, configs[0], metric=ACCURACY, precision=p)))
    (_, exact_run), (mixed_model, mixed_run) = runs
    assert mixed_run.history != exact_run.history
    np.testing.assert_allclose([h.train_loss for h in mixed_run.history],
                               [h.train_loss for h in exact_run.history], rtol=0.05)
    assert all(p.dtype == torch.float32 for p in mixed_model.parameters())


def test_a_compiled_model_trains_as_the_uncompiled_one(digits: Splits) -> None:
    from torch._dynamo.utils import counters

    config = TrialConfig.from_values({"hidden": 64, "layers": 2, "optimizer": "adam",
                                      "lr": 1e-3}, epochs=3, seed=0)
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_for(config, digits)
        if compiled:
            compile_model(model)
        torch.manual_seed(1)
        runs.append(train(model, digits, config, metric=ACCURACY))
    assert counters["stats"]["unique_graphs"] > 0  # it was compiled
    assert dict(counters["graph_break"]) == {}
    np.testing.assert_allclose([h.train_loss for h in runs[1].history],
                               [h.train_loss for h in runs[0].history], rtol=1e-4)


def test_bench_runs_every_variant_on_the_device() -> None:
    result = run_bench(dataset="iris", trials=2, epochs=2, device=torch.device(DEVICE),
                       population=2)
    assert result.device.startswith(DEVICE)
    assert [run.variant for run in result.runs] == ["baseline", "tuner-memory",
                                                    "tuner-sqlite", "tuner-fused"]
    assert result.same_configs
    for row in result.rows():
        assert row["epochs"] == 4 and 0 < row["peak_fraction"] <= 1
