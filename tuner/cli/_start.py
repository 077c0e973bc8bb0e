"""``tuner start`` and ``tuner spaces``."""

from __future__ import annotations

from typing import Any

import click
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tuner.cli import cli
from tuner.cli._options import storage_option
from tuner.data import DATASETS
from tuner.device import resolve_device
from tuner.placement import assign_devices
from tuner.pool import run_pool
from tuner.runner import RunSummary, Snapshot, run_study
from tuner.space import builtin_spaces, load_space
from tuner.space._params import describe
from tuner.storage import TunerStorage, display_url
from tuner.study import open_study, save_budget, stored_budget, stored_space


class GpuList(click.ParamType):
    """A comma-separated list of GPU indices, e.g. ``0,1,3``."""

    name = "gpus"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            gpus = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"expected GPU indices such as 0,1, but got {value!r}", param, ctx)
        if not gpus or min(gpus) < 0:
            self.fail(f"expected GPU indices such as 0,1, but got {value!r}", param, ctx)
        return gpus


checkpoint_option = click.option(
    "--checkpoint-every", type=click.FloatRange(min=0), default=30.0, show_default=True,
    metavar="SECONDS",
    help="Save a running trial's model and optimizer this often, so that a retry after a "
         "crash resumes from there instead of epoch 0.")


@cli.command()
@click.option("--space", default="regularization", show_default=True, metavar="NAME|PATH",
              help="A built-in search space (see `tuner spaces`) or the path of a YAML file.")
@click.option("--study", metavar="NAME",
              help="The study's name (default: the space's name). A study that exists is "
                   "resumed.")
@storage_option
@click.option("--trials", type=click.IntRange(min=1),
              help="The study's total budget of finished (complete + pruned) trials, across "
                   "runs and workers (default: the space's `trials`).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Start no new trial after this many seconds.")
@click.option("--device", default="auto", show_default=True, envvar="TUNER_DEVICE",
              help="Where trials train: auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--seed", type=click.IntRange(min=0),
              help="The study's seed: data split, sampler and every trial's seed derive from "
                   "it (default: the space's `seed`).")
@click.option("--epochs", type=click.IntRange(min=1),
              help="Override the space's maximum epochs per trial.")
@click.option("--dataset", type=click.Choice(list(DATASETS)),
              help="Override the space's dataset.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on this machine sharing the study.")
@click.option("--devices", type=GpuList(), metavar="0,1,...",
              help="GPUs for the workers, round-robin (default: every visible GPU).")
@click.option("--workers-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many workers may share one GPU.")
@checkpoint_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the summary.")
def start(space: str, study: str | None, storage: str, trials: int | None,
          timeout: float | None, device: str, seed: int | None, epochs: int | None,
          dataset: str | None, workers: int, devices: list[int] | None, workers_per_gpu: int,
          checkpoint_every: float, quiet: bool) -> None:
    """Run a study, or resume it, until it has its budget of finished trials.

    \b
    Examples:
      tuner start                                    # regularization on digits, SQLite
      tuner start --space quick --trials 20 --study demo
      tuner start --space regularization --trials 200 --study reg --seed 0
      tuner start --space quick --trials 100 --workers 4
    """
    overrides: dict[str, Any] = {}
    if seed is not None:
        overrides["seed"] = seed
    if epochs is not None:
        overrides["epochs"] = epochs
    if dataset is not None:
        overrides["dataset"] = dataset
    # Everything is validated before the database is touched.
    parsed = load_space(space, overrides)
    placed = assign_devices(workers, device, gpus=devices, workers_per_gpu=workers_per_gpu,
                            cuda_count=torch.cuda.device_count())
    if workers == 1:
        placed = [str(resolve_device(device))]
    name = study or parsed.name
    budget = trials or parsed.trials
    db = TunerStorage(storage).open()
    opened = open_study(db, parsed, name)
    save_budget(opened, budget)
    console = Console(stderr=True)
    if not quiet:
        where = ", ".join(sorted(set(placed)))
        console.print(f"Study [bold]{name}[/] · space {parsed.source} · {parsed.task.dataset} "
                      f"/ {parsed.task.model} · {workers} worker(s) on {where} · "
                      f"{display_url(db.url)}")
    with _progress(console, quiet) as progress:
        if workers == 1:
            summary = run_study(parsed, storage=db, study_name=name, budget=budget,
                                device=torch.device(placed[0]), timeout=timeout,
                                checkpoint_every=checkpoint_every,
                                on_start=progress.start, on_progress=progress.update)
        else:
            summary = run_pool(db, opened, budget, placed, timeout=timeout,
                               checkpoint_every=checkpoint_every,
                               on_start=progress.start, on_progress=progress.update)
    click.echo(_summary(summary, parsed.task.metric))


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study to join.")
@storage_option
@click.option("--trials", type=click.IntRange(min=1),
              help="Run at most this many trials here (default: work until the study's "
                   "budget is reached).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Start no new trial after this many seconds.")
