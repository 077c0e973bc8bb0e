"""The fused engine as a study runs it (tuner/run/population.py): budget, per-member trials,
pruning, refill, fallbacks, failures and interruption, through run_study and the CLI."""

from __future__ import annotations

import copy
import io
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.cli import cli
from tuner.run import population as population_module
from tuner.run.objective import Objective, TrialWriter
from tuner.run.runner import run_study
from tuner.space import EngineSpec, parse_space
from tuner.storage import TunerStorage
from tuner.train.loop import build_for, evaluate

CPU = torch.device("cpu")

SPACE: dict[str, Any] = {
    "trials": 10,
    "seed": 0,
    "task": {"dataset": "iris", "model": "mlp", "epochs": 4},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
    "params": {
        "hidden": 16, "layers": 1, "batch_size": 32,
        "lr": {"low": 1e-3, "high": 1e-1, "log": True},
        "dropout": {"low": 0.0, "high": 0.3},
        "optimizer": {"choices": {"adam": {}, "momentum": {"momentum": {"low": 0.5,
                                                                         "high": 0.9}}}},
    },
}


def space(**changes: Any) -> Any:
    raw = copy.deepcopy(SPACE)
    for key, value in changes.items():
        raw[key] = value
    return parse_space(raw, name="pop", source="test")


@pytest.fixture
def storage(tmp_path: Path) -> TunerStorage:
    return TunerStorage(f"sqlite:///{tmp_path / 'tuner.db'}").open()


def fused(k: int) -> EngineSpec:
    return EngineSpec("fused", k)


def trials_of(storage: TunerStorage, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage.optuna).get_trials(deepcopy=False)


def test_a_fused_study_reaches_exactly_its_budget_with_trials_of_their_own(
        storage: TunerStorage) -> None:
    summary = run_study(space(), storage=storage, study_name="s", budget=10, device=CPU,
                        engine=fused(4))
    assert summary.finished == 10 and summary.ran == 10 and summary.failed == 0
    trials = trials_of(storage, "s")
    assert len(trials) == 10
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        # Every member is a trial of its own: its curve, its seed, its per-epoch rows.
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]
        assert t.value == max(t.intermediate_values.values())
        assert t.user_attrs["engine"] == "fused" and "seed" in t.user_attrs
    seeds = {t.user_attrs["seed"] for t in trials}
    assert len(seeds) == 10
    with storage.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT trial_id, COUNT(*) FROM tuner_epochs "
                                    "GROUP BY trial_id").fetchall()
    assert sorted(n for _, n in rows) == [4] * 10
    # The study's best was evaluated on the test split, and the weights kept for it are
    # its best epoch's: they give its validation accuracy again.
    best = summary.best
    assert summary.test_metric is not None and best is not None
    objective = Objective(space(), storage, CPU)
    model = build_for(objective.config(best, best.number), objective.data())  # type: ignore[arg-type]
    blob = storage.load_model_blob(best._trial_id)
    assert blob is not None
    model.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
    data = objective.data()
    _, accuracy = evaluate(model, data.x_val, data.y_val, data.task, objective.metric)
    assert float(accuracy) == pytest.approx(best.value, abs=1e-6)


