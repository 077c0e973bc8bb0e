"""The objective (tuner/run/objective.py) with the in-memory recorder: what it writes, when,
and which trials get a test metric."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import pytest
import torch

from tuner.run.objective import Objective
from tuner.space import Space, parse_space
from tuner.space.sampling import build_pruner, build_sampler
from tuner.storage import MemoryRecorder

CPU = torch.device("cpu")


class CountingRecorder(MemoryRecorder):
    """A MemoryRecorder that remembers every write_trial call and every checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, list[int], dict[str, Any]]] = []
        self.checkpointed: list[tuple[int, set[int]]] = []
        self.study: optuna.Study | None = None

    def write_trial(self, trial: optuna.Trial, values: Sequence[tuple[int, float]] = (),
                    user_attrs: Mapping[str, Any] | None = None) -> None:
        self.writes.append((trial.number, [e for e, _ in values], dict(user_attrs or {})))
        super().write_trial(trial, values, user_attrs)

    def save_checkpoint(self, study_id: int, number: int, epoch: int, state: bytes) -> None:
        assert self.study is not None
        frozen = self.study.get_trials(deepcopy=False)[number]
        self.checkpointed.append((epoch, set(frozen.intermediate_values)))
        super().save_checkpoint(study_id, number, epoch, state)


def _space(tiny: Mapping[str, Any], **changes: Any) -> Space:
    raw = copy.deepcopy(dict(tiny))
    raw["task"] = {**raw["task"], "epochs": 4}
    raw.update(changes)
    return parse_space(raw, name="tiny", source="test")


def _run(space: Space, recorder: CountingRecorder, trials: int,
         **kwargs: Any) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=build_sampler(space),
                                pruner=build_pruner(space.pruner, space.task.epochs))
    recorder.study = study
    study.optimize(Objective(space, recorder, CPU, **kwargs), n_trials=trials)
    return study


def test_without_a_pruner_a_short_trial_writes_once(tiny_space_template: Mapping[str, Any],
                                                     ) -> None:
    recorder = CountingRecorder()
    study = _run(_space(tiny_space_template), recorder, trials=3, report_every=60.0)

    # Every epoch's value and the seed, in one write at the end of each trial.
    assert [(n, epochs, sorted(attrs)) for n, epochs, attrs in recorder.writes] == [
        (n, [1, 2, 3, 4], ["seed", "worker"]) for n in range(3)]
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4]
        assert trial.user_attrs["seed"] == recorder.trials[trial._trial_id].seed


def test_without_a_pruner_a_long_trial_writes_as_often_as_asked(
        tiny_space_template: Mapping[str, Any]) -> None:
    recorder = CountingRecorder()
    _run(_space(tiny_space_template), recorder, trials=1, report_every=0.0)

    assert [epochs for _, epochs, _ in recorder.writes] == [[1], [2], [3], [4]]


def test_with_a_pruner_every_epoch_is_reported_at_once(tiny_space_template: Mapping[str, Any],
                                                       ) -> None:
    space = _space(tiny_space_template, pruner={"name": "median", "n_startup_trials": 1})
    recorder = CountingRecorder()
    study = _run(space, recorder, trials=3)

    # Only the attributes wait for the end; the pruner saw each epoch through trial.report.
    assert all(epochs == [] and sorted(attrs) == ["seed", "worker"]
               for _, epochs, attrs in recorder.writes)
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == list(
            range(1, len(recorder.trials[trial._trial_id].history) + 1))


def test_a_checkpoint_is_never_ahead_of_the_recorded_curve(
        tiny_space_template: Mapping[str, Any]) -> None:
    recorder = CountingRecorder()
    _run(_space(tiny_space_template), recorder, trials=1, checkpoint_every=0.0,
         report_every=60.0)

    assert [epoch for epoch, _ in recorder.checkpointed] == [1, 2, 3, 4]
    for epoch, recorded in recorder.checkpointed:
        assert recorded == set(range(1, epoch + 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_only_a_trial_that_equals_or_beats_every_earlier_one_gets_a_test_metric(
        tiny_space_template: Mapping[str, Any], seed: int) -> None:
    recorder = CountingRecorder()
    study = _run(_space(tiny_space_template, seed=seed), recorder, trials=8)

    best: float | None = None
    for trial in study.trials:
        tested = recorder.trials[trial._trial_id].test_metric is not None
        if trial.state != optuna.trial.TrialState.COMPLETE:
            assert not tested
            continue
        assert trial.value is not None
        assert tested == (best is None or trial.value >= best), trial.number
        best = trial.value if best is None else max(best, trial.value)
    # Whichever of tied trials Optuna calls the best has a test metric.
    assert recorder.trials[study.best_trial._trial_id].test_metric is not None


def test_between_gpu_trials_only_young_objects_are_collected(
        tiny_space_template: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A full garbage collection walks every object of the worker (a few hundred
    milliseconds with torch and Optuna loaded); between trials on a GPU the tuner
    collects the young generations only, then empties torch's cache."""
    import gc

    calls: list[tuple[Any, ...]] = []
    emptied: list[bool] = []
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append(args) or 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    objective = Objective(_space(tiny_space_template), CountingRecorder(),
                          torch.device("cuda"))
    objective._release()
    assert calls == [(1,)] and emptied == [True]
    Objective(_space(tiny_space_template), CountingRecorder(), CPU)._release()
    assert calls == [(1,)] and emptied == [True]  # nothing to give back on the CPU


@pytest.mark.slow
def test_a_compiled_trials_model_is_freed_without_a_full_collection(
        tiny_space_template: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile leaves a reference cycle through the model (its compiled forward is
    a bound method of it): the objective drops it when the trial ends, so the young
    collection between trials frees the model and its device memory."""
    import gc
    import weakref

    from tuner.train import loop as train_module

    models: list[weakref.ref[torch.nn.Module]] = []

    def compile_and_track(model: torch.nn.Module) -> torch.nn.Module:
        models.append(weakref.ref(model))
        return train_module.compile_model(model)

    monkeypatch.setattr("tuner.run.objective.compile_model", compile_and_track)
    study = _run(_space(tiny_space_template), CountingRecorder(), 1, compile=True)
    assert study.trials[0].user_attrs["compiled"] is True
    gc.collect(1)
    assert len(models) == 1 and models[0]() is None


def test_a_retry_records_how_it_ran_not_what_it_inherited(
        tiny_space_template: Mapping[str, Any]) -> None:
    """A retried trial starts with its failed original's user attributes (Optuna copies
    them, as enqueue_trial does here): run in float32, uncompiled, it must say so, or
    `tuner rerun` would replay it in the original's precision."""
    space = _space(tiny_space_template)
    study = optuna.create_study(direction="maximize", sampler=build_sampler(space),
                                pruner=build_pruner(space.pruner, space.task.epochs))
    study.enqueue_trial({}, user_attrs={"precision": "bf16", "compiled": True})
    study.enqueue_trial({})
    study.optimize(Objective(space, CountingRecorder(), CPU), n_trials=2)
    retried, fresh = study.trials
    assert (retried.user_attrs["precision"], retried.user_attrs["compiled"]) == ("fp32", False)
    assert "precision" not in fresh.user_attrs and "compiled" not in fresh.user_attrs
