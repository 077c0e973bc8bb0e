"""The Optuna objective: thin glue between the search space, the training loop and the trial."""

from __future__ import annotations

import optuna
import torch

from tuner.config import TrialConfig
from tuner.data import Splits, load_splits
from tuner.metrics import METRICS, is_better
from tuner.seeding import seed_everything, trial_seed
from tuner.space import Space, sample
from tuner.storage import TunerStorage
from tuner.train import EpochMetrics, build_for, evaluate, train


class Objective:
    """Train one trial of ``space`` on ``device`` and record it in ``storage``.

    The validation metric is reported to Optuna every epoch (for pruning); the value
    returned is the best epoch's. Only a trial that becomes the study's best is
    evaluated on the test split.
    """

    def __init__(self, space: Space, storage: TunerStorage, device: torch.device) -> None:
        self.space = space
        self.storage = storage
        self.device = device
        self.metric = METRICS[space.task.metric]

    def data(self) -> Splits:
        task = self.space.task
        return load_splits(task.dataset, self.space.seed, str(self.device), task.n_samples,
                           task.n_features)

    def config(self, trial: optuna.Trial) -> TrialConfig:
        values = sample(self.space.params, trial)
        task, early = self.space.task, self.space.early_stopping
        return TrialConfig.from_values(
            values, epochs=task.epochs, seed=trial_seed(self.space.seed, trial.number),
            maximize=self.metric.maximize, model=task.model, patience=early.patience,
            min_delta=early.min_delta)

    def __call__(self, trial: optuna.Trial) -> float:
        config = self.config(trial)
        data = self.data()
        seed_everything(config.seed)
        trial.set_user_attr("seed", config.seed)
        model = build_for(config, data)

        def report(metrics: EpochMetrics) -> bool:
            trial.report(metrics.val_metric, metrics.epoch)
            return trial.should_prune()

        try:
            result = train(model, data, config, metric=self.metric, report=report)
        except RuntimeError as exc:  # e.g. out of memory: the trial fails, the study goes on
            trial.set_user_attr("error", str(exc).strip().splitlines()[0][:500])
            raise
        outcome = ("diverged" if result.diverged else "pruned" if result.pruned
                   else "early_stopped" if result.stopped_early else "completed")
        trial_id = trial._trial_id
        self.storage.record_trial(
            trial_id=trial_id, study_id=trial.study._study_id, seed=config.seed,
            best_epoch=result.best_epoch or None, outcome=outcome, device=str(self.device),
            history=result.history)
        if result.pruned or result.diverged or not result.best_epoch:
            raise optuna.TrialPruned(f"{outcome} at epoch {len(result.history)}")
        if self._is_new_best(trial.study, result.best_metric):
            _, test_metric = evaluate(model, data.x_test, data.y_test, data.task, self.metric,
                                      data.y_std)
            self.storage.set_test_metric(trial_id, float(test_metric))
        return result.best_metric

    def _is_new_best(self, study: optuna.Study, value: float) -> bool:
        try:
            best = study.best_value
        except ValueError:  # no complete trial yet
            return True
        return is_better(self.metric, value, best)
