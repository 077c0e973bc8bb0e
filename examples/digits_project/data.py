"""The data: scikit-learn's 8x8 digits as torch Datasets of (image, label) items.

``load()`` returns ``(train, val, test)``; the tuner reads them through a DataLoader,
batch by batch, as it would read an image folder too large for the device.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset


class Digits(Dataset):
    """Images as 1x8x8 float tensors scaled to [0, 1], labels 0-9."""

    classes = tuple(range(10))

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def load() -> tuple[Digits, Digits, Digits]:
    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    labels = torch.tensor(y)
    rows = list(range(len(y)))
    rest, test = train_test_split(rows, test_size=0.2, random_state=0, stratify=y)
    train, val = train_test_split(rest, test_size=0.25, random_state=0, stratify=y[rest])
    return tuple(Digits(images[part], labels[part]) for part in (train, val, test))  # type: ignore[return-value]
