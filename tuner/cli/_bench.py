"""``tuner bench``: benchmarks to run on your own hardware; ``tuner bench engine`` (the
default) races the tuner's trial engine against the canonical Optuna + PyTorch recipe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from tuner.catalogue import DATASET_NAMES, PRECISIONS
from tuner.cli import cli

# Heavy modules (torch, Optuna, the benchmark) are imported inside the commands, so that
# `tuner --help` starts in a fraction of a second.

_ENGINE_OPTIONS = (
    click.option("--device", default="auto", show_default=True, envvar="TUNER_DEVICE",
                 help="Where to train: auto (CUDA when present), cpu, cuda or cuda:N."),
    click.option("--dataset", type=click.Choice(DATASET_NAMES), default="digits",
                 show_default=True,
                 help="The built-in dataset to train on; a classification one (the value of a "
                      "trial is its validation accuracy)."),
    click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
                 help="Trials per variant."),
    click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True,
                 help="Epochs per trial."),
    click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                 help="The seed of the data split, the sampler and the trials."),
    click.option("--threads", type=click.IntRange(min=1),
                 help="Torch's CPU threads for every variant (default: the tuner's own "
                      "setting, one; compare with your machine's core count)."),
    click.option("--population", type=click.IntRange(min=1), metavar="K",
                 help="Also run the fused population engine, K trials at once (variant "
                      "tuner-fused); the variants then take turns K trials at a time."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="fp32",
                 show_default=True,
                 help="The tuner variants' precision: bf16 or fp16 runs their matrix "
                      "products in bfloat16 or float16 (mixed precision; fp16 with loss "
                      "scaling); the baseline stays in float32."),
    click.option("--compile", "compile_models", is_flag=True,
                 help="The sequential tuner variants compile each trial's model with "
                      "torch.compile (its first compilation falls in the untimed "
                      "warm-up): to see whether compiling pays on this machine."),
    click.option("--samples", type=click.IntRange(min=10),
                 help="Rows of the synthetic classification dataset (--dataset "
                      "classification; default 2000)."),
    click.option("--features", type=click.IntRange(min=2),
                 help="Features of the synthetic classification dataset (default 20)."),
    click.option("--json", "as_json", is_flag=True,
                 help="Print the settings and every row as JSON, for scripts."),
)


def engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of ``tuner bench engine``, shared by the bare ``tuner bench``."""
    for option in reversed(_ENGINE_OPTIONS):
        command = option(command)
    return command


