"""GAN losses, as plain PyTorch functions on logits and images (no Ray, no networks here).

All of them compute in float32 whatever the input dtype: under bf16 autocast the discriminator's logits
and the generator's images arrive in bfloat16, whose 8-bit mantissa is too coarse for a loss that is
summed, compared across steps and differentiated through (softplus/squares of near-equal values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.functional import l1_loss

__all__ = ["ADVERSARIAL_MODES", "YUV_FROM_RGB", "AdversarialLoss", "color_loss", "content_loss", "gram_loss",
           "gram_matrix", "l1_loss", "rgb_to_yuv", "total_variation"]

ADVERSARIAL_MODES = ("vanilla", "lsgan", "hinge")


class AdversarialLoss:
    """The adversarial objective of a GAN on raw discriminator logits (any shape, e.g. a PatchGAN map).

    * ``"vanilla"``: binary cross-entropy with logits (pix2pix, non-saturating generator loss).
    * ``"lsgan"``: mean squared error to the labels (LSGAN; CycleGAN's default).
    * ``"hinge"``: D = mean(relu(1 - real)) + mean(relu(1 + fake)), G = -mean(fake) (SAGAN / BigGAN).

    ``real_label``/``fake_label`` are the targets of the vanilla and lsgan modes (lower ``real_label`` for
    one-sided label smoothing). The hinge loss has no targets, so other labels are refused there rather
    than ignored.

    :meth:`discriminator` returns real term + fake term, unscaled: pix2pix halves the discriminator loss
    and other recipes do not, so that factor is the recipe's, taken from its config.
    """

    def __init__(self, mode: str, real_label: float = 1.0, fake_label: float = 0.0) -> None:
        if mode not in ADVERSARIAL_MODES:
            raise ValueError(f"unknown adversarial loss mode {mode!r}; expected one of {ADVERSARIAL_MODES}")
        if mode == "hinge" and (real_label, fake_label) != (1.0, 0.0):
            raise ValueError("the hinge loss has no targets: real_label/fake_label apply to vanilla and lsgan only")
        self.mode = mode
        self.real_label = float(real_label)
        self.fake_label = float(fake_label)

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Loss of the generator: its fakes should be judged real. A float32 scalar."""
        fake_logits = fake_logits.float()
        if self.mode == "hinge":
            return -fake_logits.mean()
        return self._to_label(fake_logits, self.real_label)

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """Loss of the discriminator: real term + fake term (unscaled, see the class). A float32 scalar."""
        return self.real(real_logits) + self.fake(fake_logits)

    def real(self, logits: torch.Tensor) -> torch.Tensor:
        """The discriminator's term for images it should judge real. A float32 scalar."""
        logits = logits.float()
        return F.relu(1.0 - logits).mean() if self.mode == "hinge" else self._to_label(logits, self.real_label)

    def fake(self, logits: torch.Tensor) -> torch.Tensor:
        """The discriminator's term for images it should judge fake: generated ones, and in AnimeGAN and
        CartoonGAN real ones that lack what makes the style (gray, edge-smoothed). A float32 scalar."""
        logits = logits.float()
        return F.relu(1.0 + logits).mean() if self.mode == "hinge" else self._to_label(logits, self.fake_label)

    def _to_label(self, logits: torch.Tensor, label: float) -> torch.Tensor:
        target = torch.full_like(logits, label)
        if self.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)

    def __repr__(self) -> str:
        return f"AdversarialLoss(mode={self.mode!r}, real_label={self.real_label}, fake_label={self.fake_label})"


def total_variation(images: torch.Tensor, norm: str = "l1", eps: float = 1e-8) -> torch.Tensor:
    """Total variation of ``(..., H, W)`` images, a float32 scalar averaged over every position.

    * ``"l1"`` (anisotropic, the GANime study's TV loss, weighted 1e-4 there):
      ``mean|x[..., 1:, :] - x[..., :-1, :]| + mean|x[..., :, 1:] - x[..., :, :-1]|``.
    * ``"l2"`` (isotropic): ``mean(sqrt(dx**2 + dy**2 + eps))`` over the (H-1) x (W-1) pixels that have both
      a right and a lower neighbour. ``eps`` keeps the gradient finite on flat regions, so a constant image
      scores ``sqrt(eps)``, not 0.
    * ``"squared"`` (AnimeGANv2's TF ``total_variation_loss``, ``l2_loss(d) / size(d)`` per axis):
      ``0.5 * (mean(dy**2) + mean(dx**2))``.
    """
    if images.dim() < 2 or images.shape[-1] < 2 or images.shape[-2] < 2:
        raise ValueError(f"total_variation needs (..., H, W) with H, W >= 2, got shape {tuple(images.shape)}")
    x = images.float()
    if norm == "l1":
        return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    if norm == "l2":
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        return torch.sqrt(dx.square() + dy.square() + eps).mean()
    if norm == "squared":
        dy, dx = x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]
        return 0.5 * (dy.square().mean() + dx.square().mean())
    raise ValueError(f"unknown total variation norm {norm!r}; expected 'l1', 'l2' or 'squared'")


# ------------------------------------------------------------------------------------------------------
# AnimeGAN / CartoonGAN: perceptual (VGG feature) and colour losses
# ------------------------------------------------------------------------------------------------------

#: RGB -> YUV rows (Y, U, V) on [0, 1] images: AnimeGAN's ``tf.image.rgb_to_yuv`` (to the 5 digits given here).
YUV_FROM_RGB = (
    (0.299, 0.587, 0.114),
    (-0.14714, -0.28887, 0.43601),
    (0.61498, -0.51497, -0.10001),
)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) feature maps -> (N, C, C) float32 Gram matrices divided by C*H*W.

    The divisor is AnimeGAN's (TF: ``gram / size of one feature map``), not the C-free ``H*W`` of neural
    style transfer, so the style weights of its recipes apply unchanged.
    """
    if features.dim() != 4:
        raise ValueError(f"gram_matrix expects (N, C, H, W) features, got shape {tuple(features.shape)}")
    n, c, h, w = features.shape
    x = features.float().reshape(n, c, h * w)
    return torch.bmm(x, x.transpose(1, 2)) / (c * h * w)


def gram_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """AnimeGAN's style loss: mean L1 between the Gram matrices of two (N, C, H, W) feature maps. Float32 scalar."""
    return F.l1_loss(gram_matrix(a), gram_matrix(b))


def rgb_to_yuv(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [-1, 1] -> float32 YUV of the [0, 1] image (channel dim 1: Y, U, V)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"rgb_to_yuv expects (N, 3, H, W) images, got shape {tuple(images.shape)}")
    x = (images.float() + 1) / 2
    matrix = torch.tensor(YUV_FROM_RGB, dtype=torch.float32, device=x.device)
    return torch.einsum("yc,nchw->nyhw", matrix, x)


def color_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """AnimeGAN's colour loss on (N, 3, H, W) images in [-1, 1]: L1(Y) + Huber(U) + Huber(V), a float32 scalar.

    Huber with delta 1, averaged, as TF's ``tf.losses.huber_loss``: 0.5 d**2 below 1, |d| - 0.5 above.
    """
    f, r = rgb_to_yuv(fake), rgb_to_yuv(real)
    return (
        F.l1_loss(f[:, 0], r[:, 0])
        + F.huber_loss(f[:, 1], r[:, 1], delta=1.0)
        + F.huber_loss(f[:, 2], r[:, 2], delta=1.0)
    )


def content_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Content loss of AnimeGAN / CartoonGAN: mean L1 between two feature maps (e.g. VGG19 conv4_4). Float32 scalar."""
    return F.l1_loss(a.float(), b.float())
