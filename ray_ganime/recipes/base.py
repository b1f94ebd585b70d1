"""What every GAN recipe is, and the registry.

A recipe owns what differs between GAN families: the networks and their optimisers and LR schedules, the
data streams it trains on, one ``train_step``, the generators a user serves (its *directions*) and what
they are scored against. It knows nothing about Ray: the training engine (ray_ganime.train) hands it a
device and a way to wrap networks for data parallelism, feeds it batches, tells it the epoch and step, and
saves what ``state_dict`` and ``rank_state`` return.

Networks come in three kinds:

* ``nets`` with an optimiser (G, D): trained, wrapped for data parallelism, checkpointed;
* ``nets`` without one (an EMA copy of G): checkpointed, never wrapped;
* ``frozen`` (a pretrained VGG19 for a perceptual loss): never wrapped, never checkpointed, always eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    # No import of the package here: Python imports ray_ganime.recipes, which registers every recipe, before
    # this module, and importing it back would close an import circle.
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


class Options(BaseModel):
    """A recipe's own model / loss options: unknown keys are errors, as in the rest of the config."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Direction:
    """A generator a user serves, and what it maps from and to. ``source`` and ``target`` are batch names: a
    paired data set's column (``sketch``), or an unpaired data set's domain (``A``), either with a view
    suffix (``A_lineart``). ``paired``: source and target rows are pairs, so SSIM and L1 are defined."""

    net: str
    source: str
    target: str
    paired: bool


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def linear_decay(epochs: int, decay_epochs: int) -> Callable[[int], float]:
    """pix2pix's LR rule: 1.0 until ``epochs - decay_epochs``, then linearly towards 0. A run shorter than its
    decay (``--set train.epochs=6`` on a config that decays over 100) decays over all its epochs from the full LR,
    instead of starting deep inside the decay at a few percent of it."""
    decay_epochs = min(decay_epochs, epochs)
    start = epochs - decay_epochs
    return lambda epoch: 1.0 - max(0, epoch + 1 - start) / float(decay_epochs + 1)


# precision "auto": bf16 autocast from this many images per device step on. A GAN step at batch 1 is bound by
# kernel launches, not arithmetic, and autocast's casts add work there (bf16 measured slower than float32 at
# batch 1 on an H200, faster at 32); bench/gpu_step.py measures both sides of this threshold.
AUTOCAST_MIN_BATCH = 8


