"""The metric: macro-averaged F1 (every class counts the same), by scikit-learn."""

from __future__ import annotations

import torch
from sklearn.metrics import f1_score


def macro_f1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    predicted = outputs.argmax(dim=1).cpu().numpy()
    return float(f1_score(targets.cpu().numpy(), predicted, average="macro"))
