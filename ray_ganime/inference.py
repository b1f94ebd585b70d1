"""A model package answering requests: uint8 RGB images in, uint8 RGB images out.

No Ray and no HTTP here: the Serve deployment (``ray_ganime.serve``) and the latency benchmark's in-process
baseline run exactly this code, so the benchmark measures what Serve adds and nothing else.

* image-to-image packages (Pix2Pix, CycleGAN, AnimeGAN, ...): ``translate`` takes images of any size and
  aspect ratio; the package's generator pads to its size multiple and crops back, so each output has its
  input's size. Images of one size run as one batch. A package trained on a derived view of its images
  (``input.preprocess``, e.g. CycleGANime's normalised line art) gets each upload prepared the same way first.
* noise packages (DCGAN, StyleGAN): ``sample`` draws ``n`` images from a seed (the same seed gives the same
  images) with optional truncation, as one grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ray_ganime import export, preview, storage, transforms

__all__ = ["Generator", "check_servable", "pick_device", "pick_precision", "scan_servable"]

GRID_PAD = 2  # px of white between the images of a noise grid


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("serve.device is cuda but this process sees no GPU (give the replica num_gpus)")
    return torch.device(device)


def _cpu_has_amx() -> bool:
    # torch has no public probe for AMX; its private one may move, and then we fall back to float32.
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe and probe() and torch.backends.mkldnn.is_available())
    except Exception:  # pragma: no cover - a torch without the probe's kernels
        return False


def pick_precision(precision: str, device: torch.device) -> torch.dtype:
    """``float32``, ``bfloat16``, or ``auto``: bfloat16 where bf16 matrix units make it fast (CUDA with bf16,
    CPUs with AMX), else float32 (bf16 without such units is slower than float32)."""
    if precision == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_amx()
        return torch.bfloat16 if fast else torch.float32
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision is auto, float32 or bfloat16, not {precision!r}")
    return getattr(torch, precision)


def check_servable(meta: dict) -> None:
    """PackageError unless this code can serve the package whose model.json is ``meta``: RGB in [-1, 1] out
    (and in, for image-to-image models), a kind it knows."""
    if meta.get("kind") not in (export.IMAGE_TO_IMAGE, export.NOISE):
        raise export.PackageError(f"serving runs image-to-image and noise models, not {meta.get('kind')!r} ones")
    for side in ("input", "output"):
        spec = meta.get(side) or {}
        if side == "output" or meta["kind"] == export.IMAGE_TO_IMAGE:
            if spec.get("channels") != 3 or list(spec.get("value_range", ())) != [-1.0, 1.0]:
                raise export.PackageError(f"serving needs RGB in [-1, 1]; the {side} is {spec.get('channels')} "
                                          f"channels in {spec.get('value_range')}")


def scan_servable(store_uri: str, options: storage.StoreOptions | None = None,
                  max_parameters: int | None = None) -> export.Listing:
    """``export.scan_packages``, with the packages that fail ``check_servable`` moved to ``broken``."""
    listing = export.scan_packages(store_uri, options, max_parameters)
    packages, broken = [], list(listing.broken)
    for meta in listing.packages:
        try:
            check_servable(meta)
            packages.append(meta)
        except export.PackageError as e:
            broken.append({"name": meta["uri"].rstrip("/").rsplit("/", 1)[-1], "uri": meta["uri"], "reason": str(e)})
    return export.Listing(packages, sorted(broken, key=lambda b: b["name"]))


# Generators have a smallest input they can run: a ResNet's reflect paddings at its bottleneck need 8 px, and
# AnimeGAN's and CartoonGAN's convolutions similar. Smaller uploads (a 4 x 4 icon) are padded up to this.
MIN_SIDE = 32


def _pad_up(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` (H, W, C) with its last row / column repeated until both sides are at least ``side``."""
    height, width = image.shape[:2]
    if height >= side and width >= side:
        return image
    return np.pad(image, ((0, max(side - height, 0)), (0, max(side - width, 0)), (0, 0)), mode="edge")


