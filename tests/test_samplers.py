"""Samplers and pruners by name: the right Optuna class, with what the space implies."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from tuner.run.runner import run_study
from tuner.space import PrunerSpec, Space, load_space, parse_space, sample
from tuner.space.sampling import PRUNERS, SAMPLERS, build_pruner, build_sampler, grid_size
from tuner.storage import TunerStorage

TASK = {"dataset": "iris", "epochs": 4}


def _space(**raw: Any) -> Space:
    return parse_space({"task": TASK, **raw}, name="test", source="test.yaml")


# --- samplers -------------------------------------------------------------------------------

SAMPLER_CLASSES = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "grid": optuna.samplers.GridSampler,
}


def test_every_sampler_name_is_known() -> None:
    assert set(SAMPLERS) == set(SAMPLER_CLASSES)


@pytest.mark.parametrize("name", sorted(SAMPLER_CLASSES))
def test_build_sampler_returns_the_optuna_class(name: str) -> None:
    space = _space(sampler={"name": name},
                   params={"hidden": {"low": 8, "high": 16}, "dropout": {"choices": [0.0, 0.2]}})
    assert isinstance(build_sampler(space), SAMPLER_CLASSES[name])


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes", "gp", "qmc"])
def test_sampler_options_reach_optuna(name: str) -> None:
    options = {"tpe": {"n_startup_trials": 3}, "random": {}, "cmaes": {"n_startup_trials": 2},
               "gp": {"n_startup_trials": 4}, "qmc": {"qmc_type": "halton"}}[name]
    space = _space(sampler={"name": name, **options})
    assert dict(space.sampler.options) == options
    assert isinstance(build_sampler(space), SAMPLER_CLASSES[name])


def _draws(sampler: optuna.samplers.BaseSampler, space: Space, n: int = 5) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=sampler)
    return [sample(space.params, study.ask()) for _ in range(n)]


def test_sampler_is_seeded_per_trial_from_the_space() -> None:
    space = _space(seed=5, sampler={"name": "random"},
                   params={"lr": {"low": 1e-4, "high": 1e-1, "log": True},
                           "hidden": {"low": 8, "high": 64}})
    draws = _draws(build_sampler(space), space)
    assert draws == _draws(build_sampler(space), space)  # reproducible from the seed
    assert draws != _draws(build_sampler(_space(seed=6, sampler={"name": "random"},
                                                params=space.raw["params"])), space)
    assert len({tuple(d.items()) for d in draws}) == 5
    # A trial's draws do not depend on what other trials drew meanwhile: asking a whole
    # population first (the fused engine), then sampling it backwards, draws the same.
    study = optuna.create_study(sampler=build_sampler(space))
    trials = [study.ask() for _ in range(5)]
    backwards = [sample(space.params, trial) for trial in reversed(trials)]
    assert backwards[::-1] == draws


def test_workers_loading_a_study_at_once_draw_different_configurations() -> None:
    """Two samplers built alike (two workers that load the study at the same moment)
    on one study: each trial's draws come from its number, so no two coincide."""
    for name in ("random", "tpe", "qmc", "cmaes"):
        space = _space(seed=3, sampler={"name": name},
                       params={"lr": {"low": 1e-4, "high": 1e-1, "log": True},
                               "dropout": {"low": 0.0, "high": 0.5}})
        storage = optuna.storages.InMemoryStorage()
        first = optuna.create_study(storage=storage, sampler=build_sampler(space))
        second = optuna.load_study(study_name=first.study_name, storage=storage,
                                   sampler=build_sampler(space))
        trials = [study.ask() for _ in range(3) for study in (first, second)]
        params = [tuple(sample(space.params, trial).items()) for trial in trials]
        assert len(set(params)) == len(params), name


def test_sampler_own_seed_wins_over_the_space_seed() -> None:
    own = _space(seed=5, sampler={"name": "random", "seed": 11},
                 params={"lr": {"low": 1e-4, "high": 1e-1, "log": True}})
    same = _space(seed=11, sampler={"name": "random"}, params=own.raw["params"])
    assert _draws(build_sampler(own), own) == _draws(build_sampler(same), same)


