"""``tuner enqueue``: queue a trial with parameters of yours, to run before sampled ones."""

from __future__ import annotations

import json
from typing import Any

import click

from tuner.cli import cli
from tuner.cli._options import storage_option
from tuner.errors import UsageError
from tuner.formatting import plural


@cli.command()
@click.option("--study", required=True, metavar="NAME",
              help="The study to queue the trial in. It must exist: for a new study, give "
                   "the parameters to `tuner start --enqueue` instead.")
@click.option("--params", "text", required=True, metavar="JSON",
              help="The trial's parameters as a JSON object, named as `tuner trials` shows "
                   "them, e.g. '{\"lr\": 0.01, \"optimizer\": \"adam\"}'. Each is checked "
                   "against the study's search space; those left out are sampled as usual.")
@storage_option
def enqueue(study: str, text: str, storage: str) -> None:
    """Queue a trial with the parameters you give, to run before any sampled trial.

    The next worker of the study to start a trial (`tuner start`, `tuner worker`, either
    engine) takes it first, so a configuration known to be good is evaluated early and
    gives the sampler a point to improve on. It counts against the study's budget like
    any trial. Nothing is written when a parameter is unknown or out of its range.

    \b
    Example:
      tuner enqueue --study reg --params '{"lr": 0.01, "optimizer": "adam", "dropout": 0.2}'
      tuner worker --study reg                      # runs the queued trial first
    """
    from tuner.run.enqueue import enqueue as enqueue_trial
    from tuner.storage import TunerStorage

    params = parse_params(text)
    db = TunerStorage(storage, create=False, heartbeat=False).open()
    queued = enqueue_trial(db, study, params)
    click.echo(f"Queued trial {queued.number} of study {study!r} (waiting): "
               f"{json.dumps(queued.params)}")
    if not queued.checked:
        click.echo("The study has no search space stored by tuner: the parameters were not "
                   "checked.")
    if queued.sampled:
        click.echo(f"Sampled when it runs: {', '.join(queued.sampled)}.")
    if queued.budget is not None and queued.finished >= queued.budget:
        click.echo(f"The study has its budget ({queued.finished} of "
                   f"{plural(queued.budget, 'trial')} finished): the trial runs once "
                   f"`tuner start` with the study's space raises --trials.")
    else:
        click.echo(f"It runs first at the next `tuner start` or `tuner worker --study {study}`.")


def parse_params(text: str, label: str = "--params") -> dict[str, Any]:
    """``--params`` as a mapping of names to values, or a one-line UsageError."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in items]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice is not None:
            raise UsageError(f"{label}: {twice!r} is given twice")
        return dict(items)

    try:
        params = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{label} is not valid JSON ({exc.msg} at position {exc.pos}): "
                         f"{text!r}; expected an object such as "
                         f"'{{\"lr\": 0.01, \"optimizer\": \"adam\"}}'") from None
    if not isinstance(params, dict):
        raise UsageError(f"{label} must be a JSON object such as '{{\"lr\": 0.01}}', but got "
                         f"{text!r}")
    return params
