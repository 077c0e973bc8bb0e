"""The reference: the canonical Optuna + PyTorch recipe, as most projects write it.

It follows Optuna's PyTorch example (``optuna-examples/pytorch/pytorch_simple.py``):
the model defined from the trial, a ``DataLoader`` over a ``TensorDataset`` with
shuffling, batches moved to the device one by one, the training loss read with
``.item()`` every batch, validation in its own loader loop, ``trial.report`` and
``trial.should_prune`` every epoch, and Optuna's RDB storage on a SQLite file with
its default settings. It is the yardstick of ``tuner bench``: change it only to make it more like
what people write, never to make it slower.

Two choices keep the comparison fair: the objective returns the best epoch's
accuracy (the example returns the last one; the tuner keeps the best epoch), and the
study has the benchmark's sampler and no pruner, so it trains the configurations the
tuner trains.
"""

from __future__ import annotations

import optuna
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tuner.bench._space import BATCH_SIZE, DROPOUT, HIDDEN, LAYERS, LR
from tuner.data.builtin import Splits


def define_model(trial: optuna.Trial, n_features: int, n_classes: int) -> nn.Sequential:
    dropout = trial.suggest_float("dropout", *DROPOUT)
    layers: list[nn.Module] = []
    in_features = n_features
    for _ in range(LAYERS):
        layers += [nn.Linear(in_features, HIDDEN), nn.ReLU(), nn.Dropout(dropout)]
        in_features = HIDDEN
    layers.append(nn.Linear(in_features, n_classes))
    return nn.Sequential(*layers)


class BaselineObjective:
    """The example's ``objective(trial)``, with its data and device as attributes."""

    def __init__(self, data: Splits, epochs: int, device: torch.device) -> None:
        self.train_set = TensorDataset(data.x_train.cpu(), data.y_train.cpu())
        self.valid_set = TensorDataset(data.x_val.cpu(), data.y_val.cpu())
        self.n_features, self.n_classes = data.n_features, data.n_outputs
        self.epochs = epochs
        self.device = device

    def __call__(self, trial: optuna.Trial) -> float:
        model = define_model(trial, self.n_features, self.n_classes).to(self.device)
        lr = trial.suggest_float("lr", *LR, log=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        train_loader = DataLoader(self.train_set, batch_size=BATCH_SIZE, shuffle=True)
        valid_loader = DataLoader(self.valid_set, batch_size=BATCH_SIZE)

        best = 0.0
        for epoch in range(self.epochs):
            model.train()
            running_loss = 0.0
            for data, target in train_loader:
                data, target = data.to(self.device), target.to(self.device)
                optimizer.zero_grad()
                output = model(data)
                loss = F.cross_entropy(output, target)
                loss.backward()
                optimizer.step()
                running_loss += loss.item()

            model.eval()
            correct = 0
            with torch.no_grad():
                for data, target in valid_loader:
                    data, target = data.to(self.device), target.to(self.device)
                    pred = model(data).argmax(dim=1)
                    correct += pred.eq(target).sum().item()
            accuracy = correct / len(valid_loader.dataset)  # type: ignore[arg-type]
            best = max(best, accuracy)

            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best


def create_baseline_study(storage: str | optuna.storages.RDBStorage, seed: int,
                          name: str | None = None) -> optuna.Study:
    """The study the recipe creates; run it with
    ``study.optimize(BaselineObjective(...), n_trials=...)`` after ``torch.manual_seed(seed)``.
    Its random sampler is reseeded per trial as the tuner's is
    (:func:`tuner.space.sampling.seed_per_trial`, a few microseconds a trial), so that both
    train the same configurations."""
    from tuner.space.sampling import seed_per_trial

    return optuna.create_study(
        storage=storage, study_name=name, direction="maximize",
        sampler=seed_per_trial(optuna.samplers.RandomSampler(seed=seed), seed),
        pruner=optuna.pruners.NopPruner())
