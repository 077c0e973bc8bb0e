"""``tuner start`` (run or resume a study) and ``tuner spaces``."""

from __future__ import annotations

from typing import Any

import click

from tuner.catalogue import DATASET_NAMES
from tuner.cli import cli
from tuner.cli._options import (
    GpuList,
    StudyName,
    checkpoint_option,
    compile_option,
    device_option,
    engine_option,
    engine_spec,
    population_option,
    precision_option,
    quiet_option,
    storage_option,
    timeout_option,
)
from tuner.errors import UsageError
from tuner.formatting import plural
from tuner.run import heap

# Heavy modules (torch, scikit-learn, Optuna) are imported inside the commands, so that
# `tuner --help` and the query commands start in a fraction of a second.


@cli.command()
@click.option("--space", default="regularization", show_default=True, metavar="NAME|PATH",
              help="A built-in search space (see `tuner spaces`) or the path of a YAML file.")
@click.option("--study", metavar="NAME", type=StudyName(),
              help="The study's name (default: the space's name): 1 to 200 printable "
                   "characters. A study that exists is resumed.")
@storage_option
@click.option("--trials", type=click.IntRange(min=1),
              help="The study's total budget of finished (complete + pruned) trials, counted "
                   "across runs, workers and machines: it is stored with the study, a study "
                   "that has them runs nothing, and `tuner worker` stops there too (default: "
                   "the space's `trials`). Failed trials do not count.")
@timeout_option
@device_option
@click.option("--seed", type=click.IntRange(min=0),
              help="The study's seed: data split, sampler and every trial's seed derive from "
                   "it (default: the space's `seed`).")
@click.option("--epochs", type=click.IntRange(min=1),
              help="Override the space's maximum epochs per trial.")
@click.option("--dataset", type=click.Choice(DATASET_NAMES),
              help="Override the space's dataset.")
@click.option("--data", metavar="PATH|MODULE:FUNCTION",
              help="Your own data instead of --dataset: a CSV, NPZ or Parquet file, or a "
                   "function returning (x, y) arrays or a dict of predefined splits.")
@click.option("--target", metavar="COLUMN", help="The target column of --data.")
@click.option("--task", "kind", type=click.Choice(["classification", "regression"]),
              help="The kind of target in --data (default: inferred from it).")
@click.option("--features", metavar="A,B,...",
              help="The feature columns of --data (default: every other column).")
@click.option("--aux-target", metavar="COLUMN",
              help="A column of --data for an auxiliary head (multi-task regularization, "
                   "weighted by the `aux_weight` parameter).")
@click.option("--model", metavar="mlp|cnn|MODULE:FUNCTION",
              help="The network: a built-in one, or your own builder "
                   "`build(config, input_shape, n_outputs) -> nn.Module` (it reads your "
                   "`user_params` as config.user[\"name\"]).")
@click.option("--loss", metavar="MODULE:FUNCTION",
              help="Your own data loss `loss(outputs, targets) -> scalar tensor` in place of "
                   "cross-entropy / MSE (the L1/L2 penalties are still added).")
@click.option("--metric", metavar="NAME|MODULE:FUNCTION",
              help="The validation metric: a built-in one (accuracy, cross_entropy, rmse, "
                   "mae) or your own `metric(outputs, targets) -> float` (give --direction).")
@click.option("--direction", type=click.Choice(["maximize", "minimize"]),
              help="Whether a larger or a smaller value is better, for your own metric or "
                   "objective (a built-in metric has its own).")
@click.option("--objective", metavar="MODULE:FUNCTION",
              help="Your own training function `fit(config, report) -> value`, called once "
                   "per trial instead of the tuner's loop; report(epoch, value, **metrics) "
                   "returns True when the trial should stop (pruned or early-stopped).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on this machine sharing the study.")
@click.option("--devices", type=GpuList(), metavar="0,1,...",
              help="GPUs for the workers, round-robin (default: every visible GPU).")
@click.option("--workers-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many workers may share one GPU.")
@click.option("--enqueue", "queued", multiple=True, metavar="JSON",
              help="A trial to run before any sampled one, its parameters as a JSON object "
                   "checked against the space, as `tuner enqueue --params` takes them "
                   "(repeat for several). Queued once: a study that already has a trial "
                   "with these parameters does not queue it again when it is resumed.")
