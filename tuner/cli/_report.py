"""``tuner report``: an HTML report with interactive plots, and the plots as PNG files."""

from __future__ import annotations

from pathlib import Path

import click

from tuner.cli import cli
from tuner.cli._options import storage_option, study_option
from tuner.cli._query import open_readonly


@cli.command()
@study_option
@storage_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"),
              show_default=True, help="The folder to write index.html and the PNG files to.")
def report(study: str, storage: str, out: Path) -> None:
    """Write an HTML report of a study: a summary, then interactive plots.

    Optimization history, learning curves of the best and of pruned trials, parameter
    importances, parallel coordinates, slices of the regularization strengths, the
    validation metric by optimizer, by schedule, and against L2 by batch normalization;
    each also as a PNG file beside the page. Parallel coordinates show the 8 most
    important parameters, the history's y-axis leaves outlying trials out, and a chart
    grouped by a parameter is drawn only when that parameter varies: each plot's caption,
    and the page's "Left out" list, say what was left out.

    \b
    Example:
      tuner report --study reg --out report/
    """
    from tuner.report import write_report

    files = write_report(open_readonly(storage), study, out)
    click.echo(f"Wrote {files.html} and {len(files.pngs)} PNG files.")
    for reason in files.skipped:
        click.echo(f"  left out: {reason}")
