"""``tuner worker``: join a study from any machine."""

from __future__ import annotations

import click

from tuner.cli import cli
from tuner.cli._options import (
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
from tuner.formatting import plural
from tuner.run import heap


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study to join.")
@storage_option
@click.option("--trials", type=click.IntRange(min=1),
              help="A cap on this worker alone: run at most this many trials here "
                   "(finished or failed), then stop. It is not the study's budget, which "
                   "`tuner start --trials` sets for every worker and which this one never "
                   "changes; the worker stops sooner when the budget is reached (default: "
                   "no cap, work until the budget is reached).")
@timeout_option
@device_option
@engine_option
@population_option
@precision_option
@compile_option
@checkpoint_option
@quiet_option
def worker(study: str, storage: str, trials: int | None, timeout: float | None, device: str,
           engine: str | None, population: int | None, precision: str | None,
           compile_models: bool | None,
           checkpoint_every: float, quiet: bool) -> None:
    """Join a study from any machine and work until its budget is reached.

    The worker reads the study's search space and budget (the total of finished trials
    set by `tuner start --trials`) from the database, so it needs nothing but the
    storage URL and the study's name. It trains as the space says (`engine`) unless
    --engine says otherwise: workers of one study may mix engines.

    \b
    Example:
      tuner worker --study reg --storage postgresql://user@dbhost/tuner
      tuner worker --study reg --storage postgresql://user@dbhost/tuner --engine fused
    """
    heap.defer_full_collections()  # until the first trial is done (tuner.run.heap)
    click.get_current_context().call_on_close(heap.settle)
    from rich.console import Console

    from tuner.cli._display import summary_text
    from tuner.cli._progress import run_display
    from tuner.cli._start import check_engine, what_trains
    from tuner.run.runner import run_study
    from tuner.run.study import stored_budget, stored_space
    from tuner.storage import TunerStorage, display_url
    from tuner.train.device import resolve_device

    torch_device = resolve_device(device)
    db = TunerStorage(storage).open()
    parsed = stored_space(db, study)
    budget = stored_budget(db, study) or parsed.trials
    how = engine_spec(parsed.engine, engine, population, precision, compile_models)
    check_engine(parsed, how)
    console = Console(stderr=True)
    if not quiet:
        cap = "" if trials is None else f", at most {plural(trials, 'trial')} here"
        console.print(f"Worker on {torch_device} · study [bold]{study}[/] · "
                      f"{what_trains(parsed)} · budget {budget}{cap} · "
                      f"{display_url(db.url)}", highlight=False, soft_wrap=True)
    with run_display(console, quiet) as progress:
        summary = run_study(parsed, storage=db, study_name=study, budget=budget,
                            device=torch_device, timeout=timeout, max_trials=trials,
                            checkpoint_every=checkpoint_every, engine=how,
                            on_start=progress.start, on_progress=progress.update)
    click.echo(summary_text(summary, parsed.task.metric, worker=True))