@pytest.mark.parametrize("sampler", [
    {"name": "tpe"},
    {"name": "tpe", "multivariate": True},
    {"name": "tpe", "multivariate": False},
    {"name": "tpe", "group": False},
    {"name": "random"},
    {"name": "cmaes"},
    {"name": "qmc"},
], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_every_accepted_sampler_builds_with_conditional_params(sampler: dict[str, Any]) -> None:
    """A space the loader accepts must give a sampler that builds: the loader is the edge
    where bad settings are refused, not `tuner start` halfway through opening a study."""
    space = _space(sampler=sampler, params={
        "optimizer": {"choices": {"adam": {}, "momentum": {"momentum": {"low": 0.5,
                                                                           "high": 0.9}}}},
    })
    built = build_sampler(space)
    assert isinstance(built, SAMPLER_CLASSES[sampler["name"]])


@pytest.mark.parametrize("name", sorted(SAMPLER_CLASSES))
def test_every_sampler_runs_a_study_past_its_startup_trials(name: str, tmp_path: Path) -> None:
    """Each sampler the space accepts samples a study through to its end, past the trials
    it draws at random first (cmaes imports its own package only then)."""
    settings: dict[str, Any] = {"name": name}
    params: dict[str, Any] = {"hidden": 8, "layers": 1,
                              "lr": {"low": 1e-3, "high": 1e-1, "log": True},
                              "dropout": {"low": 0.0, "high": 0.3}}
    if name == "grid":
        params |= {"lr": {"choices": [1e-3, 1e-2]}, "dropout": {"choices": [0.0, 0.2]}}
    elif name in ("tpe", "cmaes", "gp"):
        settings["n_startup_trials"] = 1
    space = parse_space({"task": {"dataset": "iris", "epochs": 1}, "sampler": settings,
                         "pruner": {"name": "none"}, "params": params},
                        name="s", source="test.yaml")
    storage = TunerStorage(f"sqlite:///{tmp_path / 'tuner.db'}").open()
    summary = run_study(space, storage=storage, study_name="s", budget=4,
                        device=torch.device("cpu"))
    assert summary.finished == 4 and summary.failed == 0


# --- grid -----------------------------------------------------------------------------------

GRID_PARAMS = {
    "hidden": {"low": 8, "high": 24, "step": 8},  # 8, 16, 24
    "layers": {"low": 1, "high": 2},  # 1, 2
    "optimizer": {"choices": ["adam", "sgd"]},
    "dropout": {"low": 0.0, "high": 0.2, "step": 0.1},  # 0.0, 0.1, 0.2
    "lr": 1e-3,  # fixed: not a grid axis
}


def test_grid_size_is_the_product_of_the_axes() -> None:
    space = _space(sampler={"name": "grid"}, params=GRID_PARAMS)
    assert grid_size(space) == 3 * 2 * 2 * 3
    assert grid_size(_space(sampler={"name": "grid"}, params={"lr": 1e-3})) == 1


def test_grid_sampler_visits_every_point_once() -> None:
    space = _space(sampler={"name": "grid"}, params=GRID_PARAMS)
    sampler = build_sampler(space)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    study = optuna.create_study(sampler=sampler)
    seen: list[tuple[Any, ...]] = []

    def objective(trial: optuna.Trial) -> float:
        values = sample(space.params, trial)
        assert values["lr"] == 1e-3
        seen.append((values["hidden"], values["layers"], values["optimizer"],
                     round(values["dropout"], 9)))
        return 0.0

    # The tuner caps a grid study's budget at the grid's size (it does not rely on
    # Optuna's study.stop(), which only works inside Study.optimize).
    study.optimize(objective, n_trials=grid_size(space))
    expected = set(itertools.product((8, 16, 24), (1, 2), ("adam", "sgd"), (0.0, 0.1, 0.2)))
    assert len(seen) == grid_size(space)
    assert set(seen) == expected


def test_grid_sampler_is_seeded() -> None:
    space = _space(seed=3, sampler={"name": "grid"},
                   params={"hidden": {"low": 8, "high": 64, "step": 8}})
    orders = []
    for _ in range(2):
        study = optuna.create_study(sampler=build_sampler(space))
        orders.append([sample(space.params, study.ask())["hidden"] for _ in range(4)])
    assert orders[0] == orders[1]


# --- pruners --------------------------------------------------------------------------------

PRUNER_CASES: list[tuple[dict[str, Any], type]] = [
    ({"name": "median"}, optuna.pruners.MedianPruner),
    ({"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1}, optuna.pruners.MedianPruner),
    ({"name": "percentile", "percentile": 25.0}, optuna.pruners.PercentilePruner),
    ({"name": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
    ({"name": "hyperband"}, optuna.pruners.HyperbandPruner),
    ({"name": "patient", "patience": 2}, optuna.pruners.PatientPruner),
    ({"name": "patient", "wrapped": {"name": "median"}}, optuna.pruners.PatientPruner),
    ({"name": "wilcoxon"}, optuna.pruners.WilcoxonPruner),
    ({"name": "threshold", "lower": 0.1}, optuna.pruners.ThresholdPruner),
    ({"name": "none"}, optuna.pruners.NopPruner),
]


def test_every_pruner_name_is_covered() -> None:
    assert set(PRUNERS) == {case["name"] for case, _ in PRUNER_CASES}


@pytest.mark.parametrize(("raw", "cls"), PRUNER_CASES,
                         ids=["-".join(str(v.get("name") if isinstance(v, dict) else v)
                                       for v in raw.values()) for raw, _ in PRUNER_CASES])
def test_build_pruner_returns_the_optuna_class(raw: dict[str, Any], cls: type) -> None:
    space = _space(pruner=raw)
    assert type(build_pruner(space.pruner, space.task.epochs)) is cls


def test_default_pruner_is_median() -> None:
    assert isinstance(build_pruner(_space().pruner, 4), optuna.pruners.MedianPruner)


def test_pruner_settings_reach_optuna() -> None:
    space = _space(pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1})
    pruner = build_pruner(space.pruner, space.task.epochs)
    assert pruner._n_startup_trials == 2
    assert pruner._n_warmup_steps == 1


def test_hyperband_max_resource_is_the_epochs() -> None:
    space = _space(pruner={"name": "hyperband"})
    assert build_pruner(space.pruner, epochs=17)._max_resource == 17
    explicit = _space(pruner={"name": "hyperband", "max_resource": 5})
    assert build_pruner(explicit.pruner, epochs=17)._max_resource == 5


def test_patient_without_wrapped_prunes_on_patience_alone() -> None:
    pruner = build_pruner(PrunerSpec("patient", (("patience", 2),)), epochs=10)
    assert isinstance(pruner, optuna.pruners.PatientPruner)
    assert pruner._wrapped_pruner is None
    study = optuna.create_study(direction="maximize", pruner=pruner)

    improving = study.ask()
    for step, value in enumerate([0.5, 0.6, 0.7, 0.8, 0.9], start=1):
        improving.report(value, step)
        assert not improving.should_prune()

    # The first trial of a study: a median pruner would never prune it; patience does.
    worsening = optuna.create_study(direction="maximize", pruner=pruner).ask()
    pruned_at = None
    for step, value in enumerate([0.9, 0.8, 0.7, 0.6, 0.5], start=1):
        worsening.report(value, step)
        if worsening.should_prune():
            pruned_at = step
            break
    assert pruned_at == 4  # patience 2: three steps after the best without beating it


def test_patient_with_wrapped_wraps_the_built_inner_pruner() -> None:
    space = _space(pruner={"name": "patient", "patience": 1,
                           "wrapped": {"name": "hyperband"}})
    pruner = build_pruner(space.pruner, epochs=9)
    assert isinstance(pruner._wrapped_pruner, optuna.pruners.HyperbandPruner)
    assert pruner._wrapped_pruner._max_resource == 9
    assert pruner._patience == 1


def test_patient_default_patience() -> None:
    assert build_pruner(PrunerSpec("patient"), epochs=10)._patience == 3


@pytest.mark.parametrize("name", ["quick", "optimizers", "regularization",
                                  "dropout_vs_batchnorm", "population"])
def test_builtin_spaces_build_their_sampler_and_pruner(name: str) -> None:
    space = load_space(name)
    assert isinstance(build_sampler(space), SAMPLER_CLASSES[space.sampler.name])
    assert isinstance(build_pruner(space.pruner, space.task.epochs),
                      PRUNERS[space.pruner.name])
