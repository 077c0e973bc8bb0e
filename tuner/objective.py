"""The Optuna objective: thin glue between the search space, the training loop and the trial."""

from __future__ import annotations

import gc

import optuna
import torch

from tuner.config import TrialConfig
from tuner.data import Splits, load_splits
from tuner.metrics import METRICS, is_better
from tuner.seeding import seed_everything, trial_seed
from tuner.space import Space, sample
from tuner.storage import TunerStorage
from tuner.train import Checkpoint, EpochMetrics, build_for, evaluate, train


def root_number(trial: optuna.Trial) -> int:
    """The number of the trial this one retries (the first of a chain), or its own."""
    frozen = trial.study._storage.get_trial(trial._trial_id)
    return int(frozen.system_attrs.get("failed_trial", trial.number))


class Objective:
    """Train one trial of ``space`` on ``device`` and record it in ``storage``.

    The validation metric is reported to Optuna every epoch (for pruning); the value
    returned is the best epoch's. Only a trial that becomes the study's best is
    evaluated on the test split. A trial saves a checkpoint every
    ``checkpoint_every`` seconds of training; a retry of a trial whose worker died
    resumes from it, re-reporting the epochs already done.
    """

    def __init__(self, space: Space, storage: TunerStorage, device: torch.device,
                 checkpoint_every: float = 30.0) -> None:
        self.space = space
        self.storage = storage
        self.device = device
        self.checkpoint_every = checkpoint_every
        self.metric = METRICS[space.task.metric]

    def data(self) -> Splits:
        task = self.space.task
        return load_splits(task.dataset, self.space.seed, str(self.device), task.n_samples,
                           task.n_features)

    def config(self, trial: optuna.Trial, number: int) -> TrialConfig:
        values = sample(self.space.params, trial)
        task, early = self.space.task, self.space.early_stopping
        return TrialConfig.from_values(
            values, epochs=task.epochs, seed=trial_seed(self.space.seed, number),
            maximize=self.metric.maximize, model=task.model, patience=early.patience,
            min_delta=early.min_delta)

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        finally:
            self._release()

    def _run(self, trial: optuna.Trial) -> float:
        study_id = trial.study._study_id
        root = root_number(trial)
        config = self.config(trial, root)
        data = self.data()
        seed_everything(config.seed)
        trial.set_user_attr("seed", config.seed)
        model = build_for(config, data)
        resume = self._resume(study_id, root, trial)

        def report(metrics: EpochMetrics) -> bool:
            trial.report(metrics.val_metric, metrics.epoch)
            return trial.should_prune()

        saved = resume is not None

        def save(checkpoint: Checkpoint) -> None:
            nonlocal saved
            self.storage.save_checkpoint(study_id, root, checkpoint.epoch, checkpoint.to_bytes())
            saved = True

        try:
            result = train(model, data, config, metric=self.metric, report=report, resume=resume,
                           checkpoint=save, checkpoint_every=self.checkpoint_every)
        except RuntimeError as exc:  # e.g. out of memory: the trial fails, the study goes on
            trial.set_user_attr("error", str(exc).strip().splitlines()[0][:500])
            raise
        outcome = ("diverged" if result.diverged else "pruned" if result.pruned
                   else "early_stopped" if result.stopped_early else "completed")
        self.storage.record_trial(
            trial_id=trial._trial_id, study_id=study_id, seed=config.seed,
            best_epoch=result.best_epoch or None, outcome=outcome, device=str(self.device),
            history=result.history)
        if saved:
            self.storage.delete_checkpoint(study_id, root)
        if result.pruned or result.diverged or not result.best_epoch:
            raise optuna.TrialPruned(f"{outcome} at epoch {len(result.history)}")
        if self._is_new_best(trial.study, result.best_metric):
            _, test_metric = evaluate(model, data.x_test, data.y_test, data.task, self.metric,
                                      data.y_std)
            self.storage.set_test_metric(trial._trial_id, float(test_metric))
        return result.best_metric

    def _resume(self, study_id: int, root: int, trial: optuna.Trial) -> Checkpoint | None:
        if root == trial.number:
            return None
        blob = self.storage.load_checkpoint(study_id, root)
        if blob is None:
            return None
        checkpoint = Checkpoint.from_bytes(blob)
        # The retried trial's curve continues where the dead one stopped.
        for metrics in checkpoint.history:
            trial.report(metrics.val_metric, metrics.epoch)
        trial.set_user_attr("resumed_from_epoch", checkpoint.epoch)
        return checkpoint

    def _release(self) -> None:
        """Give cached device memory back between trials (the data copy stays)."""
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def _is_new_best(self, study: optuna.Study, value: float) -> bool:
        try:
            best = study.best_value
        except ValueError:  # no complete trial yet
            return True
        return is_better(self.metric, value, best)
