"""The pix2pix PatchGAN discriminator (``NLayerDiscriminator`` of junyanz/pytorch-CycleGAN-and-pix2pix).

With the default ``n_layers=3`` it is the paper's 70x70 PatchGAN, C64-C128-C256-C512 then a 1-channel
convolution, all 4x4 kernels:

* block 0:       Conv4x4/2 -> 64         -> LeakyReLU(0.2)      no norm on the input layer
* block 1, 2:    Conv4x4/2 -> 128, 256   -> norm -> LeakyReLU(0.2)
* block 3:       Conv4x4/1 -> 512        -> norm -> LeakyReLU(0.2)
* logits:        Conv4x4/1 -> 1                                  raw logits, no sigmoid (the loss applies it)

Each output logit judges one 70x70 patch of the input; a 256x256 input gives a 30x30 map, 128x128 a 14x14
map. For pix2pix the input is the condition and the image concatenated on channels (3 + 3 = 6).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from .layers import conv_bias, init_weights, make_norm

__all__ = ["PatchDiscriminator", "receptive_field"]

KERNEL_SIZE = 4
PADDING = 1
# Canonical caps the width at 8 * ndf (512 for ndf=64).
MAX_WIDTH_MULT = 8


class _ConvSpec(NamedTuple):
    in_channels: int
    out_channels: int
    stride: int
    normed: bool


def _conv_plan(in_channels: int, ndf: int, n_layers: int) -> list[_ConvSpec]:
    """Every convolution of the net, input first; both the net and :func:`receptive_field` read it."""
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers}")
    plan = [_ConvSpec(in_channels, ndf, 2, False)]
    width = ndf
    for n in range(1, n_layers):
        plan.append(_ConvSpec(width, ndf * min(2**n, MAX_WIDTH_MULT), 2, True))
        width = plan[-1].out_channels
    # One more widening convolution at stride 1, then the 1-channel logits, also at stride 1.
    plan.append(_ConvSpec(width, ndf * min(2**n_layers, MAX_WIDTH_MULT), 1, True))
    plan.append(_ConvSpec(plan[-1].out_channels, 1, 1, False))
    return plan


def receptive_field(n_layers: int = 3) -> int:
    """Side in pixels of the input patch seen by one output logit: 70 for n_layers=3 (16, 34, 70, 142, ...)."""
    field = 1
    for spec in reversed(_conv_plan(1, 1, n_layers)):
        field = (field - 1) * spec.stride + KERNEL_SIZE
    return field


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``(N, in_channels, H, W)`` -> ``(N, 1, H', W')`` raw logits, one per patch.

    ``norm`` is "batch", "instance" or "none"; weights are initialised as canonical
    ``init_weights('normal', 0.02)``.
    """

    def __init__(self, in_channels: int = 6, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        self.n_layers = n_layers
        self.norm = norm
        bias = conv_bias(norm)
        *hidden, last = _conv_plan(in_channels, ndf, n_layers)

        blocks = OrderedDict()
        for i, spec in enumerate(hidden):
            # Canonical: the input convolution always has a bias (no norm follows), the normed ones follow the norm.
            layers = OrderedDict(conv=nn.Conv2d(spec.in_channels, spec.out_channels, KERNEL_SIZE, spec.stride,
                                                PADDING, bias=bias or not spec.normed))
            if spec.normed:
                layers["norm"] = make_norm(norm, spec.out_channels)
            layers["lrelu"] = nn.LeakyReLU(0.2)
            blocks[f"block{i}"] = nn.Sequential(layers)
        blocks["logits"] = nn.Conv2d(last.in_channels, last.out_channels, KERNEL_SIZE, last.stride, PADDING)
        self.model = nn.Sequential(blocks)
        init_weights(self, 0.02)

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the input patch seen by one output logit (70 for the default net)."""
        return receptive_field(self.n_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}, norm={self.norm!r}, receptive_field={self.receptive_field}"
