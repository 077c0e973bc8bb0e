"""The batched MLP against the tuner's own MLP, member by member."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tuner.fused import FusedMLP, add_input_noise, member_loss
from tuner.fused._metrics import evaluate_members
from tuner.fused._model import _Layout
from tuner.train.device import onednn_fp32_exact
from tuner.train.dropout import RandomWords, Source
from tuner.train.loop import evaluate
from tuner.train.metrics import METRICS
from tuner.train.models import MLP


def _members(k: int, *, n_features: int = 5, n_outputs: int = 3, hidden: int = 8,
             layers: int = 2, batchnorm: bool = False, dropout: float = 0.0,
             kind: str = "bernoulli") -> list[MLP]:
    members = []
    for seed in range(k):
        torch.manual_seed(seed)
        members.append(MLP(n_features, n_outputs, hidden=hidden, layers=layers,
                           dropout=dropout, dropout_kind=kind,
                           batchnorm=batchnorm).double())
    return members


SHAPES = [dict(layers=1), dict(layers=2), dict(layers=3, batchnorm=True),
          dict(layers=2, batchnorm=True, n_outputs=1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_forward_equals_each_member(shape: dict[str, int]) -> None:
    members = _members(4, **shape)  # type: ignore[arg-type]
    for m in members:  # non-trivial running statistics for batch norm's eval mode
        m.train()
        m(torch.randn(16, 5, dtype=torch.float64))
        m.eval()
    fused = FusedMLP.from_members(members)
    x = torch.randn(11, 5, dtype=torch.float64)

    out = fused.forward(x, train=False)

    assert out.shape == (4, 11, shape.get("n_outputs", 3))
    for i, m in enumerate(members):
        torch.testing.assert_close(out[i], m(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("how", ["forward", "train_step"])
@pytest.mark.parametrize("shape", SHAPES)
def test_train_losses_gradients_and_batch_norm_statistics_equal_each_member(
        shape: dict[str, int], how: str) -> None:
    """Autograd through the forward pass, and the written-out backward pass, against
    torch's autograd on each member's own MLP."""
    members = _members(3, **shape)  # type: ignore[arg-type]
    fused = FusedMLP.from_members(members)
    x = torch.randn(9, 5, dtype=torch.float64)
    task = "regression" if shape.get("n_outputs") == 1 else "classification"
    y = torch.randn(9, dtype=torch.float64) if task == "regression" else torch.randint(0, 3, (9,))

    if how == "forward":
        losses = member_loss(task, fused.forward(x, train=True), y)
        grads = dict(zip(fused.layout.params,
                         torch.autograd.grad(losses.sum(), fused.leaves()), strict=True))
    else:
        losses = fused.train_step(x, y, task)
        grads = _Layout.views(fused.grad, fused.layout.params)

    for i, m in enumerate(members):
        m.train()
        out = m(x)
        loss = F.cross_entropy(out, y) if task == "classification" else F.mse_loss(out[:, 0], y)
        torch.testing.assert_close(losses[i].detach(), loss.detach(), rtol=1e-12, atol=1e-12)
        expected = dict(zip([n for n, _ in m.named_parameters()],
                            torch.autograd.grad(loss, list(m.parameters())), strict=True))
        for name, grad in grads.items():
            torch.testing.assert_close(grad[i], expected[name], rtol=1e-10, atol=1e-12,
                                       msg=name)
        for name, value in fused.state_dict(i).items():
            if "running" in name:
                torch.testing.assert_close(value, m.state_dict()[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("words", [False, True])
def test_train_step_with_dropout_equals_autograd_through_forward(kind: str, batchnorm: bool,
                                                                 words: bool) -> None:
    """Both draw the same masks from the same generator (or xorshift lanes seeded by
    it, as a fused group on a CPU draws them); the gradients are autograd's."""
    members = [_members(1, hidden=16, dropout=p, kind=kind, batchnorm=batchnorm)[0]
               for p in (0.0, 0.2, 0.5)]
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    stepped, differentiated = FusedMLP.from_members(members), FusedMLP.from_members(members)

    def source() -> Source:
        generator = torch.Generator().manual_seed(3)
        return RandomWords(generator) if words else generator

    losses = stepped.train_step(x, y, "classification", source())
    reference = member_loss("classification", differentiated.forward(
        x, train=True, generator=source()), y)
    grads = torch.autograd.grad(reference.sum(), differentiated.leaves())

    torch.testing.assert_close(losses, reference.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stepped.grad, torch.cat([g.flatten(1) for g in grads], 1),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stepped.buffers, differentiated.buffers, rtol=1e-12, atol=1e-12)


def test_members_round_trip() -> None:
    members = _members(3, batchnorm=True)
    for i, m in enumerate(members):
        for name, value in m.state_dict().items():
            # One counter per member: every batch-norm layer sees every batch.
            if name.endswith("num_batches_tracked"):
                value.fill_(i + 5)
    fused = FusedMLP.from_members(members)

    for i, m in enumerate(members):
        back = fused.member(i)
        assert isinstance(back, MLP)
        assert back.state_dict().keys() == m.state_dict().keys()
        for name, value in m.state_dict().items():
            assert torch.equal(back.state_dict()[name], value), name
        assert back.state_dict()["body.1.num_batches_tracked"].item() == i + 5


