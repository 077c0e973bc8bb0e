"""`tuner export` / `tuner predict` and `tuner.load_model`, on a tiny study: the loaded
model must give what the trial's stored weights give, and its test accuracy."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result

import tuner
from tuner.cli import cli
from tuner.data.builtin import load_splits
from tuner.storage import TunerStorage, trial_info
from tuner.train.loop import evaluate
from tuner.train.metrics import METRICS


def _invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cli, list(args))


@pytest.fixture
def study(runner: CliRunner, write_space: Any, tiny_space: dict[str, Any],
          storage_url: str) -> dict[str, Any]:
    """A 3-trial iris study with batch norm (so that folding has work to do)."""
    tiny_space["params"]["batchnorm"] = True
    tiny_space["task"]["epochs"] = 3
    path = write_space(tiny_space)
    result = _invoke(runner, "start", "--space", str(path), "--study", "s", "--storage",
                     storage_url, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    db = TunerStorage(storage_url, create=False, heartbeat=False).open()
    best = db.optuna.get_best_trial(db.optuna.get_study_id_from_name("s"))
    return {"url": storage_url, "db": db, "best": best}


def _export(runner: CliRunner, study: dict[str, Any], out: Path, *extra: str) -> Result:
    return _invoke(runner, "export", "--study", "s", "--out", str(out), "--storage",
                   study["url"], *extra)


def _raw_test(seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """Iris's test split as raw (unstandardized) features, and its class indices."""
    data = load_splits("iris", seed=seed)
    return (data.x_test * data.x_std + data.x_mean).numpy(), data.y_test


def test_export_load_matches_the_stored_weights_and_test_metric(
        runner: CliRunner, study: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    result = _export(runner, study, out)
    assert result.exit_code == 0, result.output
    model = tuner.load_model(out)
    assert not model.training
    assert model.info["trial"] == study["best"].number

    # The reference: the trial's stored weights in a fresh network, inputs standardized by hand.
    db: TunerStorage = study["db"]
    state = torch.load(io.BytesIO(db.load_model_blob(study["best"]._trial_id)),
                       weights_only=True)
    from tuner.export.from_study import build_network
    from tuner.export.model_file import read_payload

    payload = read_payload(out)
    reference = build_network(payload["spec"], payload["config"])
    reference.load_state_dict(state)
    reference.eval()
    data = load_splits("iris", seed=0)
    x_raw, y = _raw_test()
    expected = reference((torch.as_tensor(x_raw, dtype=torch.float32) - data.x_mean)
                         / data.x_std)
    got = model(torch.as_tensor(x_raw))
    torch.testing.assert_close(got, expected)

    with db.session() as conn:
        stored = conn.execute(trial_info.select().with_only_columns(trial_info.c.test_metric)
                              .where(trial_info.c.trial_id == study["best"]._trial_id)).scalar()
    _, recomputed = evaluate(model.network, (torch.as_tensor(x_raw, dtype=torch.float32)
                                             - model.x_mean) / model.x_std, y,
                             "classification", METRICS["accuracy"])
    assert float(recomputed) == stored
    accuracy = np.mean(np.asarray(model.predict(x_raw)) == np.asarray(data.classes)[y.numpy()])
    assert accuracy == pytest.approx(stored)


def test_folded_export_gives_the_same_outputs(runner: CliRunner, study: dict[str, Any],
                                             tmp_path: Path) -> None:
    plain, folded = tmp_path / "plain.pt", tmp_path / "folded.pt"
    assert _export(runner, study, plain).exit_code == 0
    result = _export(runner, study, folded, "--fold-batchnorm")
    assert result.exit_code == 0, result.output
    a, b = tuner.load_model(plain), tuner.load_model(folded)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in a.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in b.modules())
    x = torch.as_tensor(_raw_test()[0])
    torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-5)


