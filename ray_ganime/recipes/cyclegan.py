"""CycleGAN (Zhu et al. 2017), as canonical junyanz/pytorch-CycleGAN-and-pix2pix, with the settings of the GANime
study (U-Net generators), CycleGANime (ResNet 12 blocks, normalised line art) and the Tsinghua avatar project
(2 downs + 4 blocks; identity:GAN:cycle = 5:1:10) as configs.

G_A: A -> B and G_B: B -> A (ResNet or U-Net); D_A tells real B from G_A(a), D_B real A from G_B(b) (70x70
PatchGANs on 3 channels). Per step, in canonical order:

1. G update, both discriminators frozen:
   adversarial·(GAN(D_A(G_A(a))) + GAN(D_B(G_B(b)))) + λ_A·|G_B(G_A(a)) - a| + λ_B·|G_A(G_B(b)) - b|
   + identity·(|G_A(b) - b| + |G_B(a) - a|)
2. D update: real images against generated ones drawn from each discriminator's image pool, × d_scale.

Every rank pools its own generated images; the pools travel with the checkpoint (``rank_state``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ray_ganime import transforms
from ray_ganime.config import View
from ray_ganime.losses import AdversarialLoss
from ray_ganime.nets import PatchDiscriminator, ResNetGenerator, UNetGenerator, init_weights
from ray_ganime.pool import ImagePool
from ray_ganime.recipes.base import Direction, Options, Recipe, register, set_requires_grad


class CycleGANModel(Options):
    generator: Literal["resnet", "unet"] = "resnet"
    n_blocks: int = Field(9, ge=0)  # resnet: 6 (128 px), 9 (256 px), 12 (CycleGANime), 4 (avatars)
    n_downs: int = Field(2, ge=1)  # resnet
    num_downs: int | None = Field(None, ge=2)  # unet; None: log2(crop_size)
    ngf: int = Field(64, ge=1)
    ndf: int = Field(64, ge=1)
    norm: Literal["instance", "batch", "none"] = "instance"
    dropout: float = Field(0.0, ge=0, lt=1)
    d_layers: int = Field(3, ge=1)  # 3 = the 70x70 PatchGAN
    # Train on a derived view of both domains (data.views {image: [VIEW]}), e.g. CycleGANime's normalised
    # line art; a package records it, so serving prepares its inputs the same way.
    view: View | None = None
    serve_lineart_target: float = Field(185.0, gt=0, lt=255)  # CycleGANime normalises to 185 at inference


class CycleGANLoss(Options):
    gan_mode: Literal["lsgan", "vanilla", "hinge"] = "lsgan"
    adversarial: float = Field(1.0, ge=0)
    cycle: float = Field(10.0, ge=0)  # λ of both directions, unless cycle_a / cycle_b say otherwise
    cycle_a: float | None = Field(None, ge=0)  # A -> B -> A
    cycle_b: float | None = Field(None, ge=0)  # B -> A -> B
    identity: float = Field(5.0, ge=0)  # canonical 0.5·λ; 0 skips the identity forward passes
    d_scale: float = Field(0.5, gt=0)
    pool_size: int = Field(50, ge=0)  # 0: no pool


@register
class CycleGAN(Recipe):
    name = "cyclegan"
    task = "unpaired"
    streams = {"A": "A", "B": "B"}
    ModelOptions = CycleGANModel
    LossOptions = CycleGANLoss

    def __init__(self, cfg, device="cpu", rank=0, frozen=True):
        super().__init__(cfg, device, rank, frozen)
        # One pool per discriminator; seeds differ per pool and per rank (each rank pools its own images).
        seeds = np.random.SeedSequence([cfg.train.seed, rank]).generate_state(2)
        self.pools = {"D_A": ImagePool(self.loss_opts.pool_size, int(seeds[0])),
                      "D_B": ImagePool(self.loss_opts.pool_size, int(seeds[1]))}

    def display_name(self):
        return "CycleGAN"

    def _domain(self, domain: str) -> str:
        view = self.model_opts.view
        return f"{domain}_{view}" if view else domain

    def directions(self):
        a, b = self._domain("A"), self._domain("B")
        return {"a2b": Direction("G_A", source=a, target=b, paired=False),
                "b2a": Direction("G_B", source=b, target=a, paired=False)}

    def _generator(self):
        m = self.model_opts
        if m.generator == "unet":
            G = UNetGenerator(3, 3, m.ngf, m.num_downs, self.cfg.data.crop_size, m.norm, m.dropout)
            init_weights(G, 0.02)
            return G
        return ResNetGenerator(3, 3, m.ngf, m.n_blocks, m.norm, m.dropout, m.n_downs)

    def build_nets(self):
        m = self.model_opts
        nets = {"G_A": self._generator(), "G_B": self._generator(),
                "D_A": PatchDiscriminator(3, m.ndf, m.d_layers, m.norm), "D_B": PatchDiscriminator(3, m.ndf, m.d_layers, m.norm)}
        for k in ("D_A", "D_B"):
            init_weights(nets[k], 0.02)
        self.adversarial = AdversarialLoss(self.loss_opts.gan_mode)
        return nets

    def build_optimizers(self):
        # As canonical: one Adam over both generators, one over both discriminators.
        o, n = self.cfg.optim, self.nets
        return {"G": self.adam([*n["G_A"].parameters(), *n["G_B"].parameters()], o.lr_g),
                "D": self.adam([*n["D_A"].parameters(), *n["D_B"].parameters()], o.lr_d)}

    def train_step(self, batch):
        w, nets = self.loss_opts, self.nets
        G_A, G_B, D_A, D_B = (self.train_nets[k] for k in ("G_A", "G_B", "D_A", "D_B"))
        real_a, real_b = batch[self._domain("A")], batch[self._domain("B")]
        lambda_a = w.cycle if w.cycle_a is None else w.cycle_a
        lambda_b = w.cycle if w.cycle_b is None else w.cycle_b
        zero = real_a.new_zeros((), dtype=torch.float32)

        # G: both discriminators frozen (and called unwrapped: they have no gradients to synchronise).
        set_requires_grad(nets["D_A"], False)
        set_requires_grad(nets["D_B"], False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self.autocast():
            fake_b, fake_a = G_A(real_a), G_B(real_b)
            rec_a, rec_b = G_B(fake_b), G_A(fake_a)
            adv_a = self.adversarial.generator(nets["D_A"](fake_b))
            adv_b = self.adversarial.generator(nets["D_B"](fake_a))
            idt_a = idt_b = None
            if w.identity:
                idt_b, idt_a = G_A(real_b), G_B(real_a)
        cycle_a = F.l1_loss(rec_a.float(), real_a.float())
        cycle_b = F.l1_loss(rec_b.float(), real_b.float())
        identity_a = F.l1_loss(idt_a.float(), real_a.float()) if idt_a is not None else zero
        identity_b = F.l1_loss(idt_b.float(), real_b.float()) if idt_b is not None else zero
        loss_g = (w.adversarial * (adv_a + adv_b) + lambda_a * cycle_a + lambda_b * cycle_b
                  + w.identity * (identity_a + identity_b))
        loss_g.backward()
        self.optimizers["G"].step()

        # D: real images vs pooled generated ones (detached by the pool).
        set_requires_grad(nets["D_A"], True)
        set_requires_grad(nets["D_B"], True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        pooled_b, pooled_a = self.pools["D_A"].query(fake_b), self.pools["D_B"].query(fake_a)
        with self.autocast():
            loss_d_a = w.d_scale * self.adversarial.discriminator(D_A(real_b), D_A(pooled_b))
            loss_d_b = w.d_scale * self.adversarial.discriminator(D_B(real_a), D_B(pooled_a))
        (loss_d_a + loss_d_b).backward()
        self.optimizers["D"].step()
        return {"loss_G": loss_g.detach(), "loss_D_A": loss_d_a.detach(), "loss_D_B": loss_d_b.detach(),
                "G_adv_A": adv_a.detach(), "G_adv_B": adv_b.detach(), "G_cycle_A": cycle_a.detach(),
                "G_cycle_B": cycle_b.detach(), "G_idt_A": identity_a.detach(), "G_idt_B": identity_b.detach()}

    def rank_state(self):
        return {"pools": {k: p.state_dict() for k, p in self.pools.items()}}

    def load_rank_state(self, state):
        for k, p in (state.get("pools") or {}).items():
            self.pools[k].load_state_dict(p)

    def generator_spec(self, direction=""):
        m, d = self.model_opts, self.directions()[direction]
        G = self.nets[d.net]
        if m.generator == "unet":
            net = {"class": "UNetGenerator", "args": {"in_channels": 3, "out_channels": 3, "ngf": m.ngf,
                                                      "num_downs": G.num_downs, "norm": m.norm, "dropout": m.dropout}}
        else:
            net = {"class": "ResNetGenerator", "args": {"in_channels": 3, "out_channels": 3, "ngf": m.ngf,
                                                        "n_blocks": m.n_blocks, "norm": m.norm, "dropout": m.dropout,
                                                        "n_downs": m.n_downs}}
        spec = {**net, **self.image_to_image_spec(direction, G.size_multiple)}
        if m.view:  # serving prepares an upload as training prepared this domain
            spec["input"]["preprocess"] = {"view": m.view, **({"lineart_target": m.serve_lineart_target}
                                                              if m.view == "lineart" else {})}
        return spec

    def samples(self, batch):
        """Per example: a | G_A(a) | G_B(G_A(a)), then b | G_B(b) | G_A(G_B(b))."""
        rows = []
        for source, there, back in ((self._domain("A"), "G_A", "G_B"), (self._domain("B"), "G_B", "G_A")):
            x = batch[source]
            fake = self.run_generator(there, x)
            rec = self.run_generator(back, fake)
            rows += [[transforms.to_uint8(t) for t in (x[i], fake[i], rec[i])] for i in range(len(x))]
        return rows

    def validation_extras(self, inputs, fakes):
        """Cycle reconstruction error, |G_B(G_A(a)) - a| and |G_A(G_B(b)) - b| in [-1, 1]: a measure of
        learning that needs no Inception network and no paired targets."""
        out = {}
        for key, back, domain in (("a2b", "G_B", "a"), ("b2a", "G_A", "b")):
            rec = self.run_generator(back, fakes[key])
            out[f"val_cycle_l1_{domain}"] = (rec - inputs[key]).abs().mean().item()
        out["val_cycle_l1"] = (out["val_cycle_l1_a"] + out["val_cycle_l1_b"]) / 2
        return out

    def extra_metric_names(self):
        return ["val_cycle_l1_a", "val_cycle_l1_b", "val_cycle_l1"]
