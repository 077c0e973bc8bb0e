"""The canonical Optuna + PyTorch recipe, as a script of its own: what `tuner start` on
`benchmarks/recipe_space.yaml` is compared with by `benchmarks/whole_process.py`.

    python benchmarks/recipe.py [--trials 30] [--epochs 20] [--seed 0] \
        [--storage sqlite:///recipe.db] [--study recipe] [--device cpu] [--threads 1]

It is written as Optuna's PyTorch example (`optuna-examples/pytorch/pytorch_simple.py`) is,
with nothing of the tuner in it: an MLP defined from the trial (width, depth, batch size
and learning rate searched), a `DataLoader` over a `TensorDataset` with shuffling, the
loss read with `.item()` every batch, validation in its own loader loop, `trial.report`
and `trial.should_prune` every epoch, TPE and the median pruner with their defaults, and
Optuna's RDB storage on a SQLite file. Change it only to make it more like what people
write, never to make it slower.

Three choices keep the comparison with the tuner fair, and are the only places it
departs from the example:

* the data are digits split 60/20/20 (stratified, `random_state=seed`) and standardized
  with the training split's mean and standard deviation, as the tuner splits them, so
  that both report accuracies on the same validation set;
* the objective returns the best epoch's validation accuracy (the example returns the last
  one; the tuner keeps the best epoch);
* torch runs one CPU thread (`--threads`), as the tuner does for a trial on a CPU: with
  torch's default of one per core, small models run many times slower on a busy machine.

It prints one JSON line: the study's best value and its finished trials.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HIDDEN = (32, 256)  # units per hidden layer, log scale
LAYERS = (1, 3)
BATCH_SIZES = [32, 64, 128]
LR = (1e-4, 1e-1)  # log scale


def digits(seed: int) -> tuple[TensorDataset, TensorDataset, int, int]:
    """Train and validation sets of digits, split and standardized as the tuner does."""
    x, y = load_digits(return_X_y=True)
    rows = np.arange(len(y))
    rest, _test = train_test_split(rows, test_size=0.2, random_state=seed, stratify=y)
    train, valid = train_test_split(rest, test_size=0.25, random_state=seed,
                                    stratify=y[rest])
    mean, std = x[train].mean(), x[train].std()  # one scalar for the whole image

    def tensors(part: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.tensor((x[part] - mean) / std, dtype=torch.float32),
                             torch.tensor(y[part], dtype=torch.long))

    return tensors(train), tensors(valid), x.shape[1], 10


def define_model(trial: optuna.Trial, n_features: int, n_classes: int) -> nn.Sequential:
    n_layers = trial.suggest_int("layers", *LAYERS)
    hidden = trial.suggest_int("hidden", *HIDDEN, log=True)
    layers: list[nn.Module] = []
    in_features = n_features
    for _ in range(n_layers):
        layers += [nn.Linear(in_features, hidden), nn.ReLU()]
        in_features = hidden
    layers.append(nn.Linear(in_features, n_classes))
    return nn.Sequential(*layers)


class Objective:
    def __init__(self, seed: int, epochs: int, device: torch.device) -> None:
        self.train_set, self.valid_set, self.n_features, self.n_classes = digits(seed)
        self.epochs = epochs
        self.device = device

    def __call__(self, trial: optuna.Trial) -> float:
        model = define_model(trial, self.n_features, self.n_classes).to(self.device)
        lr = trial.suggest_float("lr", *LR, log=True)
        batch_size = trial.suggest_categorical("batch_size", BATCH_SIZES)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        train_loader = DataLoader(self.train_set, batch_size=batch_size, shuffle=True)
        valid_loader = DataLoader(self.valid_set, batch_size=batch_size)

        best = 0.0
        for epoch in range(self.epochs):
            model.train()
            running_loss = 0.0
            for data, target in train_loader:
                data, target = data.to(self.device), target.to(self.device)
                optimizer.zero_grad()
                loss = F.cross_entropy(model(data), target)
                loss.backward()
                optimizer.step()
                running_loss += loss.item()

            model.eval()
            correct = 0
            with torch.no_grad():
                for data, target in valid_loader:
                    data, target = data.to(self.device), target.to(self.device)
                    correct += model(data).argmax(dim=1).eq(target).sum().item()
            accuracy = correct / len(self.valid_set)
            best = max(best, accuracy)

            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default="sqlite:///recipe.db")
    parser.add_argument("--study", default="recipe")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=args.storage, study_name=args.study, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=args.seed),
        pruner=optuna.pruners.MedianPruner())
    study.optimize(Objective(args.seed, args.epochs, torch.device(args.device)),
                   n_trials=args.trials)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                       optuna.trial.TrialState.PRUNED)]
    print(json.dumps({"best_value": study.best_value, "finished": len(finished)}))


if __name__ == "__main__":
    main()