@cli.group(invoke_without_command=True)
@engine_options
@click.pass_context
def bench(ctx: click.Context, **options: Any) -> None:
    """Benchmarks to run on your own hardware. Without a subcommand, `tuner bench`
    runs `tuner bench engine` with the options given.

    \b
    Examples:
      tuner bench                                  # digits, 20 trials x 20 epochs
      tuner bench --dataset digits --trials 20 --epochs 20 --json
      tuner bench --trials 64 --population 32        # with the fused engine
      tuner bench --compile                          # does torch.compile pay here?
      tuner bench --device cuda --dataset classification --samples 200000 --features 128
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(engine, **options)


@bench.command()
@engine_options
def engine(device: str, dataset: str, trials: int, epochs: int, seed: int, threads: int | None,
           population: int | None, precision: str, compile_models: bool, samples: int | None,
           features: int | None, as_json: bool) -> None:
    """Race the tuner's trial engine against the canonical Optuna + PyTorch recipe.

    Three variants run in this process, taking turns trial by trial, on the same data,
    model (an MLP, Adam), search space (dropout, learning rate), budget and seed:
    `baseline`, the canonical recipe (a DataLoader over a TensorDataset, .item() per
    batch, trial.report and should_prune per epoch, Optuna's RDB storage on SQLite);
    `tuner-memory`, the tuner's engine with Optuna's in-memory storage; `tuner-sqlite`,
    the tuner's engine with its SQLite storage; with --population K, `tuner-fused`, the
    fused population engine (K trials as one batched model) on the SQLite storage. A
    seeded random sampler, no pruner and no early stopping make every variant train the
    same configurations for every epoch.

    Columns: epochs, samples and trials per second of the trials' wall time; storage %,
    the part of it spent inside storage calls (creating the storage and the study is
    timed apart); the best validation accuracy; the fraction of the device's matmul
    peak (measured here with torch.matmul) that the training steps' matmul FLOPs reach;
    and the speedup in epochs/s over the baseline.
    """
    import torch
    from rich.console import Console

    from tuner.bench import format_result, run_bench
    from tuner.train.device import resolve_device

    torch_device = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    console = Console(stderr=True)
    with console.status(f"tuner bench on {torch_device} ({torch.get_num_threads()} CPU "
                        "thread(s)): measuring the matmul peak, warming up") as status:
        def on_trial(i: int) -> None:
            what = f"round {i + 1}" if population else f"trial {i + 1} of {trials}"
            status.update(f"{what} (each variant in turn)")

        result = run_bench(dataset=dataset, trials=trials, epochs=epochs, seed=seed,
                           device=torch_device, population=population, precision=precision,
                           compile=compile_models, samples=samples, features=features,
                           on_trial=on_trial)
    click.echo(format_result(result, "json" if as_json else "table"), nl=False)


@bench.command("startup")
@click.option("--space", default="quick", show_default=True, metavar="NAME|PATH",
              help="The space of the 1-trial, 1-epoch study: a built-in space's name or a "
                   "YAML file.")
@click.option("--device", default="auto", show_default=True, envvar="TUNER_DEVICE",
              help="Where the trial trains: auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Fresh processes per figure; each figure is their median.")
@click.option("--format", "fmt", type=click.Choice(("table", "csv", "json")), default="table",
              show_default=True, help="How to print the rows.")
def startup(space: str, device: str, repeat: int, fmt: str) -> None:
    """Time a `tuner start` process: its start-up step by step, and whole processes
    against the start-up targets.

    Every figure is the median of --repeat fresh interpreters. The steps (importing
    tuner.cli, torch, scikit-learn; reading the space, loading the data, checking the
    model; torch._dynamo, which the first torch.optim constructor imports; the schema and
    views, the study, the trial, its test evaluation and summary) run in the order
    `tuner start` meets them, each timed in a process of its own after the steps before
    it, so they add up; `detail` names what a step imported (own import time, from
    python -X importtime). The whole processes are timed from outside: a 1-trial,
    1-epoch `tuner start` (its second run) against `python -c "import torch"` + 1.0 s,
    and `tuner spaces`, `studies`, `trials`, `best` against 0.4 s or twice
    `python -c "import optuna"`, whichever is larger; `of_target` is the ratio (1.0 or
    less meets the target). The versions and the load average go to stderr.

    \b
    Example:
      tuner bench startup --repeat 3
    """
    import os

    from tuner.bench import format_startup, run_startup_bench

    def say(line: str) -> None:
        click.echo(line, err=True)

    say(f"load average {os.getloadavg()[0]:.2f} (1 min) at the start")
    rows = run_startup_bench(space=space, device=device, repeat=repeat, say=say)
    say(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    click.echo(format_startup(rows, fmt), nl=False)


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"expected positive whole numbers separated by commas, "
                                 f"got {text!r}")
    return counts


@bench.command("sampler")
@click.option("--space", default="quick", show_default=True, metavar="NAME|PATH",
              help="The space to sample: a built-in space's name or a YAML file.")
@click.option("--sampler", metavar="NAME",
              help="The sampler instead of the space's own (tpe, random, cmaes, gp, qmc; its "
                   "default options, the space's seed).")
@click.option("--sizes", default="100,1000,3000,10000", show_default=True,
              help="Finished trials in the study before each timing, comma-separated.")
@click.option("--population", "populations", default="1,64", show_default=True,
              help="Trials asked before any is told (1: the sequential runner; K: the fused "
                   "engine's population), comma-separated.")
@click.option("--asks", type=click.IntRange(min=1), default=64, show_default=True,
              help="Trials asked and told per (size, population) point.")
@click.option("--storage", metavar="URL",
              help="The database to build the studies in (default: a temporary SQLite "
                   "file, deleted afterwards).")
@click.option("--against-optuna", is_flag=True,
              help="With TPE, time each point on Optuna's own TPESampler too (same options "
                   "and seeding, rows 'optuna-tpe'), right after the tuner's.")
@click.option("--format", "fmt", type=click.Choice(("table", "csv", "json")), default="table",
              show_default=True, help="How to print the rows.")
def sampler(space: str, sampler: str | None, sizes: str, populations: str, asks: int,
            storage: str | None, against_optuna: bool, fmt: str) -> None:
    """Time the space's sampler on studies of growing size: per-ask time and ask+tell
    throughput, as the sequential runner (population 1) and the fused engine (population
    K: K asks in a row, the trials RUNNING, then K tells) drive it.

    Each (size, population) point gets a study of its own, prefilled with SIZE finished
    trials of the space (drawn at random, a made-up objective, bulk-inserted) and loaded
    with the sampler the tuner builds (per-trial seeding included). Columns, in ms: ask_ms,
    the median ask (study.ask() and the space's suggestions), split into create_ms
    (study.ask()) and suggest_ms (the suggestions: the sampler's work, its relative
    sampling included, which Optuna runs at a trial's first suggestion); ask_p90_ms;
    tell_ms, the median tell; trials_per_s, the asks and tells together. The versions
    and the load average go to stderr. The tuner's TPE keeps its model of the study
    between asks and fits it once per population; --against-optuna adds Optuna's own
    TPESampler on equal studies, for the ratio.

    \b
    Examples:
      tuner bench sampler                                 # quick's TPE, 100 to 10,000
      tuner bench sampler --sampler random --sizes 1000 --format json
      tuner bench sampler --against-optuna --sizes 500,3000   # the speed-up
    """
    import os
    import tempfile
    from pathlib import Path

    from tuner.bench import (
        SAMPLER_COLUMNS,
        SAMPLER_NAMES,
        run_sampler_bench,
        sampler_space,
    )
    from tuner.errors import TunerError
    from tuner.formatting import format_rows

    size_list, population_list = _counts(sizes), _counts(populations)
    if sampler is not None and sampler not in SAMPLER_NAMES:
        raise click.BadParameter(f"one of {', '.join(SAMPLER_NAMES)}, got {sampler!r}",
                                 param_hint="--sampler")

    def say(line: str) -> None:
        click.echo(line, err=True)

    try:
        loaded = sampler_space(space, sampler)
    except TunerError as exc:
        raise click.ClickException(str(exc)) from None
    say(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min) at "
        "the start")
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        url = storage or f"sqlite:///{Path(tmp) / 'bench.db'}"
        rows = run_sampler_bench(url, loaded, sizes=size_list, populations=population_list,
                                 asks=asks, say=say, against_optuna=against_optuna)
    say(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min) at "
        "the end")
    click.echo(format_rows([r.as_dict() for r in rows], SAMPLER_COLUMNS, fmt), nl=False)
