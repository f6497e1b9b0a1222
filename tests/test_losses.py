"""Segmentation losses: known values, ignore handling, the all-ignored case, SegLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskkit.errors import ConfigError
from maskkit.models.losses import (
    LOSS_TERMS,
    SegLoss,
    boundary_band,
    boundary_loss,
    brier_loss,
    cross_entropy,
    dice_loss,
    focal_loss,
    mse_loss,
)

IGN = 255


def _random(b: int = 2, c: int = 3, h: int = 6, w: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g, requires_grad=True)
    target = torch.randint(0, c, (b, h, w), generator=g)
    return logits, target


def test_cross_entropy_known_values_and_torch_parity() -> None:
    target = torch.tensor([[[0, 1], [2, IGN]]])
    assert cross_entropy(torch.zeros(1, 3, 2, 2), target).item() == pytest.approx(math.log(3))
    assert cross_entropy(torch.zeros(1, 1, 2, 2), torch.tensor([[[0, 1], [1, IGN]]])).item() == pytest.approx(
        math.log(2)
    )
    logits, target = _random()
    target[0, :2] = IGN
    weights = [0.2, 1.0, 3.0]
    ref = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=IGN)
    assert cross_entropy(logits, target, weights).item() == pytest.approx(ref.item(), rel=1e-5)


def test_ignore_index_is_respected() -> None:
    logits, target = _random()
    target[:, 0] = IGN
    changed = logits.detach().clone()
    changed[:, :, 0] = 50.0 * torch.randn_like(changed[:, :, 0])  # only ignored pixels differ
    for fn in (cross_entropy, dice_loss, focal_loss, boundary_loss, brier_loss):
        assert fn(changed, target).item() == pytest.approx(fn(logits.detach(), target).item(), rel=1e-6), fn.__name__


def test_dice_known_values() -> None:
    target = torch.tensor([[[0, 0, 0, 1]]])  # 3 background pixels, 1 foreground
    uniform = torch.zeros(1, 2, 1, 4)
    # p = 0.5 everywhere: dice_c = 2 * 0.5 n_c / (0.5 * 4 + n_c)
    expected = ((1 - 3 / 5) + (1 - 1 / 3)) / 2
    assert dice_loss(uniform, target).item() == pytest.approx(expected, rel=1e-5)
    perfect = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40 - 20
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # binary variant: sigmoid(0) = 0.5 -> 1 - 2 * 0.5 / (2 + 1)
    assert dice_loss(torch.zeros(1, 1, 1, 4), target).item() == pytest.approx(1 - 1 / 3, rel=1e-5)
    # classes absent from the target do not count
    three = torch.zeros(1, 3, 1, 4)
    assert 0 < dice_loss(three, target).item() < 1


def test_focal_known_values() -> None:
    logits, target = _random()
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(cross_entropy(logits, target).item(), rel=1e-6)
    # two classes, uniform: p_t = 0.5 -> 0.25 * log 2
    assert focal_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)).item() == pytest.approx(
        0.25 * math.log(2)
    )
    assert focal_loss(logits, target).item() < cross_entropy(logits, target).item()


def test_mse_known_values() -> None:
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(pred)
    assert mse_loss(pred, target).item() == pytest.approx(30 / 4)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])
    assert mse_loss(pred, target, mask).item() == pytest.approx((1 + 2 * 16) / 3)
    assert mse_loss(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_boundary_band_and_loss() -> None:
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[0, :, 3:] = 1
    target[0, 0, 0] = IGN
    band = boundary_band(target, IGN, radius=1)
    assert band[0].sum().item() == 12  # columns 2 and 3
    assert band[0, :, 2:4].all() and not band[0, 0, 0]
    uniform_band = boundary_band(torch.zeros(1, 4, 4, dtype=torch.long), IGN)
    assert not uniform_band.any()
    # ignore pixels never create a boundary
    assert not boundary_band(torch.tensor([[[0, IGN, 0]]]), IGN, radius=1).any()
    logits = torch.randn(1, 2, 6, 6)
    per_pixel = F.cross_entropy(logits, target.clamp(max=1), reduction="none")
    expected = per_pixel[band].mean()
    assert boundary_loss(logits, target, IGN, radius=1).item() == pytest.approx(expected.item(), rel=1e-5)
    assert boundary_loss(logits, torch.zeros(1, 6, 6, dtype=torch.long)).item() == 0.0


@pytest.mark.parametrize("channels", [1, 3])
def test_all_ignored_gives_zero_loss_and_finite_zero_gradients(channels: int) -> None:
    logits = torch.randn(2, channels, 5, 4, requires_grad=True)
    target = torch.full((2, 5, 4), IGN, dtype=torch.long)
    spec = dict.fromkeys(LOSS_TERMS, 1.0)
    terms = SegLoss(spec, class_weights=[1.0] * max(channels, 2))(logits, target)
    assert set(terms) == {f"loss_{k}" for k in LOSS_TERMS}
    total = sum(terms.values())
    total.backward()
    for name, value in terms.items():
        assert torch.isfinite(value) and value.item() == 0.0, name
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum().item() == 0.0


def test_gradients_finite_and_extreme_logits() -> None:
    logits, target = _random(seed=3)
    big = (logits * 1e4).detach().requires_grad_(True)
    terms = SegLoss(dict.fromkeys(LOSS_TERMS, 1.0))(big, target)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert torch.isfinite(big.grad).all() and big.grad.abs().sum() > 0


def test_segloss_weights_terms_and_validation() -> None:
    logits, target = _random(seed=1)
    loss = SegLoss({"ce": 2.0, "dice": 0.5, "focal": 0.0})
    terms = loss(logits, target)
    assert set(terms) == {"loss_ce", "loss_dice"}
    assert terms["loss_ce"].item() == pytest.approx(2 * cross_entropy(logits, target).item(), rel=1e-6)
    assert terms["loss_dice"].item() == pytest.approx(0.5 * dice_loss(logits, target).item(), rel=1e-6)
    # mse: Brier score for class targets, plain MSE for float targets
    assert SegLoss({"mse": 1.0})(logits, target)["loss_mse"].item() == pytest.approx(
        brier_loss(logits, target).item()
    )
    reg = torch.randn(2, 3, 6, 5)
    assert SegLoss({"mse": 1.0})(logits, reg)["loss_mse"].item() == pytest.approx(mse_loss(logits, reg).item())
    with pytest.raises(ConfigError, match="unknown loss term"):
        SegLoss({"lovasz": 1.0})
    with pytest.raises(ConfigError, match="non-zero"):
        SegLoss({"ce": 0.0})
    with pytest.raises(ConfigError, match="class_weights"):
        SegLoss({"ce": 1.0}, class_weights=[1.0, 2.0])(logits, target)
