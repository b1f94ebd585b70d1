"""AnimeGAN (Chen, Liu and Chen 2019) and AnimeGANv2: photo -> anime from unpaired photos (A) and anime frames
(B), CartoonGAN's game (recipes/cartoongan.py) with three more losses and gray anime frames.

D (LSGAN, spectral norm) judges anime frames real and four kinds of image fake: G(photo), the frames in gray
(so that D judges texture and line, not colour) and the gray edge-smoothed frames (so that clear edges count):
``d_adversarial·(d_real·real(B) + d_fake·fake(G(p)) + d_gray·fake(gray B) + d_smooth·fake(smooth gray B))``.

G: ``adversarial·GAN(D(G(p))) + content·|VGG(G(p)) - VGG(p)| + gram·|Gram(VGG(G(p))) - Gram(VGG(gray B))|
+ color·YUV(G(p), p) [+ tv·TV(G(p))]``, VGG19 conv4_4 pre-activation. An init phase of content-only training
comes first, as in CartoonGAN. ``animegan`` has the v1 paper's generator and weights, ``animeganv2`` the
released v2 generator (state-dict compatible with animegan2-pytorch) and its defaults; configs/ hold both
papers' settings per style.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ray_ganime import losses
from ray_ganime.nets import AnimeGANDiscriminator, AnimeGANv1Generator, AnimeGANv2Generator
from ray_ganime.recipes.base import Options, register, set_requires_grad
from ray_ganime.recipes.cartoongan import CartoonGAN, PerceptualLoss


class AnimeGANModel(Options):
    ndf: int = Field(64, ge=2)  # the TF code's `ch`: D's first conv has ndf / 2 channels
    d_layers: int = Field(3, ge=1)  # the TF code's `n_dis`
    spectral_norm: bool = True


class AnimeGANv2Model(AnimeGANModel):
    # animegan2-pytorch's resizing: True resizes to the saved sizes (any input size; its released weights),
    # False doubles (sizes a multiple of 4).
    align_corners: bool = True


class AnimeGANLoss(PerceptualLoss):
    """The v1 paper's weights."""

    gan_mode: Literal["lsgan", "vanilla", "hinge"] = "lsgan"
    adversarial: float = Field(300.0, ge=0)
    content: float = Field(1.5, ge=0)
    gram: float = Field(3.0, ge=0)
    color: float = Field(10.0, ge=0)
    tv: float = Field(0.0, ge=0)
    d_adversarial: float = Field(300.0, ge=0)
    d_real: float = Field(1.0, ge=0)
    d_fake: float = Field(1.0, ge=0)
    d_gray: float = Field(1.0, ge=0)
    d_smooth: float = Field(0.1, ge=0)


class AnimeGANv2Loss(AnimeGANLoss):
    """The v2 TF code's defaults."""

    gram: float = Field(2.5, ge=0)
    tv: float = Field(1.0, ge=0)
    d_real: float = Field(1.7, ge=0)
    d_fake: float = Field(1.7, ge=0)
    d_gray: float = Field(1.7, ge=0)
    d_smooth: float = Field(1.0, ge=0)


@register
class AnimeGAN(CartoonGAN):
    name = "animegan"
    ModelOptions = AnimeGANModel
    LossOptions = AnimeGANLoss
    cartoon_views = ("B_gray", "B_smooth_gray")

    def display_name(self):
        return "AnimeGAN"

    def _generator(self):
        return AnimeGANv1Generator()

    def build_nets(self):
        m = self.model_opts
        self.adversarial = losses.AdversarialLoss(self.loss_opts.gan_mode)
        return {"G": self._generator(), "D": AnimeGANDiscriminator(m.ndf, m.d_layers, m.spectral_norm)}

    def discriminator_step(self, batch, fake):
        w, adv = self.loss_opts, self.adversarial
        set_requires_grad(self.nets["D"], True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        with self.autocast():
            real, generated, gray, smooth = self.discriminator_logits(
                [batch["B"], fake, batch["B_gray"], batch["B_smooth_gray"]])
        terms = {"D_real": adv.real(real), "D_fake": adv.fake(generated), "D_gray": adv.fake(gray),
                 "D_smooth": adv.fake(smooth)}
        loss = w.d_adversarial * (w.d_real * terms["D_real"] + w.d_fake * terms["D_fake"]
                                  + w.d_gray * terms["D_gray"] + w.d_smooth * terms["D_smooth"])
        loss.backward()
        self.optimizers["D"].step()
        return loss, terms

    def generator_step(self, batch, photo, fake):
        w = self.loss_opts
        set_requires_grad(self.nets["D"], False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self.autocast():
            adversarial = self.adversarial.generator(self.nets["D"](fake))
            with torch.no_grad():
                target, gray = self.features(torch.cat([photo, batch["B_gray"]])).chunk(2)
            features = self.features(fake)
        terms = {"G_adv": adversarial, "G_content": losses.content_loss(features, target),
                 "G_gram": losses.gram_loss(features, gray), "G_color": losses.color_loss(fake, photo)}
        loss = (w.adversarial * adversarial + w.content * terms["G_content"] + w.gram * terms["G_gram"]
                + w.color * terms["G_color"])
        if w.tv:
            terms["G_tv"] = losses.total_variation(fake, "squared")
            loss = loss + w.tv * terms["G_tv"]
        loss.backward()
        self.optimizers["G"].step()
        return loss, terms

    def generator_spec(self, direction=""):
        return {"class": "AnimeGANv1Generator", "args": {}, **self.image_to_image_spec(direction, self.nets["G"].size_multiple)}


@register
class AnimeGANv2(AnimeGAN):
    name = "animeganv2"
    ModelOptions = AnimeGANv2Model
    LossOptions = AnimeGANv2Loss

    def display_name(self):
        return "AnimeGANv2"

    def _generator(self):
        return AnimeGANv2Generator(align_corners=self.model_opts.align_corners)

    def generator_spec(self, direction=""):
        return {"class": "AnimeGANv2Generator", "args": {"align_corners": self.model_opts.align_corners},
                **self.image_to_image_spec(direction, self.nets["G"].size_multiple)}