def test_per_member_dropout_rates_are_kept() -> None:
    members = [_members(1, dropout=p)[0] for p in (0.0, 0.2, 0.5)]
    fused = FusedMLP.from_members(members)
    assert fused.dropout.tolist() == [0.0, 0.2, 0.5]
    assert [getattr(fused.member(i).body[2], "p", 0.0) for i in range(3)] == [0.0, 0.2, 0.5]


def test_mixed_shapes_and_dropout_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        FusedMLP.from_members(_members(1, hidden=8) + _members(1, hidden=9))
    with pytest.raises(ValueError, match="dropout kinds"):
        FusedMLP.from_members(_members(1, dropout=0.1) +
                              _members(1, dropout=0.1, kind="gaussian"))


def test_select_and_extend_move_whole_members() -> None:
    members = _members(4, batchnorm=True)
    fused = FusedMLP.from_members(members[:3])
    fused.select(torch.tensor([2, 0]))
    fused.extend(FusedMLP.from_members(members[3:]))
    x = torch.randn(7, 5, dtype=torch.float64)
    out = fused.forward(x, train=False)
    for row, i in enumerate([2, 0, 3]):
        members[i].eval()
        torch.testing.assert_close(out[row], members[i](x), rtol=1e-12, atol=1e-12)


# -- randomness: per-member rates with the distribution of the sequential layers -----------


