"""Options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from tuner.formatting import FORMATS
from tuner.storage import DEFAULT_STORAGE

storage_option: Callable[[Any], Any] = click.option(
    "--storage", envvar="TUNER_STORAGE", default=DEFAULT_STORAGE, show_default=True,
    show_envvar=True, metavar="URL",
    help="The study database, as an SQLAlchemy URL: sqlite:///path.db for one machine, "
         "postgresql://user@host/db to share studies across machines.")

study_option: Callable[[Any], Any] = click.option(
    "--study", "study", required=True, metavar="NAME", help="The study to read.")

format_option: Callable[[Any], Any] = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
    help="Output as an aligned table, CSV (pandas reads it back) or JSON (jq reads it).")
