"""The network: a small CNN whose width and kernel size are knobs of the search space.

The tuner calls ``build(config, input_shape, n_outputs)`` once per trial. Your own
knobs come from the space's ``user_params`` (``config.user["width_mult"]``); the
built-in ones (``config.dropout``, ``config.batchnorm``) work as usual, and the tuner
applies the penalties, the optimizer, its schedule, early stopping and pruning around
the module returned here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Two conv blocks (conv -> [BN] -> ReLU -> dropout, then 2x2 pooling) and a linear head."""

    def __init__(self, input_shape: tuple[int, ...], n_outputs: int, width: int, kernel: int,
                 dropout: float, batchnorm: bool) -> None:
        super().__init__()
        channels, height, _ = input_shape
        layers: list[nn.Module] = []
        for out in (width, 2 * width):
            layers += [nn.Conv2d(channels, out, kernel, padding=kernel // 2, bias=not batchnorm),
                       nn.BatchNorm2d(out) if batchnorm else nn.Identity(), nn.ReLU(),
                       nn.Dropout(dropout), nn.MaxPool2d(2)]
            channels, height = out, height // 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels * height * height, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def build(config: Any, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    width = max(4, round(16 * config.user["width_mult"]))
    return DigitsCNN(input_shape, n_outputs, width=width, kernel=config.user["kernel_size"],
                     dropout=config.dropout, batchnorm=config.batchnorm)
