"""The tuner's own tables, next to Optuna's in the same database.

Optuna's schema holds studies, trials, parameters and intermediate values; these add
what a practitioner queries about training: one row per trial and epoch, and one
row per trial with its seed, best epoch and (for the best trials) test metric.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, LargeBinary, MetaData, String, Table

metadata = MetaData()

epochs = Table(
    "tuner_epochs",
    metadata,
    Column("trial_id", Integer, primary_key=True, autoincrement=False),  # Optuna's trials.trial_id
    Column("epoch", Integer, primary_key=True, autoincrement=False),  # 1-based
    Column("train_loss", Float),
    Column("val_loss", Float),
    Column("val_metric", Float),
    Column("lr", Float),
    Column("seconds", Float),
)

epoch_metrics = Table(
    "tuner_epoch_metrics",
    metadata,
    # Further per-epoch values a training function of yours reported (`report(epoch,
    # value, f1=...)`), one row each: `tuner curves` shows them as columns.
    Column("trial_id", Integer, primary_key=True, autoincrement=False),
    Column("epoch", Integer, primary_key=True, autoincrement=False),
    Column("name", String(64), primary_key=True),
    Column("value", Float),
)

trial_info = Table(
    "tuner_trials",
    metadata,
    Column("trial_id", Integer, primary_key=True, autoincrement=False),
    Column("study_id", Integer, nullable=False, index=True),
    Column("seed", Integer, nullable=False),
    Column("best_epoch", Integer),
    Column("epochs_run", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # completed, early_stopped, pruned, diverged
    Column("device", String(32), nullable=False),
    Column("test_metric", Float),  # computed only for trials that became the study's best
)

checkpoints = Table(
    "tuner_checkpoints",
    metadata,
    # Keyed by the original trial's number: every retry of it resumes the same checkpoint.
    Column("study_id", Integer, primary_key=True, autoincrement=False),
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("epoch", Integer, nullable=False),
    Column("state", LargeBinary, nullable=False),
)

models = Table(
    "tuner_models",
    metadata,
    # The best epoch's weights (torch.save of the state_dict) of a trial that became the
    # study's best, so that `tuner export` needs no retraining.
    Column("trial_id", Integer, primary_key=True, autoincrement=False),
    Column("state", LargeBinary, nullable=False),
)

schema_version = Table(
    "tuner_schema",
    metadata,
    # One row: the version of the tuner's tables and ties, and the SHA-256 of the views'
    # definitions (tuner.storage._schema), so that a changed view reaches old databases.
    Column("version", Integer, nullable=False),
    Column("views", String(64)),
)