def test_the_population_is_refilled_but_never_exceeds_k(storage: TunerStorage,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    live: list[int] = []
    real = TrialWriter.__call__

    def watch(self: TrialWriter, metrics: Any) -> bool:
        running = storage.optuna.get_all_trials(self.trial.study._study_id, deepcopy=False,
                                                states=(TrialState.RUNNING,))
        live.append(len(running))
        return real(self, metrics)

    monkeypatch.setattr(TrialWriter, "__call__", watch)
    # Early stopping ends members at different epochs, so slots free up mid-population.
    summary = run_study(space(early_stopping={"patience": 1, "min_delta": 0.5}),
                        storage=storage, study_name="r", budget=9, device=CPU, engine=fused(3))
    assert summary.finished == 9
    assert max(live) == 3
    trials = trials_of(storage, "r")
    assert all(len(t.intermediate_values) == 2 for t in trials)  # stopped after patience


def test_pruned_members_leave_the_batch(storage: TunerStorage,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A pruner that prunes even-numbered trials at epoch 2: each is told PRUNED with
    # two intermediate values, and the others go on to the last epoch.
    class EvenPruner(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return trial.number % 2 == 0 and trial.last_step == 2

    monkeypatch.setattr("tuner.run.study.build_pruner", lambda *a, **k: EvenPruner())
    summary = run_study(space(pruner={"name": "median"}), storage=storage, study_name="p",
                        budget=6, device=CPU, engine=fused(6))
    assert summary.finished == 6 and summary.pruned == 3
    for t in trials_of(storage, "p"):
        if t.number % 2 == 0:
            assert t.state == TrialState.PRUNED and sorted(t.intermediate_values) == [1, 2]
        else:
            assert t.state == TrialState.COMPLETE and len(t.intermediate_values) == 4


def test_max_trials_and_timeout(storage: TunerStorage) -> None:
    summary = run_study(space(), storage=storage, study_name="m", budget=10, device=CPU,
                        engine=fused(4), max_trials=3)
    assert summary.ran == 3 and summary.stop_reason == "max_trials"
    assert len(trials_of(storage, "m")) == 3
    summary = run_study(space(), storage=storage, study_name="m", budget=10, device=CPU,
                        engine=fused(4), timeout=1e-9)
    assert summary.ran == 0 and summary.stop_reason == "timeout"
    summary = run_study(space(), storage=storage, study_name="m", budget=10, device=CPU,
                        engine=fused(4))
    assert summary.finished == 10 and summary.finished_before == 3


def test_a_trial_the_engine_cannot_fuse_trains_sequentially(storage: TunerStorage) -> None:
    raw = copy.deepcopy(SPACE)
    raw["params"]["aux_weight"] = {"choices": [0.0, 0.5]}
    raw["task"] = {"dataset": "digits", "model": "mlp", "epochs": 2}  # it has an aux target
    mixed = parse_space(raw, name="mixed", source="test")
    summary = run_study(mixed, storage=storage, study_name="x", budget=8, device=CPU,
                        engine=fused(4))
    assert summary.finished == 8
    trials = trials_of(storage, "x")
    for t in trials:
        # aux_weight > 0 has no fused head: those trials ran with the sequential loop.
        assert (t.user_attrs.get("engine") == "fused") == (t.params["aux_weight"] == 0.0)
    assert {t.params["aux_weight"] for t in trials} == {0.0, 0.5}


def test_an_error_fails_the_population_and_the_study_goes_on(
        storage: TunerStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    real = population_module.train_population
    calls = [0]

    def once_out_of_memory(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            kwargs["hooks"].report([(0, _metrics())])
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(population_module, "train_population", once_out_of_memory)
    summary = run_study(space(), storage=storage, study_name="e", budget=4, device=CPU,
                        engine=fused(2))
    assert summary.finished == 4 and summary.failed == 2
    failed = [t for t in trials_of(storage, "e") if t.state == TrialState.FAIL]
    assert [t.user_attrs["error"] for t in failed] == ["CUDA out of memory (simulated)"] * 2


def test_ctrl_c_fails_every_member_and_the_study_resumes(
        storage: TunerStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    real = population_module.train_population

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(population_module, "train_population", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(space(), storage=storage, study_name="c", budget=6, device=CPU,
                  engine=fused(3))
    trials = trials_of(storage, "c")
    # Nothing left RUNNING: the members are failed, and queued again with their params.
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.WAITING] * 3
    failed = {t.number: t.params for t in trials if t.state == TrialState.FAIL}
    queued = {t.number: t for t in trials if t.state == TrialState.WAITING}
    assert sorted(t.system_attrs["failed_trial"] for t in queued.values()) == sorted(failed)
    assert all(t.params == failed[t.system_attrs["failed_trial"]] for t in queued.values())
    monkeypatch.setattr(population_module, "train_population", real)
    summary = run_study(space(), storage=storage, study_name="c", budget=6, device=CPU,
                        engine=fused(3))
    assert summary.finished == 6
    after = {t.number: t for t in trials_of(storage, "c")}
    assert all(after[n].state.is_finished() and after[n].state != TrialState.FAIL
               for n in queued)  # the retries ran
    assert len(after) == 9


def test_a_member_failed_elsewhere_is_dropped(storage: TunerStorage,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = TunerStorage.write_values
    study_trials: list[int] = []

    def stale(self: TunerStorage, values: dict[int, tuple[int, float]]) -> set[int]:
        epoch = next(iter(values.values()))[0]
        if epoch == 2 and not study_trials:
            # What another worker does to a trial whose heartbeat it found stale.
            victim = min(values)
            study_trials.append(victim)
            self.optuna.set_trial_state_values(victim, TrialState.FAIL)
        return real(self, values)

    monkeypatch.setattr(TunerStorage, "write_values", stale)
    summary = run_study(space(pruner={"name": "median"}), storage=storage, study_name="d",
                        budget=3, device=CPU, engine=fused(3))
    trials = trials_of(storage, "d")
    victim = next(t for t in trials if t._trial_id == study_trials[0])
    assert victim.state == TrialState.FAIL
    assert sorted(victim.intermediate_values) == [1]  # nothing written after the failure
    assert summary.finished == 3  # the budget was made up by a fourth trial
    assert len(trials) == 4


def test_without_a_pruner_a_member_failed_elsewhere_is_dropped_too(
        storage: TunerStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    real = TrialWriter.__call__
    victims: list[int] = []

    def stale(self: TrialWriter, metrics: Any) -> bool:
        if metrics.epoch == 2 and not victims:
            victims.append(self.trial._trial_id)
            storage.optuna.set_trial_state_values(self.trial._trial_id, TrialState.FAIL)
        return real(self, metrics)

    monkeypatch.setattr(TrialWriter, "__call__", stale)
    summary = run_study(space(), storage=storage, study_name="n", budget=3, device=CPU,
                        engine=fused(3))
    trials = trials_of(storage, "n")
    assert [t.state for t in trials if t._trial_id in victims] == [TrialState.FAIL]
    assert summary.finished == 3 and len(trials) == 4


def test_a_member_failed_elsewhere_is_not_checkpointed_and_fails_no_other(
        storage: TunerStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints after every epoch: the victim's is not written over, and the
    population goes on (the flush of its values would be refused)."""
    real = TrialWriter.__call__
    victims: list[int] = []
    saved: list[tuple[int, int]] = []
    real_save = TunerStorage.save_checkpoint

    def stale(self: TrialWriter, metrics: Any) -> bool:
        if metrics.epoch == 2 and not victims:
            victims.append(self.trial._trial_id)
            storage.optuna.set_trial_state_values(self.trial._trial_id, TrialState.FAIL)
        return real(self, metrics)

    def save(self: TunerStorage, study_id: int, number: int, epoch: int, state: bytes) -> None:
        saved.append((number, epoch))
        real_save(self, study_id, number, epoch, state)

    monkeypatch.setattr(TrialWriter, "__call__", stale)
    monkeypatch.setattr(TunerStorage, "save_checkpoint", save)
    summary = run_study(space(), storage=storage, study_name="k", budget=3, device=CPU,
                        engine=fused(3), checkpoint_every=0)
    trials = trials_of(storage, "k")
    victim = next(t for t in trials if t._trial_id == victims[0])
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    assert summary.finished == 3 and len(trials) == 4
    # The others were checkpointed every epoch; the victim only before its failure.
    assert [e for n, e in saved if n == victim.number] == [1]
    assert {n for n, _ in saved} >= {t.number for t in trials[:3]}


def test_claimed_trials_beat_at_once_and_ctrl_c_while_sampling_fails_them(
        storage: TunerStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy

    real = Objective.config
    calls = [0]

    def interrupted(self: Objective, trial: Any, number: int) -> Any:
        calls[0] += 1
        with storage.engine.connect() as conn:
            beats = conn.execute(sqlalchemy.text(
                "SELECT COUNT(*) FROM trial_heartbeats")).scalar()
        assert beats == 4  # every claimed trial has beaten before any is sampled
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(self, trial, number)

    monkeypatch.setattr(Objective, "config", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(space(), storage=storage, study_name="k", budget=8, device=CPU,
                  engine=fused(4))
    # The one sampled and the three not sampled: all told FAIL, none left RUNNING; the
    # one that had its parameters is queued again, the others had nothing to keep.
    trials = trials_of(storage, "k")
    assert [t.state for t in trials] == [TrialState.FAIL] * 4 + [TrialState.WAITING]
    assert trials[4].system_attrs["failed_trial"] == 0 and trials[4].params == trials[0].params
    assert trials[0].params and not any(t.params for t in trials[1:4])


def test_pruning_decides_every_member_of_an_epoch_on_one_read(
        storage: TunerStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pruner sees what Trial.should_prune would show it: this trial's values up to
    # this epoch, and the study's complete trials; the study is read once an epoch.
    seen: list[tuple[int, int, int]] = []

    class Recording(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            seen.append((trial.number, trial.last_step or 0, len(complete)))
            assert sorted(trial.intermediate_values) == list(range(1, trial.last_step + 1))
            return False

    reads = [0]
    real = optuna.Study.get_trials

    def counted(self: optuna.Study, *args: Any, **kwargs: Any) -> Any:
        reads[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr("tuner.run.study.build_pruner", lambda *a, **k: Recording())
    monkeypatch.setattr(optuna.Study, "get_trials", counted)
    run_study(space(pruner={"name": "median"}), storage=storage, study_name="o", budget=4,
              device=CPU, engine=fused(4))
    assert sorted((n, e) for n, e, _ in seen) == [(n, e) for n in range(4) for e in range(1, 5)]
    # Until members finish, there is no complete trial to compare with.
    assert all(complete == 0 for _, e, complete in seen if e < 4)
    # adam and momentum make two groups: one read per group's epoch (8), not per member
    # and epoch (16), plus a few outside the epochs.
    assert reads[0] <= 8 + 4


def test_engine_in_the_space_file(write_space: Any, tmp_path: Path) -> None:
    from tuner.errors import SpaceError
    from tuner.space import load_space

    raw = copy.deepcopy(SPACE)
    raw["engine"] = {"name": "fused", "population": 5, "precision": "bf16"}
    loaded = load_space(write_space(raw))
    assert loaded.engine == EngineSpec("fused", 5, "bf16")
    raw["engine"] = {"precision": "fp16", "compile": True}
    assert load_space(write_space(raw)).engine == EngineSpec("sequential", 32, "fp16", True)
    raw["engine"] = "fused"
    assert load_space(write_space(raw)).engine == EngineSpec("fused", 32)
    # Not part of the fingerprint: a study may be resumed with the other engine.
    del raw["engine"]
    assert load_space(write_space(raw)).fingerprint() == loaded.fingerprint()
    for bad, message in ((
            {"name": "turbo"}, "engine.name: unknown engine 'turbo'; expected one of: "
                               "sequential, fused"),
            ({"name": "fused", "population": 0}, "engine.population: must be an integer >= 1, "
                                                 "but got 0"),
            ({"name": "fused", "size": 3}, "engine.size: unknown key 'size'"),
            ({"compile": "yes"}, "engine.compile: must be true or false, but got 'yes'"),
            ({"precision": "fp8"}, "engine.precision: unknown precision 'fp8'; expected "
                                   "one of: fp32, bf16, fp16")):
        raw["engine"] = bad
        with pytest.raises(SpaceError, match=message):
            load_space(write_space(raw))


def test_cli_start_with_the_fused_engine(runner: CliRunner, write_space: Any,
                                         storage_url: str, db_path: Path,
                                         db_snapshot: Any) -> None:
    path = write_space(SPACE)
    result = runner.invoke(cli, ["start", "--space", str(path), "--storage", storage_url,
                                 "--trials", "6", "--engine", "fused", "--population", "3",
                                 "--study", "f", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "6/6 finished" in result.output
    # Resumed with more budget, in mixed precision: the same study, 2 more trials.
    result = runner.invoke(cli, ["start", "--space", str(path), "--storage", storage_url,
                                 "--trials", "8", "--engine", "fused", "--precision", "bf16",
                                 "--study", "f"])
    assert result.exit_code == 0, result.output
    assert "fused, 32 at once · bf16" in result.output.replace("\n", " ")
    assert "8/8 finished" in result.output
    conn = sqlite3.connect(db_path)
    engines = conn.execute("SELECT value_json FROM trial_user_attributes "
                           "WHERE key = 'engine'").fetchall()
    conn.close()
    assert engines == [('"fused"',)] * 8
    before = db_snapshot(db_path)
    for args, message in (
            (["--population", "3"], "--population applies to --engine fused"),
            (["--engine", "fused", "--model", "cnn", "--dataset", "digits"],
             "but the space's model is 'cnn'; use --engine sequential"),
            (["--engine", "turbo"], "Invalid value for '--engine'"),
            (["--precision", "fp8"], "Invalid value for '--precision'")):
        result = runner.invoke(cli, ["start", "--space", str(path), "--storage", storage_url,
                                     "--study", "g", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert "Traceback" not in result.output
    assert db_snapshot(db_path) == before


def test_cli_compile_reaches_each_sequential_trial(runner: CliRunner, write_space: Any,
                                                  storage_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile (or the space's engine.compile) has each trial's model compiled;
    --no-compile overrides the space. (tests/test_train.py compiles for real.)"""
    compiled: list[str] = []

    def spy(model: Any) -> Any:
        compiled.append(type(model).__name__)
        return model

    monkeypatch.setattr("tuner.run.objective.compile_model", spy)
    path = write_space(SPACE)
    result = runner.invoke(cli, ["start", "--space", str(path), "--storage", storage_url,
                                 "--trials", "2", "--epochs", "1", "--compile", "--study", "c"])
    assert result.exit_code == 0, result.output
    assert "· compiled" in result.output
    assert compiled == ["MLP", "MLP"]
    db = TunerStorage(storage_url, create=False, heartbeat=False).open()
    trials = db.optuna.get_all_trials(db.optuna.get_study_id_from_name("c"))
    assert [t.user_attrs.get("compiled") for t in trials] == [True, True]  # for tuner rerun
    raw = copy.deepcopy(SPACE)
    raw["engine"] = {"compile": True}
    path = write_space(raw)
    result = runner.invoke(cli, ["start", "--space", str(path), "--storage", storage_url,
                                 "--trials", "3", "--epochs", "1", "--study", "d"])
    assert result.exit_code == 0, result.output
    assert len(compiled) == 5
    result = runner.invoke(cli, ["start", "--space", str(path), "--storage", storage_url,
                                 "--trials", "4", "--epochs", "1", "--study", "d",
                                 "--no-compile"])
    assert result.exit_code == 0, result.output
    assert "compiled" not in result.output
    assert len(compiled) == 5


def _metrics() -> Any:
    from tuner.train.loop import EpochMetrics

    return EpochMetrics(1, 1.0, 1.0, 0.5, 1e-3, 0.01)


@pytest.mark.parametrize("pruner", [
    {"name": "successive_halving", "min_resource": 1, "reduction_factor": 2},
    {"name": "hyperband", "min_resource": 1, "reduction_factor": 2},
    {"name": "percentile", "percentile": 50.0, "n_startup_trials": 0, "n_warmup_steps": 1},
])
def test_every_pruner_prunes_members_of_a_population(storage: TunerStorage,
                                                      pruner: dict[str, Any]) -> None:
    # Successive halving records each member's rung as it decides: the members decided
    # after it in the same epoch see it (they are decided one by one, not on a snapshot).
    raw = copy.deepcopy(SPACE)
    raw["pruner"], raw["task"]["epochs"] = pruner, 6
    summary = run_study(parse_space(raw, name="h", source="test"), storage=storage,
                        study_name="h", budget=24, device=CPU, engine=fused(8))
    trials = trials_of(storage, "h")
    assert summary.finished == 24 and summary.failed == 0
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    # Some member stopped early by its pruner (a last-epoch pruning saves nothing).
    assert any(len(t.intermediate_values) < 6 for t in pruned), "nothing was pruned early"
