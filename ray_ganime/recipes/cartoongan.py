"""CartoonGAN (Chen et al. 2018): photo -> cartoon from unpaired photos (A) and cartoon frames (B).

G: flat conv, 2 stride-2 downs, 8 residual blocks, 2 ups; D: 7 convs with 2 downs, a patch of logits.
A frozen VGG19 (conv4_4) gives the content loss that keeps the photo's content.

1. Init phase (``optim.init_epochs``): G alone, ``content·|VGG(G(p)) - VGG(p)|``, with an Adam of its own.
2. Then per step, D first (as the paper's code): real cartoons real; G(p) and *edge-smoothed* cartoons
   fake (the edge-promoting loss: clear edges are what make a cartoon); then G, D frozen:
   ``adversarial·GAN(D(G(p))) + content·|VGG(G(p)) - VGG(p)|``.

The photo -> anime recipes of AnimeGAN (recipes/animegan.py) extend this one.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ray_ganime import losses, transforms
from ray_ganime.losses import AdversarialLoss
from ray_ganime.nets import CartoonGANDiscriminator, CartoonGANGenerator, init_weights
from ray_ganime.nets.vgg import load_vgg19
from ray_ganime.recipes.base import Direction, Options, Recipe, register, set_requires_grad


class CartoonGANModel(Options):
    ngf: int = Field(64, ge=1)
    n_blocks: int = Field(8, ge=0)
    ndf: int = Field(32, ge=1)
    norm: Literal["instance", "batch", "none"] = "instance"


class PerceptualLoss(Options):
    """What the VGG19 content loss of the photo -> cartoon recipes takes."""

    # VGG19 IMAGENET1K_V1 weights: a path, an s3:// URI, "hub" or "random"; None: $GANIME_VGG19_WEIGHTS, then the
    # torch hub cache, else a seeded random init (every result then says its perceptual losses were random).
    vgg_weights: str | None = None
    vgg_layer: str = "conv4_4"
    content: float = Field(10.0, ge=0)


class CartoonGANLoss(PerceptualLoss):
    gan_mode: Literal["vanilla", "lsgan", "hinge"] = "vanilla"
    adversarial: float = Field(1.0, ge=0)
    d_edge: float = Field(1.0, ge=0)  # weight of D's "edge-smoothed cartoon is fake" term


@register
class CartoonGAN(Recipe):
    name = "cartoongan"
    task = "unpaired"
    streams = {"A": "A", "B": "B"}
    ModelOptions = CartoonGANModel
    LossOptions = CartoonGANLoss
    init_phase = True
    # Batch entries D sees besides the cartoons themselves (views of domain B: data.views {B: [...]}).
    cartoon_views: tuple[str, ...] = ("B_smooth",)

    def display_name(self):
        return "CartoonGAN"

    def directions(self):
        return {"": Direction("G", source="A", target="B", paired=False)}

    def batch_names(self):
        return ["A", "B", *self.cartoon_views]

    def build_nets(self):
        m = self.model_opts
        nets = {"G": CartoonGANGenerator(m.ngf, m.n_blocks, m.norm), "D": CartoonGANDiscriminator(m.ndf, m.norm)}
        for net in nets.values():
            init_weights(net, 0.02)
        self.adversarial = AdversarialLoss(self.loss_opts.gan_mode)
        return nets

    def build_frozen(self):
        vgg, self.pretrained["vgg"] = load_vgg19([self.loss_opts.vgg_layer], self.loss_opts.vgg_weights)
        return {"vgg": vgg}

    def build_optimizers(self):
        o, G = self.cfg.optim, self.nets["G"]
        optimizers = {"G": self.adam(G.parameters(), o.lr_g), "D": self.adam(self.nets["D"].parameters(), o.lr_d)}
        if o.init_epochs:
            optimizers["G_init"] = self.adam(G.parameters(), o.lr_init)
        return optimizers

    # ---- the steps
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """VGG19 features at ``vgg_layer`` (under the step's autocast, so bf16 on CUDA)."""
        return self.frozen["vgg"](images)[self.loss_opts.vgg_layer]

    def content(self, fake: torch.Tensor, photo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(content loss of ``fake`` against ``photo``, the photo's features)."""
        with torch.no_grad():
            target = self.features(photo)
        return losses.content_loss(self.features(fake), target), target

    def train_step(self, batch):
        if self.in_init_phase:
            return self.init_step(batch)
        photo = batch["A"]
        with self.autocast():
            fake = self.train_nets["G"](photo)
        loss_d, d_terms = self.discriminator_step(batch, fake.detach())
        loss_g, g_terms = self.generator_step(batch, photo, fake)
        return {"loss_G": loss_g.detach(), "loss_D": loss_d.detach(), **{k: v.detach() for k, v in
                                                                        {**d_terms, **g_terms}.items()}}

    def init_step(self, batch):
        """Content only, G's own optimiser: G learns to reconstruct the photo's content before any GAN game."""
        photo, optimizer = batch["A"], self.optimizers["G_init"]
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            content, _ = self.content(self.train_nets["G"](photo), photo)
        loss = self.loss_opts.content * content
        loss.backward()
        optimizer.step()
        return {"loss_G_init": loss.detach(), "G_content": content.detach()}

    def discriminator_logits(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """D on several batches as one forward (one DDP synchronisation, one spectral-norm power iteration)."""
        return self.train_nets["D"](torch.cat(images)).chunk(len(images))

    def discriminator_step(self, batch, fake):
        w, adv = self.loss_opts, self.adversarial
        set_requires_grad(self.nets["D"], True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        with self.autocast():
            real, generated, edge = self.discriminator_logits([batch["B"], fake, batch["B_smooth"]])
        terms = {"D_real": adv.real(real), "D_fake": adv.fake(generated), "D_edge": adv.fake(edge)}
        loss = terms["D_real"] + terms["D_fake"] + w.d_edge * terms["D_edge"]
        loss.backward()
        self.optimizers["D"].step()
        return loss, terms

    def generator_step(self, batch, photo, fake):
        w = self.loss_opts
        set_requires_grad(self.nets["D"], False)  # and D called unwrapped: it has no gradients to synchronise
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self.autocast():
            adversarial = self.adversarial.generator(self.nets["D"](fake))
            content, _ = self.content(fake, photo)
        loss = w.adversarial * adversarial + w.content * content
        loss.backward()
        self.optimizers["G"].step()
        return loss, {"G_adv": adversarial, "G_content": content}

    # ---- serving, samples, validation
    def generator_spec(self, direction=""):
        m, G = self.model_opts, self.nets["G"]
        return {"class": "CartoonGANGenerator", "args": {"ngf": m.ngf, "n_blocks": m.n_blocks, "norm": m.norm},
                **self.image_to_image_spec(direction, G.size_multiple)}

    def samples(self, batch):
        """Per example: photo | G(photo)."""
        fake = self.run_generator("G", batch["A"])
        return [[transforms.to_uint8(t) for t in (batch["A"][i], fake[i])] for i in range(len(fake))]

    @torch.no_grad()
    def validation_extras(self, inputs, fakes):
        """How much of each held-out photo its translation keeps: VGG content error (what the init phase
        minimises; random VGG features when no weights are found) and AnimeGAN's YUV colour error.
        Measures of learning that need neither Inception nor paired targets."""
        photo, fake = inputs[""], fakes[""]
        if "vgg" not in self.frozen:
            return {}
        with self.autocast():
            content = losses.content_loss(self.features(fake), self.features(photo))
        return {"val_content": content.item(), "val_color": losses.color_loss(fake, photo).item()}

    def extra_metric_names(self):
        return ["val_content", "val_color"]