@engine_option
@population_option
@precision_option
@compile_option
@checkpoint_option
@quiet_option
def start(space: str, study: str | None, storage: str, trials: int | None,
          timeout: float | None, device: str, seed: int | None, epochs: int | None,
          dataset: str | None, data: str | None, target: str | None, kind: str | None,
          features: str | None, aux_target: str | None, model: str | None,
          loss: str | None, metric: str | None, direction: str | None,
          objective: str | None, workers: int,
          devices: list[int] | None, workers_per_gpu: int, queued: tuple[str, ...],
          engine: str | None,
          population: int | None, precision: str | None, compile_models: bool | None,
          checkpoint_every: float,
          quiet: bool) -> None:
    """Run a study, or resume it, until it has its budget of finished trials.

    \b
    Examples:
      tuner start                                    # regularization on digits, SQLite
      tuner start --space quick --trials 20 --study demo
      tuner start --space regularization --trials 200 --study reg --seed 0
      tuner start --space quick --trials 100 --workers 4
      tuner start --space quick --trials 256 --engine fused --population 64
      tuner start --space quick --study demo --enqueue '{"lr": 0.01, "optimizer": "adam"}'
      tuner start --space quick --data my.csv --target label --model my_net.py:build
      tuner start --space my_space.yaml --objective my_train.py:fit --direction maximize
    """
    heap.defer_full_collections()  # until the first trial is done (tuner.run.heap)
    click.get_current_context().call_on_close(heap.settle)
    import torch
    from rich.console import Console

    from tuner.cli._display import summary_text
    from tuner.cli._enqueue import parse_params
    from tuner.cli._progress import run_display
    from tuner.run.enqueue import check_params
    from tuner.run.placement import assign_devices
    from tuner.run.start import plan_start, space_with
    from tuner.storage import display_url
    from tuner.train.device import resolve_device

    if data is not None and dataset is not None:
        raise UsageError(f"--data {data} and --dataset {dataset} both name the data: give one")
    given = {"seed": seed, "epochs": epochs, "dataset": dataset, "data": data,
             "target": target, "kind": kind, "features": features, "aux_target": aux_target,
             "model": model, "loss": loss, "metric": metric, "direction": direction,
             "objective": objective}
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    # Everything is validated before the database is touched; a bad option's message
    # names the option.
    named = {key: "--task" if key == "kind" else f"--{key.replace('_', '-')}" for key in given}
    parsed = space_with(space, overrides, named)
    first = [check_params(parsed, parse_params(text, "--enqueue"), "--enqueue")
             for text in queued]
    how = engine_spec(parsed.engine, engine, population, precision, compile_models)
    check_engine(parsed, how)
    placed = assign_devices(workers, device, gpus=devices, workers_per_gpu=workers_per_gpu,
                            cuda_count=torch.cuda.device_count())
    if workers == 1:
        placed = [str(resolve_device(device))]
    plan = plan_start(parsed, devices=placed, study_name=study, budget=trials, engine=how,
                      name_source=f"{parsed.source} (its name is the study's, unless --study "
                                  "gives one)")
    for warning in plan.warnings:
        click.echo(f"Warning: {warning}", err=True)
    opened = plan.open(storage, queued=first)
    console = Console(stderr=True)
    if not quiet:
        where = ", ".join(sorted(set(placed)))
        fused = f" · fused, {how.population} at once" if how.name == "fused" else ""
        fused += f" · {how.precision}" if how.precision != "fp32" else ""
        if how.compile:
            fused += " · compiled" if how.name == "sequential" else (
                " · compiled (trials trained one at a time)")
        console.print(f"Study [bold]{plan.study_name}[/] · space {parsed.source} · "
                      f"{what_trains(parsed)} · {plural(workers, 'worker')} on {where}{fused} · "
                      f"{display_url(opened.storage.url)}", highlight=False, soft_wrap=True)
        for note in start_notes(parsed, torch.device(placed[0])):
            console.print(f"  {note}", highlight=False, soft_wrap=True)
    with run_display(console, quiet) as progress:
        summary = opened.run(timeout=timeout, checkpoint_every=checkpoint_every,
                             on_start=progress.start, on_progress=progress.update)
    click.echo(summary_text(summary, parsed.task.metric))


def check_engine(space: Any, how: Any) -> None:
    """Refuse engine settings the space cannot use, before anything is written."""
    if how.name == "fused":
        from tuner.run.population import check_fusable

        check_fusable(space)
    if space.task.objective and (how.precision != "fp32" or how.compile):
        raise UsageError(f"--precision and --compile apply to the tuner's own training loop; "
                         f"the space's objective ({space.task.objective}) trains as it wants")


def what_trains(space: Any) -> str:
    """The start-up line's account of the data and the model (or training function)."""
    task = space.task
    data = task.data or task.dataset
    if task.objective:
        return f"{data} / objective {task.objective}"
    return f"{data} / {task.model}"


def start_notes(space: Any, device: Any) -> list[str]:
    """What a user should know before the trials run: how the data are read, and
    parameters of theirs that nothing reads."""
    from tuner.catalogue import MODELS
    from tuner.data.builtin import load_task_data

    notes = []
    task = space.task
    if not task.objective:
        data = load_task_data(task, 0, "cpu")  # as the space was checked: cached
        if not data.in_memory:
            notes.append("data: " + data.with_workers(space.engine.loader_workers).to(
                device).describe())
    if space.user_params and not task.objective and task.model in MODELS:
        names = ", ".join(p.name for p in space.user_params)
        notes.append(f"user_params ({names}) are searched and recorded, but no built-in "
                     f"model reads them: give --model or --objective of yours")
    return notes


@cli.command()
def spaces() -> None:
    """List the built-in search spaces, one line each."""
    from tuner.space import builtin_spaces, describe, load_space

    rows = []
    for name in builtin_spaces():
        space = load_space(name)
        searched = [p.name for p in space.all_params() if describe(p)[0] != "="]
        rows.append((name, f"{space.task.dataset}/{space.task.model}, "
                     f"{plural(space.trials, 'trial')}, "
                     f"{len(searched)} searched: {space.description}"))
    width = max(len(n) for n, _ in rows)
    for name, text in rows:
        click.echo(f"{name.ljust(width)}  {text}")

