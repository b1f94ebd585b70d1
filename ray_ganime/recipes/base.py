"""What every GAN recipe is: networks, optimisers, losses and one ``train_step``; and the registry.

A recipe knows nothing about Ray: the training engine (ray_ganime.train) hands it a device and a way to
wrap networks for data parallelism, feeds it batches, and saves what ``state_dict`` returns.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ray_ganime.config import Config, ConfigError

RECIPES: dict[str, type["Recipe"]] = {}


def register(cls: type["Recipe"]) -> type["Recipe"]:
    RECIPES[cls.name] = cls
    return cls


def recipe_class(name: str) -> type["Recipe"]:
    from ray_ganime import recipes  # noqa: F401  (importing the package registers every recipe)

    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


class Options(BaseModel):
    """A recipe's own model / loss options: unknown keys are errors, as in the rest of the config."""

    model_config = ConfigDict(extra="forbid")


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def linear_decay(epochs: int, decay_epochs: int) -> Callable[[int], float]:
    """pix2pix's LR rule: 1.0 until ``epochs - decay_epochs``, then linearly towards 0."""
    start = epochs - decay_epochs
    return lambda epoch: 1.0 - max(0, epoch + 1 - start) / float(decay_epochs + 1)


class Recipe:
    name: ClassVar[str]
    task: ClassVar[str]  # the data set kind it trains on: "paired", "unpaired" or "folder"
    # The batch columns the generator maps from and to (validation and evaluation score G(input) vs target).
    input_column: ClassVar[str]
    target_column: ClassVar[str | None] = None
    ModelOptions: ClassVar[type[Options]] = Options
    LossOptions: ClassVar[type[Options]] = Options

    def __init__(self, cfg: Config, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.model_opts = self.validate(self.ModelOptions, cfg.model, "model")
        self.loss_opts = self.validate(self.LossOptions, cfg.loss, "loss")
        self.nets: dict[str, nn.Module] = {k: v.to(self.device) for k, v in self.build_nets().items()}
        if self.device.type == "cuda" and cfg.train.channels_last:
            for net in self.nets.values():
                net.to(memory_format=torch.channels_last)
        # What train_step calls: the nets themselves, or their data-parallel wrappers after wrap().
        self.train_nets: dict[str, nn.Module] = dict(self.nets)
        self.optimizers = self.build_optimizers()
        decay = linear_decay(cfg.train.epochs, cfg.optim.decay_epochs)
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, decay) for k, o in self.optimizers.items()}

    @classmethod
    def network_sizes(cls, cfg: Config) -> dict[str, int]:
        """Trainable parameters per network for this config, built on the meta device (no memory)."""
        from ray_ganime.nets import count_parameters

        recipe = cls.__new__(cls)
        recipe.cfg = cfg
        recipe.model_opts = cls.validate(cls.ModelOptions, cfg.model, "model")
        recipe.loss_opts = cls.validate(cls.LossOptions, cfg.loss, "loss")
        with torch.device("meta"):
            return {k: count_parameters(v) for k, v in recipe.build_nets().items()}

    @staticmethod
    def validate(schema: type[Options], values: dict, section: str) -> Options:
        try:
            return schema.model_validate(values)
        except ValidationError as e:
            lines = [f"  {section}.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
            raise ConfigError("invalid config:\n" + "\n".join(lines)) from None

    # ---- what each recipe defines
    def build_nets(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch; returns the loss terms (detached scalars)."""
        raise NotImplementedError

    def generator(self) -> nn.Module:
        """The network a user serves (unwrapped)."""
        return self.nets["G"]

    def generator_spec(self) -> dict[str, Any]:
        """Everything a model package needs to rebuild ``generator()`` without this recipe: ``class`` (a key
        of ``nets.GENERATORS``) and its JSON ``args``; ``kind``; ``input`` / ``output`` (``channels``,
        ``value_range``, batch ``column``); ``native_size`` (what it trained at) and ``size_multiple``
        (what H and W must be divisible by)."""
        raise NotImplementedError(f"recipe {self.name} cannot describe its generator for a model package yet")

    def samples(self, batch: dict[str, torch.Tensor]) -> list[list[np.ndarray]]:
        """Rows of uint8 images for a sample grid, e.g. input | output | target."""
        raise NotImplementedError

    # ---- shared machinery
    def autocast(self):
        """bf16 autocast on CUDA when cfg.train.amp (CPU trains in float32: bf16 is slower there)."""
        enabled = self.device.type == "cuda" and self.cfg.train.amp
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap each network on its own (e.g. DDP): G and D are separate reducers, as GAN code needs."""
        self.train_nets = {k: wrapper(v) for k, v in self.nets.items()}

    def end_epoch(self) -> None:
        for s in self.schedulers.values():
            s.step()

    def learning_rates(self) -> dict[str, float]:
        return {f"lr_{k}": o.param_groups[0]["lr"] for k, o in self.optimizers.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
        }

    def load_state_dict(self, state: dict[str, Any], nets_only: bool = False) -> None:
        for k, v in state["nets"].items():
            self.nets[k].load_state_dict(v)
        if not nets_only:
            for k, v in state["optimizers"].items():
                self.optimizers[k].load_state_dict(v)
            for k, v in state["schedulers"].items():
                self.schedulers[k].load_state_dict(v)
