"""The built-in networks: dropout semantics, block order, shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuner.errors import TunerError
from tuner.train.dropout import Dropout
from tuner.train.models import CNN, MLP, GaussianDropout, build_model, make_dropout

# --- Bernoulli (inverted) dropout --------------------------------------------------------


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_scales_kept_units_by_one_over_keep_in_training(p: float) -> None:
    torch.manual_seed(0)
    dropout = make_dropout(p, "bernoulli")
    assert isinstance(dropout, nn.Dropout)
    x = torch.rand(200, 500) + 0.5  # no zeros, so a zero in the output means dropped

    out = dropout.train()(x)

    dropped = out == 0
    torch.testing.assert_close(out[~dropped], x[~dropped] / (1 - p), rtol=1e-6, atol=0)
    # 100k Bernoulli draws: the dropped fraction is p within a few standard errors.
    assert dropped.float().mean().item() == pytest.approx(p, abs=0.01)


def test_dropout_is_identity_in_eval() -> None:
    dropout = make_dropout(0.5, "bernoulli").eval()
    x = torch.randn(64, 32)

    assert torch.equal(dropout(x), x)


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_zero_dropout_is_no_module_at_all(kind: str) -> None:
    assert isinstance(make_dropout(0.0, kind), nn.Identity)


# --- Gaussian dropout --------------------------------------------------------------------


def test_gaussian_dropout_is_identity_in_eval() -> None:
    dropout = make_dropout(0.4, "gaussian")
    assert isinstance(dropout, GaussianDropout)
    x = torch.randn(64, 32)

    assert torch.equal(dropout.eval()(x), x)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.7])
def test_gaussian_dropout_noise_has_mean_one_and_variance_p_over_one_minus_p(p: float) -> None:
    torch.manual_seed(0)
    dropout = GaussianDropout(p).train()
    x = torch.full((1000, 1000), 2.0)

    noise = dropout(x) / x  # the multiplicative factor

    variance = p / (1 - p)
    # 1e6 samples: standard error of the mean is sqrt(variance) / 1000.
    assert noise.mean().item() == pytest.approx(1.0, abs=5 * variance**0.5 / 1000)
    assert noise.var().item() == pytest.approx(variance, rel=0.01)
    # Unlike Bernoulli dropout it does not zero whole units.
    assert (noise == 0).float().mean().item() < 1e-4


def test_gaussian_dropout_matches_bernoulli_dropout_moments() -> None:
    torch.manual_seed(0)
    p = 0.3
    x = torch.ones(1000, 1000)

    bernoulli = nn.Dropout(p).train()(x)
    gaussian = GaussianDropout(p).train()(x)

    assert gaussian.mean().item() == pytest.approx(bernoulli.mean().item(), abs=0.005)
    assert gaussian.var().item() == pytest.approx(bernoulli.var().item(), rel=0.02)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_gaussian_dropout_rejects_p_outside_unit_interval(p: float) -> None:
    with pytest.raises(ValueError, match="p"):
        GaussianDropout(p)


# --- MLP ---------------------------------------------------------------------------------


def _types(module: nn.Module) -> list[type[nn.Module]]:
    return [type(m) for m in module.children()]


def test_mlp_block_order_is_linear_batchnorm_relu_dropout() -> None:
    model = MLP(5, 3, hidden=8, layers=3, dropout=0.3, batchnorm=True)

    block = [nn.Linear, nn.BatchNorm1d, nn.ReLU, Dropout]  # tuner's nn.Dropout
    assert _types(model.body) == block * 3
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (8, 3)


def test_mlp_without_batchnorm_has_biases_and_no_bn() -> None:
    model = MLP(5, 3, hidden=8, layers=2, dropout=0.3, dropout_kind="gaussian")

    assert _types(model.body) == [nn.Linear, nn.ReLU, GaussianDropout] * 2
    linears = [m for m in model.body if isinstance(m, nn.Linear)]
    assert all(m.bias is not None for m in linears)


def test_mlp_linear_before_batchnorm_has_no_bias() -> None:
    model = MLP(5, 3, hidden=8, layers=2, batchnorm=True)

    linears = [m for m in model.body if isinstance(m, nn.Linear)]
    assert len(linears) == 2
    assert all(m.bias is None for m in linears)
    assert model.head.bias is not None  # the output layer has no BN after it


def test_mlp_dims_and_output_shape() -> None:
    model = MLP(7, 4, hidden=16, layers=2)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]

    assert [(m.in_features, m.out_features) for m in linears] == [(7, 16), (16, 16), (16, 4)]
    assert model(torch.randn(5, 7)).shape == (5, 4)


def test_mlp_with_dropout_is_deterministic_in_eval_only() -> None:
    torch.manual_seed(0)
    model = MLP(6, 2, hidden=32, layers=2, dropout=0.5)
    x = torch.randn(10, 6)

    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


# --- CNN ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_cnn_on_8x8_images_gives_one_row_of_logits_per_image(layers: int,
                                                              batchnorm: bool) -> None:
    model = CNN((1, 8, 8), 10, hidden=4, layers=layers, dropout=0.2, batchnorm=batchnorm)

    out = model(torch.randn(5, 64))

    assert out.shape == (5, 10)


@pytest.mark.parametrize("image_shape", [(2, 6, 6), (1, 8, 6), (3, 4, 10)])
def test_cnn_accepts_any_small_image_shape(image_shape: tuple[int, int, int]) -> None:
    c, h, w = image_shape
    model = CNN(image_shape, 3, hidden=4, layers=2)

    out = model(torch.randn(2, c * h * w))

    assert out.shape == (2, 3)


def test_cnn_block_order_is_conv_batchnorm_relu_dropout_then_pool() -> None:
    model = CNN((1, 8, 8), 10, hidden=4, layers=2, dropout=0.2, batchnorm=True)

    block = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, Dropout, nn.MaxPool2d]
    assert _types(model.body) == block * 2
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    assert [m.in_channels for m in convs] == [1, 4]


# --- build_model -------------------------------------------------------------------------


def _build(name: str, image_shape: tuple[int, int, int] | None) -> nn.Module:
    return build_model(name, n_features=64, n_outputs=10, image_shape=image_shape, hidden=8,
                       layers=2, dropout=0.1, dropout_kind="bernoulli", batchnorm=False)


def test_build_model_by_name() -> None:
    assert isinstance(_build("mlp", None), MLP)
    assert isinstance(_build("mlp", (1, 8, 8)), MLP)
    cnn = _build("cnn", (1, 8, 8))
    assert isinstance(cnn, CNN)
    assert cnn(torch.randn(3, 64)).shape == (3, 10)


def test_build_model_cnn_without_image_shape_raises() -> None:
    with pytest.raises((ValueError, TunerError), match="cnn"):
        _build("cnn", None)


def test_build_model_unknown_name_raises() -> None:
    # A typo must not silently train an MLP.
    with pytest.raises((ValueError, TunerError), match="resnet"):
        _build("resnet", (1, 8, 8))
