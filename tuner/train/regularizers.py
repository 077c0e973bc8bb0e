"""Penalties, max-norm clipping, input noise and image augmentation.

All of them act on tensors already on the device; none syncs with the host.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def penalized_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight matrices and kernels: every parameter with two or more dimensions.

    Biases and batch-norm scales and shifts are vectors, so they are left out of the
    L1/L2 penalties and of max-norm clipping.
    """
    return [p for p in model.parameters() if p.ndim >= 2]


def penalty(weights: list[torch.Tensor], l1: float, l2: float) -> torch.Tensor:
    """``l1 * sum|w| + (l2 / 2) * sum w^2``; the gradient of the L2 term is ``l2 * w``."""
    total = weights[0].new_zeros(())
    if l1:
        total = total + l1 * sum(w.abs().sum() for w in weights)
    if l2:
        total = total + (l2 / 2) * sum(w.pow(2).sum() for w in weights)
    return total


@torch.no_grad()
def apply_max_norm(weights: list[torch.Tensor], max_norm: float) -> None:
    """Rescale each unit's incoming weight vector whose L2 norm exceeds ``max_norm``.

    A unit's incoming weights are one row of a Linear weight (one output channel of a
    conv kernel): dim 0 indexes the units.
    """
    for w in weights:
        w.renorm_(p=2, dim=0, maxnorm=max_norm)


def add_input_noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian noise with standard deviation ``sigma`` (training inputs only)."""
    return x + sigma * torch.randn_like(x)


def augment_images(x: torch.Tensor, image_shape: tuple[int, int, int], max_shift: float = 1.0,
                   max_degrees: float = 10.0) -> torch.Tensor:
    """Random shifts of up to ``max_shift`` pixels and rotations of up to ``max_degrees``.

    ``x`` holds flat images; one affine warp per image, all in one batched call.
    """
    n = x.shape[0]
    c, h, w = image_shape
    angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(max_degrees)
    # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size.
    shift = (torch.rand(n, 2, device=x.device) * 2 - 1) * max_shift
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([
        torch.stack([cos, -sin, shift[:, 0] * 2 / w], dim=1),
        torch.stack([sin, cos, shift[:, 1] * 2 / h], dim=1),
    ], dim=1)
    images = x.view(n, c, h, w)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                           align_corners=False)
    return warped.reshape(n, -1)
