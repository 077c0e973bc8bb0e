"""The ``tuner`` command line: thin commands over the library.

Commands parse options, call the library and format its output. Library errors
(:class:`~tuner.errors.TunerError`) become one line on stderr and an exit code:
2 for usage errors, 1 for runtime errors.
"""

from __future__ import annotations

import shlex
import signal
import threading
from types import FrameType
from typing import Any

import click

from tuner.errors import TunerError
from tuner.logs import quiet_optuna


class TunerGroup(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["tuner.argv"] = list(args)  # for the line that says how to resume
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        # SIGTERM (a scheduler, `timeout`, systemd) stops a command as Ctrl-C does: the
        # running trials are failed and queued again, nothing is left RUNNING.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
        try:
            return super().invoke(ctx)
        except TunerError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            # One line, as for the tuner's own errors, instead of click's usage block.
            where = exc.ctx.command_path if exc.ctx is not None else "tuner"
            click.echo(f"Error: {exc.format_message()} (see: {where} --help)", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(_interrupted(ctx), err=True)
            ctx.exit(130)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _interrupted(ctx: click.Context) -> str:
    """The line a stopped command ends with; for those that run trials, how to resume."""
    if ctx.invoked_subcommand not in ("start", "worker"):
        return "Interrupted."
    command = shlex.join(["tuner", *ctx.meta.get("tuner.argv", [ctx.invoked_subcommand])])
    return ("Interrupted: the trials that were running are queued to run again (from their "
            f"last checkpoint). Resume with: {command}")


@click.group(cls=TunerGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "max_content_width": 100})
@click.version_option(package_name="tuner")
def cli() -> None:
    """Tune how a PyTorch network is regularized and trained, with Optuna.

    Start with `tuner start` (the built-in `regularization` study on digits), then look
    at the results with `tuner studies`, `tuner trials` and `tuner best`.
    """
    quiet_optuna()



def main() -> None:
    """The ``tuner`` command."""
    from tuner.run import heap

    heap.freeze_at_exit()
    cli(prog_name="tuner")


from tuner.cli import (  # noqa: E402, F401  (registers the commands)
    _bench,
    _bench_query,
    _copy,
    _dashboard,
    _database,
    _enqueue,
    _export,
    _query,
    _report,
    _start,
    _worker,
)
