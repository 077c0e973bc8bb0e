"""What a benchmark measured, the rates derived from it, and its table and JSON forms."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from tuner.formatting import format_rows

# (table header, JSON key) of every column, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("variant", "variant"),
    ("epochs/s", "epochs_per_s"),
    ("samples/s", "samples_per_s"),
    ("trials/s", "trials_per_s"),
    ("storage %", "storage_pct"),
    ("best val accuracy", "best_value"),
    ("of matmul peak", "peak_fraction"),
    ("speedup", "speedup"),
)


@dataclass(frozen=True)
class Run:
    """What one variant did, and how long it took."""

    variant: str
    description: str
    wall_s: float  # the trials, from the first to the last
    storage_s: float  # of wall_s, inside storage calls
    setup_s: float  # creating the storage and the study, apart
    trials: int  # finished trials
    epochs: int  # epochs trained, over all trials
    samples: int  # training samples processed
    best_value: float | None


@dataclass(frozen=True)
class BenchResult:
    """Every variant's run on the same data, space, budget and seed, and the machine's limit."""

    device: str
    dataset: str
    model: str
    trials: int
    epochs: int
    seed: int
    population: int | None  # trials at once of the fused variant (None: not run)
    precision: str  # the tuner variants' (fp32, bf16 or fp16)
    threads: int  # torch's intra-op threads during the runs (CPU)
    matmul_peak: float  # FLOP/s, measured
    train_flops_per_sample: float  # matmul FLOPs of one training step, per sample
    same_configs: bool  # whether every variant trained the same parameter values
    runs: tuple[Run, ...]
    # Where the fused variant's float32 products ran on a CPU: "oneDNN" or "torch's
    # default BLAS" (see tuner.train.device.onednn_fp32_preferred); None without the fused
    # variant, on a GPU and in bf16 or fp16.
    fused_matmul: str | None = None
    compile: bool = False  # whether the sequential tuner variants ran torch.compile'd models

    def rows(self) -> list[dict[str, Any]]:
        """One mapping per run, with the ``COLUMNS`` keys and the raw measurements."""
        base = self.runs[0].epochs / self.runs[0].wall_s
        rows = []
        for run in self.runs:
            wall = run.wall_s
            rows.append({
                "variant": run.variant,
                "epochs_per_s": run.epochs / wall,
                "samples_per_s": run.samples / wall,
                "trials_per_s": run.trials / wall,
                "storage_pct": 100 * run.storage_s / wall,
                "best_value": run.best_value,
                "peak_fraction": (self.train_flops_per_sample * run.samples / wall
                                  / self.matmul_peak),
                "speedup": run.epochs / wall / base,
                "description": run.description,
                "wall_s": wall,
                "storage_s": run.storage_s,
                "setup_s": run.setup_s,
                "trials": run.trials,
                "epochs": run.epochs,
                "samples": run.samples,
            })
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Everything, for ``--json``: the settings, the machine's limit and every row."""
        settings = {k: v for k, v in asdict(self).items() if k != "runs"}
        return {**settings, "rows": self.rows()}


def _value(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def format_result(result: BenchResult, fmt: str = "table") -> str:
    """The result as an aligned table with a short header and legend, or as JSON."""
    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2) + "\n"
    cells = [{
        "variant": row["variant"],
        "epochs/s": _value(row["epochs_per_s"], ".1f"),
        "samples/s": _value(row["samples_per_s"], ".0f"),
        "trials/s": _value(row["trials_per_s"], ".2f"),
        "storage %": _value(row["storage_pct"], ".1f"),
        "best val accuracy": _value(row["best_value"], ".4f"),
        "of matmul peak": _value(100 * row["peak_fraction"], ".2f") + "%",
        "speedup": _value(row["speedup"], ".2f") + "x",
    } for row in result.rows()]
    head = (f"{result.dataset} / {result.model} · {result.trials} trials x {result.epochs} "
            f"epochs · seed {result.seed} · {result.device}"
            + (f" · fused population {result.population}" if result.population else "")
            + (f" (products in {result.fused_matmul})" if result.fused_matmul else "")
            + (f" · tuner variants in {result.precision}" if result.precision != "fp32" else "")
            + (" · sequential tuner variants compiled (torch.compile)" if result.compile else "")
            + (f" · {result.threads} thread(s)" if result.device == "cpu" else "")
            + f" · matmul peak {result.matmul_peak / 1e9:.1f} GFLOP/s · training step "
            f"{result.train_flops_per_sample / 1e3:.1f} kFLOP/sample")
    legend = [f"  {run.variant}: {run.description} (set-up {run.setup_s:.2f} s, apart)"
              for run in result.runs]
    if not result.same_configs:
        legend.append("  warning: the variants did not train the same configurations")
    table = format_rows(cells, [header for header, _ in COLUMNS], "table")
    return "\n".join([head, "", table.rstrip("\n"), "", *legend]) + "\n"
