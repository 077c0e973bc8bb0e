"""Batch-norm folding and the export wrapper."""

from __future__ import annotations

import torch
from torch import nn

from tuner.export.model_file import ExportedModel, fold_batchnorm
from tuner.train.models import CNN, MLP


def _trained_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BN non-trivial running statistics and affine parameters."""
    model.train()
    for _ in range(5):
        model(x * 3 + 1)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-1, 1)
    return model.eval()


def test_folding_mlp_batchnorm_keeps_outputs() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    model = _trained_bn(MLP(10, 3, hidden=16, layers=2, batchnorm=True, dropout=0.2), x)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())  # original untouched
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_folding_cnn_batchnorm_keeps_outputs() -> None:
    torch.manual_seed(1)
    x = torch.randn(32, 64)
    model = _trained_bn(CNN((1, 8, 8), 10, hidden=8, layers=2, batchnorm=True), x)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_exported_model_applies_preprocessing_and_maps_labels() -> None:
    torch.manual_seed(2)
    network = MLP(3, 2, hidden=4, layers=1).eval()
    mean, std = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 0.5])
    wrapped = ExportedModel(network, task="classification", x_mean=mean, x_std=std,
                            classes=["no", "yes"]).eval()
    raw = torch.randn(5, 3) * 4
    torch.testing.assert_close(wrapped(raw), network((raw - mean) / std))
    labels = wrapped.predict(raw)
    expected = network((raw - mean) / std).argmax(-1).tolist()
    assert labels == [["no", "yes"][i] for i in expected]


def test_regression_outputs_are_in_target_units() -> None:
    torch.manual_seed(3)
    network = MLP(2, 1, hidden=4, layers=1).eval()
    wrapped = ExportedModel(network, task="regression", x_mean=torch.zeros(2),
                            x_std=torch.ones(2), y_mean=10.0, y_std=5.0).eval()
    raw = torch.randn(4, 2)
    torch.testing.assert_close(wrapped(raw), network(raw).squeeze(-1) * 5.0 + 10.0)
