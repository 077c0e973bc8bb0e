"""A trained model, ready to use: weights, configuration and preprocessing in one file.

>>> model = load_model("best.pt")     # doctest: +SKIP
>>> model.predict(raw_features)       # labels or values, from unscaled inputs  # doctest: +SKIP

The file holds the trial's configuration, the network's weights and the training
split's standardization, so ``load_model`` gives back an ``nn.Module`` in eval mode
that takes raw features. ``fold_batchnorm`` folds each BatchNorm into the Linear or
Conv layer before it, for faster inference with the same outputs.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuner.errors import DataError, UsageError

FORMAT = "tuner-model/1"


class ExportedModel(nn.Module):
    """The trained network behind the training split's preprocessing."""

    def __init__(self, network: nn.Module, *, task: str, x_mean: torch.Tensor,
                 x_std: torch.Tensor, y_mean: float = 0.0, y_std: float = 1.0,
                 classes: list[Any] | None = None, config: Mapping[str, Any] | None = None,
                 info: Mapping[str, Any] | None = None,
                 input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.network = network
        # A network of yours trained on Datasets reads items of this shape (rows here).
        self.input_shape = input_shape if input_shape and len(input_shape) > 1 else None
        self.task = task
        self.x_mean: torch.Tensor
        self.x_std: torch.Tensor
        self.register_buffer("x_mean", x_mean.float())
        self.register_buffer("x_std", x_std.float())
        self.y_mean, self.y_std = y_mean, y_std
        self.classes = classes
        self.config = dict(config or {})
        self.info = dict(info or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (classification) or predictions in target units (regression)."""
        x = (x.float() - self.x_mean) / self.x_std
        if self.input_shape is not None:
            x = x.reshape(x.shape[0], *self.input_shape)
        out = self.network(x)
        if isinstance(out, tuple):  # a network with an auxiliary head
            out = out[0]
        if self.task == "regression":
            return out.squeeze(-1) * self.y_std + self.y_mean
        return out

    @torch.inference_mode()
    def predict(self, x: Any) -> list[Any]:
        """Class labels (as in the training data) or regression values, for raw inputs."""
        out = self(torch.as_tensor(x, dtype=torch.float32))
        if self.task == "regression":
            return out.tolist()
        index = out.argmax(dim=-1).tolist()
        return [self.classes[i] for i in index] if self.classes is not None else index

    @torch.inference_mode()
    def predict_proba(self, x: Any) -> torch.Tensor:
        """Class probabilities (softmax of the logits), one column per class in the
        order of :attr:`classes`; classification only."""
        if self.task == "regression":
            raise UsageError("a regression model has no class probabilities")
        return torch.softmax(self(torch.as_tensor(x, dtype=torch.float32)), dim=-1)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm folded into the Linear/Conv just before it.

    In eval mode BN is an affine map per channel, ``gamma * (z - mean) / sqrt(var + eps)
    + beta``, so it can be absorbed into the preceding layer's weight and bias. Pairs
    are found inside ``nn.Sequential`` containers (as in the built-in models); BN
    layers elsewhere are left as they are.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (_, layer), (bn_name, bn) in itertools.pairwise(children):
            if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) and isinstance(
                    layer, (nn.Linear, nn.Conv2d)) and bn.running_var is not None:
                _fold_pair(layer, bn)
                module._modules[bn_name] = nn.Identity()
    return folded


@torch.no_grad()
def _fold_pair(layer: nn.Linear | nn.Conv2d, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
    assert bn.running_mean is not None and bn.running_var is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    shape = (-1,) + (1,) * (layer.weight.ndim - 1)
    layer.weight.mul_(scale.view(shape))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(shift)
    new_bias = bias * scale + shift
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)


def save_model(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write an export file: the payload plus the format marker."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT, **payload}, out)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot write: {exc.strerror}") from None
    return out


def read_payload(path: str | Path) -> dict[str, Any]:
    """The contents of an export file, checked to be one."""
    source = Path(path)
    if not source.exists():
        raise DataError(f"--model {path}: no such file")
    if not source.is_file():  # a FIFO or a device would be read forever
        raise DataError(f"--model {path}: not a regular file")
    try:
        with warnings.catch_warnings():
            # torch's notice about a file's pickle protocol, which a crafted file triggers
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or not ours
        raise DataError(f"--model {path}: not a tuner model file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"--model {path}: not a tuner model file (no {FORMAT!r} marker)")
    return payload