def test_a_trial_without_weights_points_to_rerun(runner: CliRunner, study: dict[str, Any],
                                                 tmp_path: Path) -> None:
    db: TunerStorage = study["db"]
    sid = db.optuna.get_study_id_from_name("s")
    without = [t.number for t in db.optuna.get_all_trials(sid)
               if db.load_model_blob(t._trial_id) is None]
    assert without, "every trial became the best in turn; the test needs one that did not"
    result = _export(runner, study, tmp_path / "m.pt", "--trial", str(without[0]))
    assert result.exit_code == 2
    assert "only trials that became the study's best" in result.output
    assert "tuner rerun" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_predict_writes_labels(runner: CliRunner, study: dict[str, Any], tmp_path: Path) -> None:
    model_path = tmp_path / "model.pt"
    assert _export(runner, study, model_path).exit_code == 0
    x_raw, _ = _raw_test()
    pd.DataFrame(x_raw, columns=["a", "b", "c", "d"]).to_csv(tmp_path / "x.csv", index=False)
    result = _invoke(runner, "predict", "--model", str(model_path), "--data",
                     str(tmp_path / "x.csv"))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    expected = tuner.load_model(model_path).predict(x_raw)
    assert [int(r["prediction"]) for r in rows] == expected

    out = tmp_path / "pred.csv"
    result = _invoke(runner, "predict", "--model", str(model_path), "--data",
                     str(tmp_path / "x.csv"), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["prediction"].tolist() == expected


def test_predict_errors_are_one_line(runner: CliRunner, study: dict[str, Any],
                                     tmp_path: Path) -> None:
    model_path = tmp_path / "model.pt"
    assert _export(runner, study, model_path).exit_code == 0
    pd.DataFrame({"a": [1.0], "b": [2.0]}).to_csv(tmp_path / "two.csv", index=False)
    result = _invoke(runner, "predict", "--model", str(model_path), "--data",
                     str(tmp_path / "two.csv"))
    assert result.exit_code == 2
    assert "takes 4 features, but the file has 2" in result.output
    result = _invoke(runner, "predict", "--model", str(tmp_path / "two.csv"), "--data",
                     str(tmp_path / "two.csv"))
    assert result.exit_code == 2 and "not a tuner model file" in result.output


def test_user_data_model_predicts_original_labels_by_column_name(
        runner: CliRunner, write_space: Any, tiny_space: dict[str, Any], storage_url: str,
        tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    frame = pd.DataFrame(x, columns=["f1", "f2", "f3"])
    frame["label"] = np.where(x[:, 0] > 0, "yes", "no")
    frame.to_csv(tmp_path / "train.csv", index=False)
    result = _invoke(runner, "start", "--space", str(write_space(tiny_space)), "--study", "u",
                     "--storage", storage_url, "--device", "cpu", "--quiet", "--data",
                     str(tmp_path / "train.csv"), "--target", "label", "--trials", "2")
    assert result.exit_code == 0, result.output
    model_path = tmp_path / "u.pt"
    result = _invoke(runner, "export", "--study", "u", "--out", str(model_path), "--storage",
                     storage_url)
    assert result.exit_code == 0, result.output
    # Columns in another order, plus the target: read by name.
    frame[["label", "f3", "f1", "f2"]].to_csv(tmp_path / "new.csv", index=False)
    result = _invoke(runner, "predict", "--model", str(model_path), "--data",
                     str(tmp_path / "new.csv"))
    assert result.exit_code == 0, result.output
    predictions = list(csv.DictReader(io.StringIO(result.output)))
    assert {r["prediction"] for r in predictions} <= {"yes", "no"}
    assert [r["prediction"] for r in predictions] == tuner.load_model(model_path).predict(x)


def test_weights_are_stored_exactly_for_the_trials_with_a_test_metric(
        study: dict[str, Any]) -> None:
    db: TunerStorage = study["db"]
    with db.session() as conn:
        rows = conn.execute(trial_info.select().with_only_columns(
            trial_info.c.trial_id, trial_info.c.test_metric)).all()
    assert {t for t, m in rows if m is not None} == {
        t for t, _ in rows if db.load_model_blob(t) is not None}
    assert db.load_model_blob(study["best"]._trial_id) is not None