def _hidden_after_dropout(kind: str, rates: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-mode activations of the first block with and without the dropout draw."""
    members = [_members(1, n_features=4, hidden=256, layers=1, dropout=p, kind=kind)[0]
               for p in rates]
    fused = FusedMLP.from_members(members)
    x = torch.randn(4000, 4, dtype=torch.float64).abs()
    weight = fused._param_views["body.0.weight"].detach()
    bias = fused._param_views["body.0.bias"].detach()
    clean = torch.relu(torch.baddbmm(bias.unsqueeze(1), x.expand(len(rates), -1, -1),
                                     weight.transpose(1, 2)))
    with torch.no_grad():
        dropped = clean * fused._mask(tuple(clean.shape), clean.dtype,
                                      torch.Generator().manual_seed(0))
    return clean, dropped


def test_bernoulli_dropout_keeps_each_members_share_and_scales_by_its_rate() -> None:
    rates = [0.0, 0.1, 0.5]
    clean, dropped = _hidden_after_dropout("bernoulli", rates)
    active = clean > 0
    for i, p in enumerate(rates):
        kept = dropped[i][active[i]] != 0
        n = int(active[i].sum())
        assert abs(kept.double().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5 + 1e-12
        ratio = dropped[i][active[i]][kept] / clean[i][active[i]][kept]
        torch.testing.assert_close(ratio, torch.full_like(ratio, 1 / (1 - p)))


def test_gaussian_dropout_has_mean_one_and_each_members_variance() -> None:
    rates = [0.0, 0.2, 0.6]
    clean, dropped = _hidden_after_dropout("gaussian", rates)
    for i, p in enumerate(rates):
        active = clean[i] > 0
        noise = dropped[i][active] / clean[i][active]
        n = noise.numel()
        var = p / (1 - p)
        assert abs(noise.mean().item() - 1) < 5 * (var / n) ** 0.5 + 1e-12
        assert abs(noise.var().item() - var) < 5 * var * (2 / n) ** 0.5 + 1e-12


def test_input_noise_has_each_members_sigma() -> None:
    x = torch.randn(5000, 6, dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    noisy = add_input_noise(x, sigma, torch.Generator().manual_seed(0))
    assert noisy.shape == (3, 5000, 6)
    assert torch.equal(noisy[0], x)
    for i in (1, 2):
        std = (noisy[i] - x).std().item()
        assert abs(std - sigma[i].item()) < 0.02 * sigma[i].item()


# -- mixed precision: bfloat16 passes on float32 master weights -----------------------------


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_passes_follow_the_float32_ones_and_keep_float32_masters(
        batchnorm: bool, half: torch.dtype) -> None:
    members = [m.float() for m in _members(3, hidden=32, batchnorm=batchnorm)]
    exact = FusedMLP.from_members(members)
    mixed = FusedMLP.from_members(members, half)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    # float16 steps take a loss scale: the gradients come back times it.
    scale = torch.tensor([1.0, 256.0, 2.0 ** 16]) if half == torch.float16 else None

    losses = [exact.train_step(x, y, "classification"),
              mixed.train_step(x, y, "classification", loss_scale=scale)]
    if scale is not None:
        mixed.grad.div_(scale.unsqueeze(1))
    grads = [list(_Layout.views(f.grad, f.layout.params).values()) for f in (exact, mixed)]
    twin = FusedMLP.from_members(members, half)
    autograd = torch.autograd.grad(
        member_loss("classification", twin.forward(x, train=True), y).sum(), twin.leaves())

    assert mixed.params.dtype == torch.float32 and mixed.buffers.dtype == torch.float32
    # The passes ran in the half precision (autograd's gradients of them are), the
    # gradients handed to the optimizer are float32.
    assert all(g.dtype == half for g in autograd)
    assert mixed.grad.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: the passes agree to about 1%.
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-2, atol=2e-2)
    flat = [torch.cat([g.float().flatten() for g in gs]) for gs in grads]
    assert (torch.linalg.vector_norm(flat[1] - flat[0]) / torch.linalg.vector_norm(flat[0])
            ).item() < 0.05
    # Every tensor's gradient points the same way (gradients that nearly cancel over
    # the batch, as batch norm's shift, lose more of their digits to bfloat16).
    for g32, g16 in zip(grads[0], grads[1], strict=True):
        cosine = F.cosine_similarity(g16.float().flatten(), g32.flatten(), dim=0)
        assert cosine.item() > 0.98
    # The running statistics are the master dtype's, close to float32's.
    torch.testing.assert_close(mixed.buffers, exact.buffers, rtol=2e-2, atol=2e-2)
    # An update of the masters is what the next half-precision forward sees.
    with torch.no_grad():
        mixed.params.mul_(0)
    assert torch.count_nonzero(mixed.forward(x, train=False)) == 0
    # Max-norm clipping acts on the masters, not on the copy.
    assert all(w.dtype == torch.float32 for w in mixed.weights())


# -- float32 products in oneDNN, on contiguous copies of the weights -----------------------


@pytest.mark.skipif(not onednn_fp32_exact(), reason="oneDNN rounds float32 operands here "
                    "(AMX), or this torch cannot route float32 products to it")
@pytest.mark.parametrize("batchnorm", [False, True])
def test_onednn_products_on_weight_copies_equal_the_default_path(
        batchnorm: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # 5 members of 128 units: products large enough for oneDNN to pay (5 * 128^2 >= 2^16).
    members = [m.float() for m in _members(5, hidden=128, batchnorm=batchnorm, dropout=0.3)]
    monkeypatch.setattr("tuner.fused._model.onednn_fp32_preferred", lambda: False)
    default = FusedMLP.from_members(members)
    monkeypatch.setattr("tuner.fused._model.onednn_fp32_preferred", lambda: True)
    onednn = FusedMLP.from_members(members)
    assert onednn.onednn and not default.onednn
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    flag = torch.backends.mkldnn.matmul.fp32_precision

    for step in range(3):
        losses = [f.train_step(x, y, "classification", torch.Generator().manual_seed(step))
                  for f in (default, onednn)]
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(onednn.grad, default.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(onednn.buffers, default.buffers, rtol=1e-5, atol=1e-6)
        for f in (default, onednn):  # an update of the rows is what the next step sees
            f.params.sub_(0.1 * default.grad)
    outputs = [f.forward(x, train=False) for f in (default, onednn)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    # Compaction and refills rebuild the copies: members 3, 1, 4 and 0, then a newcomer.
    newcomer = [m.float() for m in _members(1, hidden=128, batchnorm=batchnorm, dropout=0.3)]
    for f in (default, onednn):
        f.select(torch.tensor([3, 1, 4, 0]))
        f.extend(FusedMLP.from_members(newcomer))
    assert onednn.size == 5 and onednn.onednn
    outputs = [f.forward(x, train=False) for f in (default, onednn)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    # Two members' products are too small for oneDNN to pay: back to the default BLAS.
    for f in (default, onednn):
        f.select(torch.tensor([4, 2]))
    assert not onednn.onednn and onednn._param_views is onednn._master_views
    outputs = [f.forward(x, train=False) for f in (default, onednn)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    assert torch.backends.mkldnn.matmul.fp32_precision == flag  # set only while it ran


@pytest.mark.parametrize("metric_name", ["accuracy", "cross_entropy"])
def test_evaluation_in_chunks_equals_each_members_own_evaluation(
        metric_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The validation pass over a split in chunks of rows (200 rows in chunks of 64 here)
    gives each member the loss and metric that tuner.train.loop.evaluate gives its own MLP."""
    monkeypatch.setattr("tuner.fused._metrics._EVAL_VALUES", 1)  # the 64-row minimum
    members = _members(3, batchnorm=True)
    for m in members:  # running statistics away from their initial values
        m.train()
        m(torch.randn(32, 5, dtype=torch.float64))
    fused = FusedMLP.from_members(members)
    x, y = torch.randn(200, 5, dtype=torch.float64), torch.randint(0, 3, (200,))
    metric = METRICS[metric_name]

    losses, values = evaluate_members(fused, x, y, "classification", metric)

    for i, m in enumerate(members):
        loss, value = evaluate(m, x, y, "classification", metric)
        torch.testing.assert_close(losses[i], loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(values[i].double(), value.double(), rtol=1e-6, atol=1e-7)
