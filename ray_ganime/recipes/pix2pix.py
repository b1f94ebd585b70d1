"""Pix2Pix (Isola et al. 2017) with the GANime study's total-variation term (arXiv 2508.09207).

G: U-Net; D: 70x70 PatchGAN on (sketch, image) pairs. G loss = adv + λ_L1·L1 + λ_TV·TV; D loss scaled
by d_scale (0.5 in the PyTorch reference, 1.0 in the study). Order per step as in the reference:
G forward, D update, then G update with D frozen.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ray_ganime import transforms
from ray_ganime.losses import AdversarialLoss, total_variation
from ray_ganime.nets import PatchDiscriminator, UNetGenerator, init_weights
from ray_ganime.recipes.base import Direction, Options, Recipe, register, set_requires_grad


class Pix2PixModel(Options):
    ngf: int = Field(64, ge=1)
    ndf: int = Field(64, ge=1)
    norm: Literal["batch", "instance"] = "batch"
    dropout: float = Field(0.5, ge=0, lt=1)
    num_downs: int | None = None  # None: log2(crop_size), i.e. 8 at 256 px
    d_layers: int = Field(3, ge=1)  # 3 = the 70x70 PatchGAN


class Pix2PixLoss(Options):
    gan_mode: Literal["vanilla", "lsgan", "hinge"] = "vanilla"
    l1: float = Field(100.0, ge=0)
    tv: float = Field(0.0, ge=0)  # the study: 1e-4
    tv_norm: Literal["l1", "l2"] = "l1"
    d_scale: float = Field(0.5, gt=0)


@register
class Pix2Pix(Recipe):
    name = "pix2pix"
    task = "paired"
    ModelOptions = Pix2PixModel
    LossOptions = Pix2PixLoss

    def directions(self):
        return {"": Direction("G", source="sketch", target="color", paired=True)}

    def display_name(self):
        return "Pix2Pix + TV" if self.loss_opts.tv else "Pix2Pix"

    def build_nets(self):
        m, size = self.model_opts, self.cfg.data.crop_size
        nets = {"G": UNetGenerator(3, 3, m.ngf, m.num_downs, size, m.norm, m.dropout),
                "D": PatchDiscriminator(6, m.ndf, m.d_layers, m.norm)}
        for net in nets.values():
            init_weights(net, 0.02)
        self.adversarial = AdversarialLoss(self.loss_opts.gan_mode)
        return nets

    def build_optimizers(self):
        o = self.cfg.optim
        return {"G": self.adam(self.nets["G"].parameters(), o.lr_g), "D": self.adam(self.nets["D"].parameters(), o.lr_d)}

    def train_step(self, batch):
        G, D = self.train_nets["G"], self.train_nets["D"]
        sketch, real = batch["sketch"], batch["color"]
        w = self.loss_opts
        with self.autocast():
            fake = G(sketch)

        # D: real pairs vs generated pairs (generator output detached).
        set_requires_grad(self.nets["D"], True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        with self.autocast():
            real_logits = D(torch.cat([sketch, real], 1))
            fake_logits = D(torch.cat([sketch, fake.detach()], 1))
        loss_d = w.d_scale * self.adversarial.discriminator(real_logits, fake_logits)
        loss_d.backward()
        self.optimizers["D"].step()

        # G: fool D (frozen, and called unwrapped: it has no gradients to synchronise) + L1 + TV.
        set_requires_grad(self.nets["D"], False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self.autocast():
            fake_logits = self.nets["D"](torch.cat([sketch, fake], 1))
        loss_adv = self.adversarial.generator(fake_logits)
        loss_l1 = F.l1_loss(fake.float(), real.float())
        loss_tv = total_variation(fake, w.tv_norm) if w.tv else fake.new_zeros((), dtype=torch.float32)
        loss_g = loss_adv + w.l1 * loss_l1 + w.tv * loss_tv
        loss_g.backward()
        self.optimizers["G"].step()
        return {"loss_D": loss_d.detach(), "loss_G": loss_g.detach(), "G_adv": loss_adv.detach(),
                "G_L1": loss_l1.detach(), "G_TV": loss_tv.detach()}

    def generator_spec(self, direction=""):
        G, m = self.nets["G"], self.model_opts
        return {"class": "UNetGenerator",
                "args": {"in_channels": G.in_channels, "out_channels": G.out_channels, "ngf": m.ngf,
                         "num_downs": G.num_downs, "norm": m.norm, "dropout": m.dropout},
                **self.image_to_image_spec(direction, G.size_multiple, G.in_channels, G.out_channels)}

    def samples(self, batch):
        fake = self.run_generator("G", batch["sketch"])
        return [[transforms.to_uint8(t) for t in (batch["sketch"][i], fake[i], batch["color"][i])]
                for i in range(len(fake))]
