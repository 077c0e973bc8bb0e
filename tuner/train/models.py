"""The built-in networks: an MLP and a small CNN, with dropout placed after batch norm.

Each hidden block is ``Linear/Conv -> [BatchNorm] -> ReLU -> [Dropout]``: dropout
after the BN layers, because dropout before BN shifts the variance BN sees between
training and evaluation.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from tuner.errors import DataError, UsageError
from tuner.train.dropout import Dropout


class GaussianDropout(nn.Module):
    """Multiplicative Gaussian noise N(1, p/(1-p)) in training; identity in eval.

    It has the mean and variance of inverted Bernoulli dropout with rate ``p`` without
    zeroing units, which shifts the variance that batch norm sees less.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"`0 <= p < 1` must hold, but got p={p}")
        self.p = p
        self.std = math.sqrt(p / (1 - p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under torch.compile with a ``noise_std`` tensor buffer (tuner.train.loop.compile_model
        # adds it), one graph serves every rate (a float would be a constant of the graph).
        if torch.compiler.is_compiling() and hasattr(self, "noise_std"):
            if not self.training:
                return x
            noise = torch.randn(x.shape, device=x.device) * cast(torch.Tensor, self.noise_std)
            return x * (1 + noise).to(x.dtype)
        if not self.training or self.p == 0:
            return x
        return x * (1 + self.std * torch.randn_like(x))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_dropout(p: float, kind: str) -> nn.Module:
    if p == 0:
        return nn.Identity()
    # Inverted dropout (an nn.Dropout): kept units are scaled by 1/(1-p) in training.
    return GaussianDropout(p) if kind == "gaussian" else Dropout(p)


class MLP(nn.Module):
    """Hidden blocks, then a linear head; with ``aux_outputs``, a second head on the same
    last hidden layer for an auxiliary task (multi-task regularization)."""

    def __init__(self, n_features: int, n_outputs: int, hidden: int = 128, layers: int = 2,
                 dropout: float = 0.0, dropout_kind: str = "bernoulli",
                 batchnorm: bool = False, aux_outputs: int = 0) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = n_features
        for _ in range(layers):
            # The bias is redundant before BN, which has its own shift.
            blocks.append(nn.Linear(width, hidden, bias=not batchnorm))
            if batchnorm:
                blocks.append(nn.BatchNorm1d(hidden))
            blocks += [nn.ReLU(), make_dropout(dropout, dropout_kind)]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, n_outputs)
        self.aux_head = nn.Linear(width, aux_outputs) if aux_outputs else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(x)
        assert self.aux_head is not None
        return self.head(hidden), self.aux_head(hidden)


class CNN(nn.Module):
    """A small CNN for little images given as flat vectors (digits: 1x8x8)."""

    def __init__(self, image_shape: tuple[int, int, int], n_outputs: int, hidden: int = 32,
                 layers: int = 2, dropout: float = 0.0, dropout_kind: str = "bernoulli",
                 batchnorm: bool = False) -> None:
        super().__init__()
        self.image_shape = image_shape
        channels, height, width = image_shape
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks.append(nn.Conv2d(channels, hidden, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                blocks.append(nn.BatchNorm2d(hidden))
            blocks += [nn.ReLU(), make_dropout(dropout, dropout_kind)]
            if i < 2 and min(height, width) >= 4:  # pool twice at most: 8x8 -> 4x4 -> 2x2
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(channels * height * width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], *self.image_shape)
        return self.head(self.body(x).flatten(1))


def build_model(name: str, *, n_features: int, n_outputs: int,
                image_shape: tuple[int, int, int] | None, hidden: int, layers: int,
                dropout: float, dropout_kind: str, batchnorm: bool,
                aux_outputs: int = 0) -> nn.Module:
    """A built-in network by name (``mlp`` or ``cnn``); only the MLP has an auxiliary head."""
    common = dict(hidden=hidden, layers=layers, dropout=dropout, dropout_kind=dropout_kind,
                  batchnorm=batchnorm)
    if name == "cnn":
        if image_shape is None:
            raise DataError("model 'cnn' needs an image dataset")
        return CNN(image_shape, n_outputs, **common)  # type: ignore[arg-type]
    if name != "mlp":
        raise UsageError(f"unknown model {name!r}; expected one of: mlp, cnn")
    return MLP(n_features, n_outputs, aux_outputs=aux_outputs, **common)  # type: ignore[arg-type]
