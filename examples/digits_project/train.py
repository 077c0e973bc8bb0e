"""The same network trained by a loop of your own: ``tuner start --objective train.py:fit``.

The tuner calls ``fit(config, report)`` once per trial; it keeps the budget, the
workers, pruning, crash recovery and the database around it. The helpers give this loop
the tuner's optimizers, schedules, L1/L2 penalties and max-norm with the built-in loop's
exact semantics.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from data import load
from metrics import macro_f1
from model import build
from torch.utils.data import DataLoader

import tuner


def fit(config: Any, report: Any) -> float:
    train, val, _ = load()
    model = build(config, (1, 8, 8), 10).to(config.device)
    optimizer = tuner.optimizer_for(model, config)
    scheduler = tuner.scheduler_for(optimizer, config)
    first, best = 1, 0.0
    if config.resume is not None:  # a retry after a crash: go on from the last checkpoint
        model.load_state_dict(config.resume["model"])
        optimizer.load_state_dict(config.resume["optimizer"])
        scheduler.load_state_dict(config.resume["scheduler"])
        first, best = config.resume_epoch + 1, config.resume["best"]
    batches = DataLoader(train, batch_size=config.batch_size, shuffle=True)
    x_val = torch.stack([image for image, _ in val]).to(config.device)
    y_val = torch.tensor([label for _, label in val], device=config.device)
    for epoch in range(first, config.epochs + 1):
        model.train()
        lr = optimizer.param_groups[0]["lr"]  # this epoch's rate
        total = 0.0
        for x, y in batches:
            x, y = x.to(config.device), y.to(config.device)
            loss = F.cross_entropy(model(x), y)
            total += loss.item() * len(y)
            optimizer.zero_grad()
            (loss + tuner.penalty(model, config)).backward()
            optimizer.step()
            tuner.regularize_step(model, config)
        model.eval()
        with torch.no_grad():
            outputs = model(x_val)
        f1 = macro_f1(outputs, y_val)
        accuracy = (outputs.argmax(1) == y_val).float().mean().item()
        best = max(best, f1)
        scheduler.step()
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "best": best}
        if report(epoch, f1, train_loss=total / len(train), lr=lr,
                  accuracy=accuracy, checkpoint=state):
            break  # pruned, or no better for `patience` epochs
    return best
