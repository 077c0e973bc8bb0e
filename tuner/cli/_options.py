"""Options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from tuner.catalogue import DB_INT_MAX, DEFAULT_STORAGE, ENGINES, PRECISIONS
from tuner.formatting import FORMATS

if TYPE_CHECKING:
    from tuner.space import EngineSpec


def db_int(min: int) -> click.IntRange:
    """An integer option compared with the database's integers: one past what a column
    holds is refused as out of range, not by the database driver."""
    return click.IntRange(min=min, max=DB_INT_MAX)


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


class StudyName(click.ParamType):
    """A name for a new study (see ``tuner.run.study.study_name_problem``)."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        from tuner.run.study import study_name_problem

        problem = study_name_problem(str(value))
        if problem is not None:
            self.fail(problem, param, ctx)
        return str(value)


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


timeout_option: Callable[[Any], Any] = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
    help="Start no new trial after this many seconds.")

device_option: Callable[[Any], Any] = click.option(
    "--device", default="auto", show_default=True, envvar="TUNER_DEVICE",
    help="Where trials train: auto (CUDA when present), cpu, cuda or cuda:N.")

quiet_option: Callable[[Any], Any] = click.option(
    "--quiet", "-q", is_flag=True,
    help="No progress (the bar on a terminal, a line per finished trial in a log or a "
         "pipe); print only the summary.")


engine_option: Callable[[Any], Any] = click.option(
    "--engine", type=click.Choice(ENGINES),
    help="How trials train: one at a time, or a population at once as one batched model "
         "(fused: the built-in mlp; fills a GPU, or a CPU core, with small models). "
         "Default: the space's `engine`, else sequential.")

population_option: Callable[[Any], Any] = click.option(
    "--population", type=click.IntRange(min=1), metavar="K",
    help="With --engine fused: how many trials train at once per worker (default: the "
         "space's `engine.population`, else 32).")


precision_option: Callable[[Any], Any] = click.option(
    "--precision", type=click.Choice(PRECISIONS),
    help="fp32; bf16: mixed precision, the matrix products in bfloat16 and the weights "
         "in float32; fp16: the same in float16, with dynamic loss scaling (a step whose "
         "gradients overflow is skipped). bf16 pays where bfloat16 products are fast "
         "(recent GPUs; CPUs with AVX512-BF16 or AMX, for the fused engine), fp16 on GPUs "
         "(CPUs without AVX512-FP16 emulate it, slowly); see `tuner bench --precision`. "
         "Default: the space's `engine.precision`, else fp32.")


compile_option: Callable[[Any], Any] = click.option(
    "--compile/--no-compile", "compile_models", default=None,
    help="Compile each trial's model with torch.compile (trials trained one at a time; "
         "the fused engine runs its own batched step). Each worker compiles once per "
         "architecture, which takes seconds: it pays for long trials where compiled "
         "kernels are faster; see `tuner bench --compile`. Default: the space's "
         "`engine.compile`, else off.")


def engine_spec(default: EngineSpec, engine: str | None, population: int | None,
                precision: str | None = None, compile_models: bool | None = None) -> EngineSpec:
    """The engine a command runs: ``default`` (the space's) with the options given."""
    if population is not None and (engine or default.name) != "fused":
        raise click.UsageError("--population applies to --engine fused")
    return replace(default, name=engine or default.name,
                   population=population or default.population,
                   precision=precision or default.precision,
                   compile=default.compile if compile_models is None else compile_models)
