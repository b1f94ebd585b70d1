"""Model packages for the serving tests: tiny, seeded, real networks.

``make_packages(store)`` writes three packages into ``store`` and returns their names:
    image_a, image_b   Pix2Pix U-Nets (ngf 8, 32 px native, size multiple 32) with different seeded weights
    noise              a DCGAN generator (latent 16, ngf 8, 32 px)
Weights are seeded random init (no training): serving must reproduce them exactly, whatever they compute.
"""

from __future__ import annotations

import numpy as np
import torch

from ray_ganime import export

IMAGE = {"layout": "NCHW", "dtype": "float32", "value_range": [-1.0, 1.0]}
NAMES = {"image_a": "sketch2color-a", "image_b": "sketch2color-b", "noise": "faces-dcgan"}


def unet_spec(ngf: int = 8, num_downs: int = 5) -> dict:
    return {"class": "UNetGenerator",
            "args": {"in_channels": 3, "out_channels": 3, "ngf": ngf, "num_downs": num_downs, "norm": "batch",
                     "dropout": 0.5},
            "kind": export.IMAGE_TO_IMAGE, "input": {"channels": 3, "column": "sketch", **IMAGE},
            "output": {"channels": 3, "column": "color", **IMAGE},
            "native_size": 2 ** num_downs, "size_multiple": 2 ** num_downs}


def dcgan_spec(latent_dim: int = 16, ngf: int = 8, size: int = 32) -> dict:
    return {"class": "DCGANGenerator", "args": {"latent_dim": latent_dim, "ngf": ngf, "out_channels": 3, "size": size},
            "kind": export.NOISE, "input": {"latent_dim": latent_dim, "distribution": "normal"},
            "output": {"channels": 3, **IMAGE}, "native_size": size, "size_multiple": size}


def seeded_net(spec: dict, seed: int) -> torch.nn.Module:
    from ray_ganime.nets import build_generator, init_weights

    torch.manual_seed(seed)
    # A wider init than training's N(0, 0.02): outputs that vary with the input and between seeds; any wider
    # and tanh saturates, so the outputs become near-binary and a rounding anywhere flips a pixel 0 <-> 255.
    net = init_weights(build_generator(spec["class"], spec["args"]), gain=0.1).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode differs from train mode
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def make_packages(store: str) -> dict[str, str]:
    for key, spec, seed, recipe in (("image_a", unet_spec(), 1, "pix2pix"), ("image_b", unet_spec(), 2, "pix2pix"),
                                    ("noise", dcgan_spec(), 3, "dcgan")):
        export.write_package(seeded_net(spec, seed), spec, NAMES[key], store, recipe=recipe,
                             metrics={"validation": {"val_ssim": 0.5 + seed / 100}}, overwrite=True)
    return dict(NAMES)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Seeded uniform-noise uint8 RGB (height, width, 3): every pixel matters to the generator's output."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
