"""``tuner export`` (a trial's model to a file), ``tuner predict`` and ``tuner rerun``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from tuner.cli import cli
from tuner.cli._options import db_int, storage_option
from tuner.errors import TunerError
from tuner.formatting import plural

trial_option = click.option(
    "--trial", "number", type=db_int(min=0), metavar="N",
    help="The trial's number (default: the study's best).")


@cli.command("export")
@click.option("--study", required=True, metavar="NAME", help="The study the trial belongs to.")
@trial_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), metavar="PATH",
              help="Where to write the model file (e.g. model.pt).")
@click.option("--fold-batchnorm", is_flag=True,
              help="Fold each BatchNorm into the layer before it: the same outputs, faster.")
@storage_option
def export_cmd(study: str, number: int | None, out: str, fold_batchnorm: bool,
               storage: str) -> None:
    """Write a trial's trained model, with its config and preprocessing, to one file.

    \b
    Examples:
      tuner export --study demo --out model.pt
      tuner export --study demo --trial 7 --out model.pt --fold-batchnorm
    Load it with `tuner.load_model("model.pt")`, or use `tuner predict`.
    """
    from tuner.export.from_study import build_payload
    from tuner.export.model_file import save_model
    from tuner.storage import TunerStorage

    db = TunerStorage(storage, create=False, heartbeat=False).open()
    payload = build_payload(db, study, number, fold=fold_batchnorm)
    path = save_model(out, payload)
    info = payload["info"]
    metric = str(info["metric"]).rpartition(":")[2]  # a function of yours: its name
    click.echo(f"Wrote trial {info['trial']} of study {study} ({metric} "
               f"{info['value']:.4g}) to {path}")


@cli.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              metavar="PATH", help="A model file written by `tuner export`.")
@click.option("--data", required=True, metavar="PATH",
              help="The raw features: a CSV, Parquet or NPZ (array 'x') file.")
@click.option("--out", type=click.Path(dir_okay=False), metavar="PATH",
              help="Write the predictions to this CSV file (default: standard output).")
@click.option("--features", metavar="A,B,...",
              help="The feature columns to read, in the model's order (default: those the "
                   "model was trained with, or every column).")
@click.option("--proba", is_flag=True,
              help="Also write each class's probability, one column per class "
                   "(proba_<label>), after the prediction.")
@click.option("--trust-code", is_flag=True,
              help="Run the source of a network of yours that the file carries, when its "
                   "builder is not importable here with the same source. Only for files "
                   "whose origin you trust: it is code.")
def predict(model_path: str, data: str, out: str | None, features: str | None, proba: bool,
            trust_code: bool) -> None:
    """Predict labels (or values) for raw features with an exported model.

    \b
    Examples:
      tuner predict --model model.pt --data new.csv
      tuner predict --model model.pt --data new.csv --out predictions.csv --proba
    """
    from tuner.export.from_study import load_model, payload_features
    from tuner.export.model_file import read_payload
    from tuner.export.predict import predict_rows, probability_rows, read_features

    model = load_model(model_path, trust_code=trust_code)
    names, n_features = payload_features(read_payload(model_path))
    chosen = [c.strip() for c in features.split(",") if c.strip()] if features else None
    x = read_features(data, names, n_features, chosen)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if proba:
        labels, predictions, probabilities = probability_rows(model, x)
        writer.writerow(["prediction", *(f"proba_{label}" for label in labels)])
        writer.writerows([p, *row] for p, row in zip(predictions, probabilities, strict=True))
    else:
        predictions = predict_rows(model, x)
        writer.writerow(["prediction"])
        writer.writerows([p] for p in predictions)
    if out is None:
        click.echo(buffer.getvalue(), nl=False)
        return
    try:
        Path(out).write_text(buffer.getvalue())
    except OSError as exc:
        raise click.BadParameter(f"cannot write {out}: {exc.strerror}",
                                 param_hint="--out") from None
    click.echo(f"Wrote {len(x)} predictions to {out}", err=True)


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study the trial belongs to.")
@click.option("--trial", "number", required=True, type=db_int(min=0), metavar="N",
              help="The trial's number.")
@storage_option
def rerun(study: str, number: int, storage: str) -> None:
    """Train a trial again on the CPU (same config, seed, split and precision, no
    pruning) and check that every epoch's validation metric equals the recorded one.

    Exits 0 when the curves are identical, 1 when they differ. Trials trained one at a
    time on a CPU, uncompiled, replay exactly; for a trial trained on a GPU, in a fused
    population or compiled, the error says so.

    \b
    Example:
      tuner rerun --study demo --trial 3
    """
    from tuner.export.rerun import rerun_trial
    from tuner.storage import TunerStorage

    db = TunerStorage(storage, create=False, heartbeat=False).open()
    replay = rerun_trial(db, study, number)
    click.echo(f"{'epoch':>5}  {'recorded':>20}  {'rerun':>20}  equal")
    for epoch, recorded, again, equal in replay.rows():
        click.echo(f"{epoch:>5}  {_num(recorded):>20}  {_num(again):>20}  "
                   f"{'yes' if equal else 'NO'}")
    if not replay.matches:
        differ = sum(not row[3] for row in replay.rows())
        why = ("; ".join(replay.caveats) + "; only trials trained one at a time on a CPU, "
               "uncompiled, replay exactly" if replay.caveats else
               "it ran on the CPU, one at a time, uncompiled, so it should have: another "
               "torch version or CPU may round differently")
        raise TunerError(f"trial {number} of study {study!r} did not reproduce: {differ} of "
                         f"{plural(len(replay.rows()), 'epoch')} differ ({why})")
    click.echo(f"Trial {number} reproduced exactly ({plural(len(replay.rerun), 'epoch')}).")


def _num(value: float | None) -> str:
    return "-" if value is None else repr(value)