class Generator:
    """A loaded model package. ``meta`` is its model.json (plus ``uri``). ``precision``: see the module's doc."""

    def __init__(self, model: torch.nn.Module, meta: dict, device: torch.device, precision: str = "auto") -> None:
        check_servable(meta)
        self.model, self.meta, self.device = model, meta, device
        self.dtype = pick_precision(precision, device)
        self.preprocess = (meta.get("input") or {}).get("preprocess") or None
        self.model.to(memory_format=torch.channels_last)  # changes only 4-D (convolution) weights

    @classmethod
    def load(cls, uri: str, device: str = "auto", options: storage.StoreOptions | None = None,
             precision: str = "auto", max_parameters: int | None = None) -> "Generator":
        device = pick_device(device)
        model, meta = export.load_package(uri, device, options, max_parameters)
        return cls(model, meta, device, precision)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def precision(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def _run(self, x: torch.Tensor) -> np.ndarray:
        """Forward (autocast to bfloat16 when that is the precision), uint8 NHWC out."""
        with torch.inference_mode(), torch.autocast(self.device.type, self.dtype,
                                                    enabled=self.dtype != torch.float32):
            return transforms.to_uint8(self.model(x.to(self.device)))  # on the device: uint8 comes back

    def _to_input(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 channels-last in [-1, 1], converted on the device (uint8 crosses the
        bus): ``transforms.to_float``, bitwise ``transforms.to_tensor``'s values on any device."""
        pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return transforms.to_float(pixels, channels_last_memory=True)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """An upload as the generator's training data was prepared (``input.preprocess``), else as it is."""
        if not self.preprocess:
            return image
        options = {k: v for k, v in self.preprocess.items() if k == "lineart_target"}
        return transforms.view(image, self.preprocess["view"], **options)

    def translate(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Each uint8 (H, W, 3) image through the generator (after ``prepare``), output (H, W, 3); one forward
        per size. Sides under ``MIN_SIDE`` are padded up (edge pixels repeated) and the output cropped back."""
        if self.kind != export.IMAGE_TO_IMAGE:
            raise ValueError(f"{self.name} is a {self.kind} model: it takes a seed, not an image")
        sizes = [image.shape[:2] for image in images]
        images = [_pad_up(self.prepare(image), MIN_SIDE) for image in images]
        outputs: list[np.ndarray | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        for indices in by_shape.values():
            batch = self._to_input(np.stack([images[i] for i in indices]))
            for i, out in zip(indices, self._run(batch)):
                outputs[i] = out[:sizes[i][0], :sizes[i][1]]
        return outputs

    def latents(self, seed: int, n: int, truncation: float | None = None) -> torch.Tensor:
        """(n, latent_dim) standard normal latents from ``seed``; with ``truncation`` t every component is
        drawn from the normal truncated to [-t, t] (BigGAN's truncation trick: less variety, fewer failures).
        Latent i depends only on (seed, i), so a grid of n starts with the grid of n - 1."""
        dim = self.meta["input"]["latent_dim"]
        rows = []
        for i in range(n):
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            if truncation is None:
                rows.append(torch.randn(dim, generator=g))
            else:
                rows.append(torch.nn.init.trunc_normal_(torch.empty(dim), 0.0, 1.0, -truncation, truncation,
                                                        generator=g))
        return torch.stack(rows)

    def sample(self, seed: int, n: int = 1, truncation: float | None = None) -> np.ndarray:
        """``n`` images of a noise model as one uint8 grid (rows of ceil(sqrt(n)), native size each)."""
        if self.kind != export.NOISE:
            raise ValueError(f"{self.name} is an {self.kind} model: it takes an image, not a seed")
        tiles = list(self._run(self.latents(seed, n, truncation)))
        per_row = math.ceil(math.sqrt(n))
        rows = [tiles[i:i + per_row] for i in range(0, n, per_row)]
        return preview.grid(rows, size=self.meta["native_size"], pad=GRID_PAD)
