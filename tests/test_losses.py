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
    assert total_variation(image, "squared").item() == pytest.approx(0.5 * (a * a + b * b), rel=1e-6)


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


@pytest.mark.parametrize("norm", ["l1", "l2", "squared"])
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


@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "hinge"])
def test_discriminator_terms_add_up_to_its_loss(mode):
    """AnimeGAN's and CartoonGAN's discriminators weigh real and several kinds of fake term themselves."""
    loss = AdversarialLoss(mode)
    real, fake = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    assert torch.equal(loss.discriminator(real, fake), loss.real(real) + loss.fake(fake))
    assert loss.real(torch.full((1, 4), 5.0)) < loss.fake(torch.full((1, 4), 5.0))  # confident "real" logits


def test_l1_loss_is_torch_l1_loss():
    assert losses.l1_loss is F.l1_loss


# ---------------------------------------------------------------------------- AnimeGAN gram / colour / content


def test_gram_matrix_of_known_tensor():
    # C=2, H=1, W=2: rows (1, 2) and (3, 4); Gram = [[1+4, 3+8], [3+8, 9+16]] / (C*H*W = 4).
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    gram = losses.gram_matrix(features)
    assert gram.shape == (1, 2, 2) and gram.dtype == torch.float32
    assert torch.equal(gram, torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4)
    # Batched and non-square maps: (N, C, H, W) -> (N, C, C), symmetric.
    g = losses.gram_matrix(torch.rand(3, 5, 4, 6))
    assert g.shape == (3, 5, 5)
    torch.testing.assert_close(g, g.transpose(1, 2))
    with pytest.raises(ValueError, match="N, C, H, W"):
        losses.gram_matrix(torch.rand(5, 4, 6))


def test_gram_loss_by_hand():
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    b = torch.zeros_like(a)
    # mean |G(a) - 0| = (5 + 11 + 11 + 25) / 4 / 4
    assert losses.gram_loss(a, b).item() == pytest.approx(52 / 16, rel=1e-6)
    assert losses.gram_loss(a, a).item() == 0.0


@pytest.mark.parametrize(("rgb", "yuv"), [
    ((1.0, 1.0, 1.0), (1.0, 0.0, 0.0)),  # white: full luma, (nearly) no chroma
    ((-1.0, -1.0, -1.0), (0.0, 0.0, 0.0)),  # black
    ((1.0, -1.0, -1.0), (0.299, -0.14714, 0.61498)),  # pure red: the first column of the matrix
])
def test_rgb_to_yuv_of_pure_colours(rgb, yuv):
    image = torch.tensor(rgb).view(1, 3, 1, 1).expand(2, 3, 4, 5)
    out = losses.rgb_to_yuv(image)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    expected = torch.tensor(yuv).view(1, 3, 1, 1).expand(2, 3, 4, 5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_color_loss_zero_for_equal_positive_otherwise():
    torch.manual_seed(0)
    a = torch.rand(2, 3, 8, 8) * 2 - 1
    assert losses.color_loss(a, a).item() == 0.0
    assert losses.color_loss(a, a.flip(-1)).item() > 0
    loss = losses.color_loss(a, -a)
    assert loss.dim() == 0 and loss.item() > 0


def test_color_loss_is_l1_on_y_huber_on_u_v():
    # Grey images differ only in Y (U and V of a grey are ~0): the loss is L1 on Y.
    grey = torch.full((1, 3, 2, 2), -1.0)
    lighter = torch.full((1, 3, 2, 2), 0.0)  # [0, 1] value 0.5: dY = 0.5
    assert losses.color_loss(lighter, grey).item() == pytest.approx(0.5, abs=1e-4)

    # Pure red vs black: dY = .299 (L1), dU = -.14714, dV = .61498 (both below delta 1: quadratic, 0.5 d**2).
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    expected = 0.299 + 0.5 * 0.14714**2 + 0.5 * 0.61498**2
    assert losses.color_loss(red, grey).item() == pytest.approx(expected, rel=1e-4)

    # Red vs cyan: dV = 1.22996, past delta 1, so Huber is linear there (|d| - 0.5), unlike L1 or 0.5 d**2.
    cyan = torch.tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    yuv_red, yuv_cyan = (losses.rgb_to_yuv(x)[0, :, 0, 0] for x in (red, cyan))
    dy, du, dv = (yuv_red - yuv_cyan).abs().tolist()
    assert dv > 1 > du
    expected = dy + 0.5 * du**2 + (dv - 0.5)
    assert losses.color_loss(red, cyan).item() == pytest.approx(expected, rel=1e-5)
    assert losses.color_loss(red, cyan).item() != pytest.approx(dy + du + dv, rel=1e-3)


def test_content_loss_is_mean_l1():
    a = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    b = torch.tensor([[0.0, 0.0], [0.5, 1.0]])
    assert losses.content_loss(a, b).item() == pytest.approx((1 + 2 + 0 + 3) / 4, rel=1e-6)


def test_animegan_losses_are_float32_for_bf16_inputs():
    torch.manual_seed(0)
    images = (torch.rand(2, 3, 8, 8) * 2 - 1).bfloat16()
    other = images.flip(-1)
    feats = torch.rand(2, 4, 5, 5).bfloat16()
    feats2 = torch.rand(2, 4, 5, 5).bfloat16()
    for value, reference in [
        (losses.color_loss(images, other), losses.color_loss(images.float(), other.float())),
        (losses.content_loss(feats, feats2), losses.content_loss(feats.float(), feats2.float())),
        (losses.gram_loss(feats, feats2), losses.gram_loss(feats.float(), feats2.float())),
    ]:
        assert value.dtype == torch.float32
        assert value.item() == reference.item()
    assert losses.gram_matrix(feats).dtype == torch.float32
    assert losses.rgb_to_yuv(images).dtype == torch.float32
