"""Adversarial and total-variation losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ray_ganime import losses
from ray_ganime.losses import AdversarialLoss, total_variation

REAL = [0.5, 2.0, -1.0]
FAKE = [-1.5, 0.25, 1.0]


def _logits(values: list[float]) -> torch.Tensor:
    # Shaped like a (tiny) PatchGAN map: the losses must not care about the shape.
    return torch.tensor(values).reshape(1, 1, 1, len(values))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _bce(logit: float, target: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(p) + (1.0 - target) * math.log(1.0 - p))


# ------------------------------------------------------------------------------------------- adversarial


@pytest.mark.parametrize(("mode", "expected_g", "expected_d"), [
    ("vanilla",
     _mean(math.log1p(math.exp(-f)) for f in FAKE),
     _mean(math.log1p(math.exp(-r)) for r in REAL) + _mean(math.log1p(math.exp(f)) for f in FAKE)),
    ("lsgan",
     _mean((f - 1) ** 2 for f in FAKE),   # (6.25 + 0.5625 + 0) / 3
     _mean((r - 1) ** 2 for r in REAL) + _mean(f**2 for f in FAKE)),  # (0.25 + 1 + 4) / 3 + (2.25 + 0.0625 + 1) / 3
    ("hinge",
     1 / 12,                              # -mean(-1.5, 0.25, 1.0)
     (0.5 + 0 + 2) / 3 + (0 + 1.25 + 2) / 3),
])
def test_adversarial_losses_by_hand(mode, expected_g, expected_d):
    loss = AdversarialLoss(mode)
    assert loss.generator(_logits(FAKE)).item() == pytest.approx(expected_g, rel=1e-6)
    # The sum of the real and the fake terms, unscaled.
    assert loss.discriminator(_logits(REAL), _logits(FAKE)).item() == pytest.approx(expected_d, rel=1e-6)


@pytest.mark.parametrize("mode", ["vanilla", "lsgan"])
def test_custom_labels(mode):
    loss = AdversarialLoss(mode, real_label=0.9, fake_label=0.1)
    if mode == "vanilla":
        expected_g = _mean(_bce(f, 0.9) for f in FAKE)
        expected_d = _mean(_bce(r, 0.9) for r in REAL) + _mean(_bce(f, 0.1) for f in FAKE)
    else:
        expected_g = _mean((f - 0.9) ** 2 for f in FAKE)
        expected_d = _mean((r - 0.9) ** 2 for r in REAL) + _mean((f - 0.1) ** 2 for f in FAKE)
    assert loss.generator(_logits(FAKE)).item() == pytest.approx(expected_g, rel=1e-6)
    assert loss.discriminator(_logits(REAL), _logits(FAKE)).item() == pytest.approx(expected_d, rel=1e-6)


def test_adversarial_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown adversarial loss mode"):
        AdversarialLoss("wgan")
    with pytest.raises(ValueError, match="hinge"):
        AdversarialLoss("hinge", real_label=0.9)


@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "hinge"])
def test_adversarial_losses_are_float32_under_bf16_autocast(mode):
    loss = AdversarialLoss(mode)
    real = _logits(REAL).bfloat16().requires_grad_()
    fake = _logits(FAKE).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d_loss = loss.discriminator(real, fake)
        g_loss = loss.generator(fake)
    assert d_loss.dtype == g_loss.dtype == torch.float32
    # Same value as on the float32 copies of the same (bf16-representable) logits.
    reference = AdversarialLoss(mode)
    assert d_loss.item() == reference.discriminator(real.detach().float(), fake.detach().float()).item()
    assert g_loss.item() == reference.generator(fake.detach().float()).item()
    (d_loss + g_loss).backward()
    assert real.grad.dtype == torch.bfloat16 and real.grad.abs().sum() > 0 and fake.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------- total variation


def test_total_variation_of_constant_image():
    image = torch.full((2, 3, 8, 8), 0.3)
    assert total_variation(image, "l1").item() == 0.0
    # eps keeps the l2 gradient finite on flat regions: a flat image scores sqrt(eps).
    assert total_variation(image, "l2").item() == pytest.approx(math.sqrt(1e-8), rel=1e-3)


def test_total_variation_of_ramp():
    # x[h, w] = a*w + b*h: every horizontal difference is a, every vertical one b.
    a, b = 0.3, -0.7
    h, w = torch.meshgrid(torch.arange(5.0), torch.arange(7.0), indexing="ij")
    image = (a * w + b * h).expand(2, 3, 5, 7)
    assert total_variation(image, "l1").item() == pytest.approx(abs(a) + abs(b), rel=1e-6)
    assert total_variation(image, "l2").item() == pytest.approx(math.sqrt(a * a + b * b), rel=1e-6)


def test_total_variation_of_checkerboard():
    # +-1 checkerboard: every difference is +-2 in both directions.
    h, w = torch.meshgrid(torch.arange(6), torch.arange(4), indexing="ij")
    image = (1 - 2 * ((h + w) % 2)).float()[None, None]
    assert total_variation(image, "l1").item() == pytest.approx(4.0, rel=1e-6)
    assert total_variation(image, "l2").item() == pytest.approx(math.sqrt(8.0), rel=1e-6)


def test_total_variation_grids():
    # 3x3, last column 1: l1 averages over all 3x2 horizontal differences (three are 1); l2 only over the
    # 2x2 pixels with both neighbours, where the step is seen by the two pixels of the middle column.
    image = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    assert total_variation(image, "l1").item() == pytest.approx(0.5, rel=1e-6)
    assert total_variation(image, "l2").item() == pytest.approx(0.5 * math.sqrt(1 + 1e-8) + 0.5 * 1e-4, rel=1e-6)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_total_variation_gradient(norm):
    torch.manual_seed(0)
    image = torch.rand(2, 3, 16, 16, requires_grad=True)
    total_variation(image, norm).backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    # Following the negative gradient smooths the image.
    with torch.no_grad():
        smoother = image - 0.01 * image.grad / image.grad.abs().max()
    assert total_variation(smoother, norm) < total_variation(image, norm)
    flat = torch.zeros(1, 1, 4, 4, requires_grad=True)
    total_variation(flat, norm).backward()
    assert torch.isfinite(flat.grad).all()


def test_total_variation_is_float32_for_bf16_images():
    image = torch.rand(1, 3, 8, 8).bfloat16()
    for norm in ("l1", "l2"):
        tv = total_variation(image, norm)
        assert tv.dtype == torch.float32
        assert tv.item() == pytest.approx(total_variation(image.float(), norm).item(), rel=1e-6)


def test_total_variation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        total_variation(torch.rand(1, 1, 4, 4), "l3")
    with pytest.raises(ValueError, match="H, W >= 2"):
        total_variation(torch.rand(1, 1, 1, 4))


def test_l1_loss_is_torch_l1_loss():
    assert losses.l1_loss is F.l1_loss