def autocast_dtype(device: torch.device | str, precision: str, batch_size: int,
                   bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype a training step runs in, or None for plain float32 (``train.precision``):

    * ``"float32"``: None everywhere;
    * ``"bfloat16"``: bf16 autocast on any device (asked for explicitly, so on CPU too);
    * ``"auto"``: bf16 on CUDA at ``batch_size >= AUTOCAST_MIN_BATCH`` where the GPU has bf16, else float32
      (CPU always float32: bf16 is slower there, and CPU results stay those of earlier versions).

    ``bf16_supported``: whether the GPU computes in bf16 (None: ask torch).
    """
    device = torch.device(device)
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision is auto, float32 or bfloat16, not {precision!r}")
    if device.type != "cuda" or batch_size < AUTOCAST_MIN_BATCH:
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else None


def configure_device(device: torch.device) -> None:
    """Process-wide settings for training on ``device``: cuDNN picks the fastest convolution algorithms for the
    (fixed) batch shape on CUDA, as canonical pix2pix does. Nothing changes on CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def step_decay(milestones: list[int], gamma: float) -> Callable[[int], float]:
    """× ``gamma`` after each milestone epoch (3e-4 -> 3e-5 after epoch 120: ``[120], 0.1``)."""
    return lambda epoch: gamma ** sum(epoch >= m for m in milestones)


def image_side(column: str, channels: int = 3) -> dict[str, Any]:
    """A package's input or output: NCHW float32 images in [-1, 1] (transforms.to_tensor's) of a batch column."""
    return {"column": column, "channels": channels, "layout": "NCHW", "dtype": "float32", "value_range": [-1.0, 1.0]}


class Recipe:
    name: ClassVar[str]
    task: ClassVar[str]  # the data set kind it trains on: "paired", "unpaired" or "folder"
    # The Ray Data streams it trains on, each its own named dataset: stream -> domain (None: the whole split).
    # Several streams are zipped; an epoch is the longest one's pass.
    streams: ClassVar[dict[str, str | None]] = {"train": None}
    ModelOptions: ClassVar[type[Options]] = Options
    LossOptions: ClassVar[type[Options]] = Options
    # Whether train_step knows an init phase (optim.init_epochs of content-only generator training).
    init_phase: ClassVar[bool] = False

    def __init__(self, cfg: Config, device: torch.device | str = "cpu", rank: int = 0, frozen: bool = True):
        """``frozen=False``: without the pretrained networks of the losses (exporting or serving a checkpoint's
        generators needs none of them; training does)."""
        self.cfg = cfg
        self.device = torch.device(device)
        self.rank = rank
        configure_device(self.device)
        self.amp_dtype = autocast_dtype(self.device, cfg.train.precision, cfg.data.batch_size)
        self.epoch = 0  # set by the engine before each epoch / step
        self.global_step = 0
        self.model_opts, self.loss_opts = self.options(cfg)
        self.nets: dict[str, nn.Module] = {k: v.to(self.device) for k, v in self.build_nets().items()}
        # Which weights each frozen network loaded ({"name", "sha256", "random_init", "source"}), for checkpoints,
        # packages and reports: build_frozen fills it.
        self.pretrained: dict[str, dict] = {}
        self.frozen: dict[str, nn.Module] = {k: v.to(self.device).eval().requires_grad_(False)
                                             for k, v in (self.build_frozen() if frozen else {}).items()}
        if self.device.type == "cuda" and cfg.train.channels_last:
            for net in (*self.nets.values(), *self.frozen.values()):
                net.to(memory_format=torch.channels_last)
        # What train_step calls: the nets themselves, or their data-parallel wrappers after wrap().
        self.train_nets: dict[str, nn.Module] = dict(self.nets)
        self.optimizers = self.build_optimizers()
        self.schedulers = self.build_schedulers()

    @classmethod
    def unbuilt(cls, cfg: Config) -> "Recipe":
        """The recipe's options for ``cfg`` without any network built (directions, metric names, sizes)."""
        recipe = cls.__new__(cls)
        recipe.cfg = cfg
        recipe.model_opts, recipe.loss_opts = cls.options(cfg)
        return recipe

    @classmethod
    def options(cls, cfg: Config) -> tuple[Options, Options]:
        """The recipe's model and loss options of ``cfg``, checked (with what it asks of the shared sections)."""
        if cfg.optim.init_epochs and not cls.init_phase:
            raise ConfigError(f"invalid config: optim.init_epochs: recipe {cls.name} has no init phase")
        return cls.validate(cls.ModelOptions, cfg.model, "model"), cls.validate(cls.LossOptions, cfg.loss, "loss")

    @classmethod
    def network_sizes(cls, cfg: Config) -> dict[str, int]:
        """Trainable parameters per network for this config, built on the meta device (no memory)."""
        from ray_ganime.nets import count_parameters

        with torch.device("meta"):
            return {k: count_parameters(v) for k, v in cls.unbuilt(cfg).build_nets().items()}

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

    def build_frozen(self) -> dict[str, nn.Module]:
        """Pretrained networks the losses use (never trained, wrapped or checkpointed); records which weights
        each loaded in ``self.pretrained``."""
        return {}

    @property
    def in_init_phase(self) -> bool:
        """Whether the current epoch is one of the init phase's (``optim.init_epochs``)."""
        return self.epoch < self.cfg.optim.init_epochs

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def adam(self, params, lr: float) -> torch.optim.Adam:
        """Adam with ``optim.betas``: fused (one kernel per step for all tensors) on CUDA, multi-tensor
        (foreach) elsewhere, which on CPU gives bitwise the results of the default per-tensor loop."""
        return torch.optim.Adam(params, lr=lr, betas=self.cfg.optim.betas, **self._adam_impl())

    def _adam_impl(self) -> dict[str, bool]:
        fused = self.device.type == "cuda"
        return {"fused": fused, "foreach": not fused}

    def lr_rule(self) -> Callable[[int], float]:
        """Epoch -> the factor on each optimiser's LR (``optim.schedule``: linear decay or step decay)."""
        o = self.cfg.optim
        return (step_decay(o.step_epochs, o.step_gamma) if o.schedule == "step"
                else linear_decay(self.cfg.train.epochs, o.decay_epochs))

    def build_schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        """One per optimiser, stepped after every epoch: ``lr_rule``."""
        rule = self.lr_rule()
        return {k: torch.optim.lr_scheduler.LambdaLR(opt, rule) for k, opt in self.optimizers.items()}

    def directions(self) -> dict[str, Direction]:
        """The generators a user serves, by direction name ("" when there is one: no suffix on metric and
        package names; else e.g. "a2b" / "b2a": ``val_fid_a2b``, package ``NAME-a2b``)."""
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch (``self.epoch`` and ``self.global_step`` say where training is);
        returns the loss terms (detached scalars)."""
        raise NotImplementedError

    def generator_spec(self, direction: str = "") -> dict[str, Any]:
        """Everything a model package needs to rebuild ``generator(direction)`` without this recipe: ``class``
        (a key of ``nets.GENERATORS``) and its JSON ``args``; ``kind``; ``input`` / ``output`` (``channels``,
        ``value_range``, batch ``column``); ``native_size`` (what it trained at) and ``size_multiple``
        (what H and W must be divisible by)."""
        raise NotImplementedError(f"recipe {self.name} cannot describe its generator for a model package yet")

    def image_to_image_spec(self, direction: str, size_multiple: int, in_channels: int = 3,
                            out_channels: int = 3) -> dict[str, Any]:
        """``generator_spec`` without the network: an image-to-image generator from the direction's source
        column to its target, trained at ``data.crop_size``."""
        d = self.directions()[direction]
        return {"kind": "image-to-image", "direction": direction, "input": image_side(d.source, in_channels),
                "output": image_side(d.target, out_channels), "native_size": self.cfg.data.crop_size,
                "size_multiple": size_multiple}

    def samples(self, batch: dict[str, torch.Tensor]) -> list[list[np.ndarray]]:
        """Rows of uint8 images for a sample grid, e.g. input | output | target."""
        raise NotImplementedError

    def validation_extras(self, inputs: dict[str, torch.Tensor], fakes: dict[str, torch.Tensor]) -> dict[str, float]:
        """Per-epoch metrics of the recipe's own, from each direction's validation inputs and generated images
        (eval mode, no grad, [-1, 1]), e.g. CycleGAN's cycle reconstruction error. Named ``val_*``."""
        return {}

    def extra_metric_names(self) -> list[str]:
        """The names ``validation_extras`` returns (so a sweep objective can be checked before it starts)."""
        return []

    def rank_state(self) -> dict[str, Any]:
        """State of this rank's own that exact resume needs besides the networks (e.g. image pools: every rank
        pools its own generated images). The engine saves every rank's."""
        return {}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        pass

    def display_name(self) -> str:
        """What reports call the model (e.g. "Pix2Pix + TV")."""
        return self.name

    # ---- shared machinery
    def generator(self, direction: str = "") -> nn.Module:
        """The network a user serves for ``direction`` (unwrapped)."""
        return self.nets[self.directions()[direction].net]

    @torch.no_grad()
    def run_generator(self, net: str, x: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """``self.nets[net]`` in eval mode over ``x`` in batches (samples, validation), as float32."""
        G = self.nets[net]
        was_training = G.training
        G.eval()
        with self.autocast():
            y = torch.cat([G(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
        G.train(was_training)
        return y

    def direction_names(self) -> list[str]:
        """The batch names the directions read (what validation needs)."""
        return list(dict.fromkeys(n for d in self.directions().values() for n in (d.source, d.target)))

    def batch_names(self) -> list[str]:
        """The image entries a training batch carries: the directions' (and e.g. derived views the losses use)."""
        return self.direction_names()

    def example_batch(self, n: int, size: int | None = None, seed: int = 0) -> dict[str, Any]:
        """A random training batch of the shape the engine feeds (benchmarks, the recipe contract test)."""
        size = size or self.cfg.data.crop_size
        g = torch.Generator().manual_seed(seed)
        # In the memory format the engine feeds (channels_last on CUDA), so benchmarks time the same kernels.
        fmt = (torch.channels_last if self.device.type == "cuda" and self.cfg.train.channels_last
               else torch.contiguous_format)
        batch: dict[str, Any] = {k: (torch.rand(n, 3, size, size, generator=g) * 2 - 1)
                                 .to(self.device, memory_format=fmt) for k in self.batch_names()}
        batch["id"] = [str(i) for i in range(n)]
        return batch

    def metric_names(self) -> list[str]:
        """Every per-epoch validation metric this recipe can report (FID ones need eval.val_fid)."""
        names: list[str] = []
        directions = self.directions()
        for key, d in directions.items():
            suffix = f"_{key}" if key else ""
            names += [f"val_ssim{suffix}", f"val_l1{suffix}"] if d.paired else []
            names.append(f"val_fid{suffix}")
        if len(directions) > 1:  # the mean over directions, one objective for a sweep
            names += ["val_fid"] + (["val_ssim", "val_l1"] if all(d.paired for d in directions.values()) else [])
        return names + self.extra_metric_names()

    def autocast(self):
        """Autocast to ``self.amp_dtype`` (see :func:`autocast_dtype`); a no-op in float32."""
        dtype = self.amp_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap each network that has an optimiser on its own (e.g. DDP): G and D are separate reducers, as
        GAN code needs; EMA copies and frozen networks are left alone."""
        optimised = {id(p) for o in self.optimizers.values() for g in o.param_groups for p in g["params"]}
        self.train_nets = {k: wrapper(v) if any(id(p) in optimised for p in v.parameters()) else v
                           for k, v in self.nets.items()}

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

    @staticmethod
    def _keep_optimizer_impl(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
        """``saved`` with this optimiser's implementation flags (fused / foreach / capturable): a checkpoint
        written on CUDA (fused) resumes on CPU and the other way round, each with its device's kernels
        (torch would otherwise take the flags from the checkpoint)."""
        flags = ("fused", "foreach", "capturable")
        groups = [{**g, **{f: ours[f] for f in flags if f in ours}}
                  for g, ours in zip(saved["param_groups"], optimizer.param_groups)]
        return {**saved, "param_groups": groups}

    def load_state_dict(self, state: dict[str, Any], nets_only: bool = False) -> None:
        for k, v in state["nets"].items():
            self.nets[k].load_state_dict(v)
        if not nets_only:
            for k, v in state["optimizers"].items():
                self.optimizers[k].load_state_dict(self._keep_optimizer_impl(self.optimizers[k], v))
            for k, v in state["schedulers"].items():
                self.schedulers[k].load_state_dict(v)
