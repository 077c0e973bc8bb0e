"""Multi-task regularization: an auxiliary head trained on an auxiliary target."""

from __future__ import annotations

import numpy as np
import torch

from tuner.data.builtin import load_splits
from tuner.train.config import TrialConfig
from tuner.train.loop import build_for, train
from tuner.train.metrics import METRICS


def test_digits_carries_its_coarse_image_as_auxiliary_target() -> None:
    data = load_splits("digits", seed=0)
    assert data.aux_task == "regression" and data.aux_outputs == 16
    assert data.aux_train is not None and data.aux_train.shape == (len(data.y_train), 16)
    # Standardized on the training split.
    np.testing.assert_allclose(data.aux_train.mean(0).numpy(), 0, atol=1e-5)


def test_aux_head_exists_only_with_a_weight() -> None:
    data = load_splits("digits", seed=0)
    plain = build_for(TrialConfig(epochs=1, hidden=16, layers=1), data)
    multi = build_for(TrialConfig(epochs=1, hidden=16, layers=1, aux_weight=0.5), data)
    assert getattr(plain, "aux_head", None) is None
    assert multi.aux_head.out_features == 16  # type: ignore[union-attr]


def test_aux_loss_changes_training_and_trains_the_aux_head() -> None:
    data = load_splits("digits", seed=0)

    def run(weight: float) -> tuple[list[float], torch.nn.Module]:
        config = TrialConfig(epochs=3, hidden=32, layers=1, aux_weight=weight)
        torch.manual_seed(0)
        model = build_for(config, data)
        head = None if not weight else model.aux_head.weight.detach().clone()  # type: ignore
        torch.manual_seed(1)
        result = train(model, data, config, metric=METRICS["accuracy"])
        if head is not None:
            assert not torch.equal(head, model.aux_head.weight)  # type: ignore[union-attr]
        return [m.train_loss for m in result.history], model

    plain, _ = run(0.0)
    multi, model = run(1.0)
    assert plain != multi
    # The aux head learned something: its error is below predicting the mean (1.0).
    model.eval()
    with torch.no_grad():
        _, aux_out = model.forward_with_aux(data.x_val)  # type: ignore[operator]
    assert data.aux_val is not None
    assert float((aux_out - data.aux_val).pow(2).mean()) < 0.9
