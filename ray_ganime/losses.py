"""GAN losses, as plain PyTorch functions on logits and images (no Ray, no networks here).

All of them compute in float32 whatever the input dtype: under bf16 autocast the discriminator's logits
and the generator's images arrive in bfloat16, whose 8-bit mantissa is too coarse for a loss that is
summed, compared across steps and differentiated through (softplus/squares of near-equal values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.functional import l1_loss

__all__ = ["ADVERSARIAL_MODES", "AdversarialLoss", "total_variation", "l1_loss"]

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
        real_logits, fake_logits = real_logits.float(), fake_logits.float()
        if self.mode == "hinge":
            return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
        return self._to_label(real_logits, self.real_label) + self._to_label(fake_logits, self.fake_label)

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
    raise ValueError(f"unknown total variation norm {norm!r}; expected 'l1' or 'l2'")