@click.option("--device", default="auto", show_default=True, envvar="TUNER_DEVICE",
              help="Where this worker trains: auto (CUDA when present), cpu, cuda or cuda:N.")
@checkpoint_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the summary.")
def worker(study: str, storage: str, trials: int | None, timeout: float | None, device: str,
           checkpoint_every: float, quiet: bool) -> None:
    """Join a study from any machine and work until its budget is reached.

    The worker reads the study's search space and budget from the database, so it
    needs nothing but the storage URL and the study's name.

    \b
    Example:
      tuner worker --study reg --storage postgresql://user@dbhost/tuner
    """
    torch_device = resolve_device(device)
    db = TunerStorage(storage).open()
    parsed = stored_space(db, study)
    budget = stored_budget(db, study) or parsed.trials
    console = Console(stderr=True)
    with _progress(console, quiet) as progress:
        summary = run_study(parsed, storage=db, study_name=study, budget=budget,
                            device=torch_device, timeout=timeout, max_trials=trials,
                            checkpoint_every=checkpoint_every,
                            on_start=progress.start, on_progress=progress.update)
    click.echo(_summary(summary, parsed.task.metric))


class _progress:
    """A rich progress bar fed by the runner's snapshots (silent when quiet)."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.bar = None if quiet else Progress(
            TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, transient=False)
        self.task: TaskID | None = None

    def __enter__(self) -> _progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start(self, s: Snapshot) -> None:
        if self.bar is not None:
            self.task = self.bar.add_task("trials", total=s.budget, completed=s.finished,
                                          info=self._info(s))

    def update(self, s: Snapshot) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=min(s.finished, s.budget), info=self._info(s))

    @staticmethod
    def _info(s: Snapshot) -> str:
        best = "-" if s.best_value is None else f"{s.best_value:.4g}"
        failed = f" · failed {s.failed}" if s.failed else ""
        return f"pruned {s.pruned}{failed} · best {best}"


def _summary(s: RunSummary, metric: str) -> str:
    name = s.study_name
    if s.stop_reason == "already_done":
        head = (f"Study {name!r} already has {s.finished} finished trials (budget {s.budget}): "
                f"nothing to do. Raise --trials to run more.")
    else:
        why = " (timeout)" if s.stop_reason == "timeout" else ""
        head = (f"Study {name!r}: ran {s.ran} trials in {_duration(s.elapsed)}{why}; "
                f"{s.finished}/{s.budget} finished ({s.pruned} pruned, {s.failed} failed).")
    lines = [head]
    if s.best is not None:
        test = "" if s.test_metric is None else f", test {metric} {s.test_metric:.4f}"
        epoch = "" if s.best_epoch is None else f" (epoch {s.best_epoch})"
        lines.append(f"Best trial #{s.best.number}: validation {metric} {s.best.value:.4f}"
                     f"{test}{epoch}")
        width = max(len(k) for k in s.best.params) if s.best.params else 0
        lines += [f"  {k.ljust(width)}  {_value(v)}" for k, v in s.best.params.items()]
    lines.append(f"More: tuner trials --study {name}  ·  tuner best --study {name}")
    return "\n".join(lines)


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f}s"


@cli.command()
def spaces() -> None:
    """List the built-in search spaces, one line each."""
    rows = []
    for name in builtin_spaces():
        space = load_space(name)
        searched = [p.name for p in space.all_params() if describe(p)[0] != "="]
        rows.append((name, f"{space.task.dataset}/{space.task.model}, {space.trials} trials, "
                     f"{len(searched)} searched: {space.description}"))
    width = max(len(n) for n, _ in rows)
    for name, text in rows:
        click.echo(f"{name.ljust(width)}  {text}")

