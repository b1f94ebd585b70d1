"""The CycleGAN ResNet generator (Zhu et al. 2017; Johnson et al. 2016), as in junyanz/pytorch-CycleGAN-and-pix2pix.

Layer for layer canonical ``ResnetGenerator`` (same convolutions, paddings, biases, norms, activation order,
hence the same parameter counts: 11,378,179 for 9 blocks and 7,837,699 for 6 blocks with instance norm, ngf 64,
RGB -> RGB; 73,782,275 for 15 blocks at ngf 128). The blocks are named after the paper's notation; at ngf 64
with the default two downs they are c7s1-64, d128, d256, R256 x n, u128, u64, c7s1-3:

* ``c7s1``:       ReflectionPad(3) -> Conv7x7/1 -> ngf      -> norm -> ReLU
* ``d1`` .. ``dN``: Conv3x3/2 (zero padding 1), doubling the width    -> norm -> ReLU
* ``r1`` .. ``rN``: x + [ReflectionPad(1) -> Conv3x3 -> norm -> ReLU [-> Dropout] -> ReflectionPad(1) -> Conv3x3
                  -> norm](x), at ngf * 2**n_downs channels
* ``u1`` .. ``uN``: ConvTranspose3x3/2 (padding 1, output padding 1), halving the width -> norm -> ReLU
* ``out``:        ReflectionPad(3) -> Conv7x7/1 -> out_channels (with bias) -> Tanh

``n_downs`` (canonical: 2) also covers the narrow "2 downs + 4 residual blocks + 2 ups" avatar generator
(``n_blocks=4``). Convolutions carry a bias as :func:`layers.conv_bias` says (instance norm: yes, as canonical;
batch norm: no); the output convolution always has one. :meth:`ResNetGenerator.canonical_key_map` names the
canonical state-dict key of each of ours, so canonical weights convert mechanically
(:meth:`ResNetGenerator.load_canonical_state_dict`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from .layers import conv_bias, init_weights, load_mapped_state_dict, make_norm, rename_modules

__all__ = ["ResNetGenerator", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """``x + block(x)``: canonical ``ResnetBlock`` with reflect padding (``dropout`` 0 or None: no dropout layer)."""

    def __init__(self, channels: int, norm: str, bias: bool, dropout: float | None = 0.0) -> None:
        super().__init__()
        layers = OrderedDict(
            pad1=nn.ReflectionPad2d(1), conv1=nn.Conv2d(channels, channels, 3, bias=bias),
            norm1=make_norm(norm, channels), relu=nn.ReLU(inplace=True))
        if dropout:
            layers["dropout"] = nn.Dropout(dropout)
        layers.update(pad2=nn.ReflectionPad2d(1), conv2=nn.Conv2d(channels, channels, 3, bias=bias),
                      norm2=make_norm(norm, channels))
        self.block = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResNetGenerator(nn.Module):
    """CycleGAN ResNet generator: ``(N, in_channels, H, W)`` in [-1, 1] -> ``(N, out_channels, H, W)`` in [-1, 1].

    H and W must be multiples of :attr:`size_multiple` (``2 ** n_downs``) and, with residual blocks, at least
    twice that (the reflect padding at the bottleneck needs 2 pixels); other sizes raise ``ValueError``.
    ``norm`` is "instance" (CycleGAN's), "batch" or "none"; ``dropout`` is the probability of a dropout layer in
    each residual block (canonical ``use_dropout`` is 0.5; 0 or None leaves them out). Weights are initialised
    as canonical ``init_weights('normal', 0.02)``.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", dropout: float | None = 0.0, n_downs: int = 2) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        if n_downs < 0:
            raise ValueError(f"n_downs must be >= 0, got {n_downs}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_blocks = n_blocks
        self.n_downs = n_downs
        self.norm = norm
        self.has_dropout = bool(dropout)

        bias = conv_bias(norm)
        blocks = OrderedDict(c7s1=nn.Sequential(OrderedDict(
            pad=nn.ReflectionPad2d(3), conv=nn.Conv2d(in_channels, ngf, 7, bias=bias),
            norm=make_norm(norm, ngf), relu=nn.ReLU(inplace=True))))
        for k in range(n_downs):
            in_ch, out_ch = ngf * 2**k, ngf * 2 ** (k + 1)
            blocks[f"d{k + 1}"] = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=bias),
                norm=make_norm(norm, out_ch), relu=nn.ReLU(inplace=True)))
        width = ngf * 2**n_downs
        for k in range(n_blocks):
            blocks[f"r{k + 1}"] = ResidualBlock(width, norm, bias, dropout)
        for k in range(n_downs):
            in_ch, out_ch = ngf * 2 ** (n_downs - k), ngf * 2 ** (n_downs - k - 1)
            blocks[f"u{k + 1}"] = nn.Sequential(OrderedDict(
                conv=nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1, bias=bias),
                norm=make_norm(norm, out_ch), relu=nn.ReLU(inplace=True)))
        blocks["out"] = nn.Sequential(OrderedDict(
            pad=nn.ReflectionPad2d(3), conv=nn.Conv2d(ngf, out_channels, 7), tanh=nn.Tanh()))
        self.model = nn.Sequential(blocks)
        init_weights(self, 0.02)

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this (``2 ** n_downs``)."""
        return 2**self.n_downs

    def check_size(self, height: int, width: int) -> None:
        """Raises ``ValueError`` unless ``height`` and ``width`` are multiples of :attr:`size_multiple` that the
        reflect paddings can pad (at least 4 px at full resolution, 2 px at the bottleneck)."""
        m = self.size_multiple
        least = max(4, 2 * m if self.n_blocks else m)
        if height % m or width % m:
            raise ValueError(f"ResNetGenerator with n_downs={self.n_downs} needs H and W divisible by "
                             f"2**{self.n_downs} = {m}, got {height}x{width}")
        if height < least or width < least:
            raise ValueError(f"ResNetGenerator with n_downs={self.n_downs} needs H and W >= {least}, "
                             f"got {height}x{width}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x.shape[-2], x.shape[-1])
        return self.model(x)

    def extra_repr(self) -> str:
        return f"n_downs={self.n_downs}, n_blocks={self.n_blocks}, norm={self.norm!r}"

    # ------------------------------------------------------------------------ canonical weights

    def canonical_key_map(self) -> dict[str, str]:
        """Our state-dict key -> canonical ``ResnetGenerator``'s (``model.<i>...``), for every key we have.

        Canonical is one flat ``nn.Sequential``: pad, conv, norm, ReLU; (conv, norm, ReLU) per down; one
        ``ResnetBlock`` per residual block (its ``conv_block``: pad, conv, norm, ReLU, [Dropout], pad, conv, norm);
        (convT, norm, ReLU) per up; pad, conv, Tanh. Norm keys (batch norm weights and running statistics)
        map like conv keys."""
        prefixes: dict[str, str] = {"model.c7s1.conv": "model.1", "model.c7s1.norm": "model.2"}
        i = 4
        for k in range(self.n_downs):
            prefixes[f"model.d{k + 1}.conv"], prefixes[f"model.d{k + 1}.norm"] = f"model.{i}", f"model.{i + 1}"
            i += 3
        second = 6 if self.has_dropout else 5  # index of the second conv inside canonical's conv_block
        for k in range(self.n_blocks):
            ours, theirs = f"model.r{k + 1}.block", f"model.{i}.conv_block"
            prefixes.update({f"{ours}.conv1": f"{theirs}.1", f"{ours}.norm1": f"{theirs}.2",
                             f"{ours}.conv2": f"{theirs}.{second}", f"{ours}.norm2": f"{theirs}.{second + 1}"})
            i += 1
        for k in range(self.n_downs):
            prefixes[f"model.u{k + 1}.conv"], prefixes[f"model.u{k + 1}.norm"] = f"model.{i}", f"model.{i + 1}"
            i += 3
        prefixes["model.out.conv"] = f"model.{i + 1}"
        return rename_modules(self, prefixes)

    def load_canonical_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Loads a canonical ``ResnetGenerator`` state dict (e.g. a released ``latest_net_G_A.pth``) into this net,
        which must have been built with the same arguments. Missing, extra or mis-shaped keys raise ``ValueError``."""
        load_mapped_state_dict(self, self.canonical_key_map(), state_dict, f"ResnetGenerator ({self.extra_repr()})")
