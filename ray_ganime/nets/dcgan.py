"""The DCGAN generator (Radford et al. 2016), as in the PyTorch DCGAN example.

A latent vector z (N, latent_dim) is projected to a 4x4 map by a transposed convolution, then each stage
doubles the resolution and halves the width, down to RGB at ``size`` px:

* project:  ConvT4x4/1 (z -> 4x4, ngf * 2**(L-1)) -> BN -> ReLU
* up k:     ConvT4x4/2 -> BN -> ReLU                 (L - 1 of them)
* to_rgb:   ConvT4x4/2 -> Tanh                       (no norm on the output, as the paper says)

with L = log2(size) - 2 stages. Convolutions have no bias (batch norm follows each one but the last):
3,576,704 parameters at 64 px with latent_dim 100 and ngf 64, as the reference.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from .layers import init_weights

__all__ = ["DCGANGenerator"]


def _up(in_ch: int, out_ch: int, stride: int, padding: int) -> list[tuple[str, nn.Module]]:
    return [("conv", nn.ConvTranspose2d(in_ch, out_ch, 4, stride, padding, bias=False)),
            ("norm", nn.BatchNorm2d(out_ch)), ("act", nn.ReLU(True))]


class DCGANGenerator(nn.Module):
    """z (N, latent_dim) or (N, latent_dim, 1, 1) -> images (N, out_channels, size, size) in [-1, 1]."""

    def __init__(self, latent_dim: int = 100, ngf: int = 64, out_channels: int = 3, size: int = 64) -> None:
        super().__init__()
        stages = int(math.log2(size)) - 2
        if size < 8 or 2 ** (stages + 2) != size:
            raise ValueError(f"DCGAN size must be a power of two >= 8, got {size}")
        self.latent_dim, self.out_channels, self.size = latent_dim, out_channels, size
        widths = [ngf * 2 ** (stages - 1 - k) for k in range(stages)]  # e.g. 512, 256, 128, 64 at 64 px
        blocks = [("project", nn.Sequential(OrderedDict(_up(latent_dim, widths[0], 1, 0))))]
        blocks += [(f"up{k}", nn.Sequential(OrderedDict(_up(widths[k - 1], widths[k], 2, 1))))
                   for k in range(1, stages)]
        blocks.append(("to_rgb", nn.Sequential(OrderedDict([
            ("conv", nn.ConvTranspose2d(widths[-1], out_channels, 4, 2, 1, bias=False)), ("act", nn.Tanh())]))))
        self.blocks = nn.Sequential(OrderedDict(blocks))
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(z.reshape(z.shape[0], self.latent_dim, 1, 1))
