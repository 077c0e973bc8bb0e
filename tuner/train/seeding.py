"""Seeds: how a trial's seed is derived, and the one function that applies it."""

from __future__ import annotations

import random

import numpy as np
import torch


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A distinct, recorded seed per trial, derived from the study's seed."""
    return (study_seed * 1_000_003 + trial_number * 7919 + 17) % (2**31 - 1)


def seed_everything(seed: int) -> None:
    """Seed every generator a trial draws from (weights, batches, dropout, noise)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
