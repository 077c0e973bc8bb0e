"""`tuner.optimize`: the Python API gives back the Optuna study `tuner start` would make."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

import tuner
from tuner.space import parse_space


def test_optimize_runs_the_budget_and_returns_the_study(tiny_path: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    study = tuner.optimize(tiny_path, n_trials=2, storage=url, study_name="api", epochs=3)
    assert isinstance(study, optuna.Study)
    assert study.study_name == "api"
    complete = [t for t in study.trials if t.state.is_finished()]
    assert len(complete) == 2
    assert all(len(t.intermediate_values) <= 3 for t in study.trials)
    # Resuming with the same space and a larger budget runs only the difference.
    again = tuner.optimize(tiny_path, n_trials=3, storage=url, study_name="api", epochs=3)
    assert len(again.trials) == 3


def test_optimize_takes_a_space_object_and_user_data(tiny_space: dict[str, Any],
                                                    tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 2))
    frame = pd.DataFrame(x, columns=["a", "b"]).assign(y=(x[:, 1] > 0).astype(int))
    frame.to_csv(tmp_path / "d.csv", index=False)
    space = parse_space(tiny_space, name="tiny", source="<test>")
    study = tuner.optimize(space, data=str(tmp_path / "d.csv"), target="y", n_trials=2,
                           storage="sqlite:///:memory:")
    assert study.study_name == "tiny"
    assert len(study.trials) == 2
    assert study.best_value == pytest.approx(max(t.value for t in study.trials
                                                 if t.value is not None))


def test_optimize_validates_overrides(tiny_path: Path) -> None:
    with pytest.raises(tuner.SpaceError):
        tuner.optimize(tiny_path, n_trials=1, storage="sqlite:///:memory:", epochs=0)


def test_optimize_with_the_fused_engine(tiny_path: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    study = tuner.optimize(tiny_path, n_trials=4, storage=url, study_name="fused",
                           engine={"name": "fused", "population": 2})
    assert [t.user_attrs.get("engine") for t in study.trials] == ["fused"] * 4
    assert all(t.state.is_finished() for t in study.trials)
    with pytest.raises(tuner.SpaceError, match="unknown engine 'turbo'"):
        tuner.optimize(tiny_path, n_trials=1, storage=url, study_name="bad", engine="turbo")
