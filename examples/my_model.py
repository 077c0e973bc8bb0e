"""A model of your own for `tuner start --model examples/my_model.py:build`.

The tuner calls ``build(config, input_shape, n_outputs)`` once per trial. ``config``
holds the trial's resolved parameters (``hidden``, ``layers``, ``dropout``,
``batchnorm``, ...), so the search space can still vary width, depth and dropout; the
tuner applies the penalties, max-norm, noise, optimizer, schedule, early stopping and
pruning around the module you return.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class ResidualMLP(nn.Module):
    """An MLP with residual blocks: x + f(x), each f = Linear -> [BN] -> ReLU -> Dropout."""

    def __init__(self, n_features: int, n_outputs: int, hidden: int, layers: int,
                 dropout: float, batchnorm: bool) -> None:
        super().__init__()
        self.stem = nn.Linear(n_features, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden),
                          nn.BatchNorm1d(hidden) if batchnorm else nn.Identity(),
                          nn.ReLU(), nn.Dropout(dropout))
            for _ in range(layers))
        self.head = nn.Linear(hidden, n_outputs)

    def forward(self, x: Any) -> Any:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def build(config: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    return ResidualMLP(input_shape[0], n_outputs, hidden=config["hidden"],
                       layers=config["layers"], dropout=config["dropout"],
                       batchnorm=config["batchnorm"])
