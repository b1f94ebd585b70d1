"""CartoonGAN (Chen, Lai & Liu, CVPR 2018) networks, as znxlwm/pytorch-CartoonGAN builds them.

Generator (paper notation, ngf 64): k7n64s1 -> norm -> ReLU; two downs (k3n128s2, k3n128s1, norm, ReLU),
(k3n256s2, k3n256s1, norm, ReLU); ``n_blocks`` residual blocks (k3n256s1, norm, ReLU, k3n256s1, norm, + x);
two ups (ConvTranspose k3s2 -> 128, k3n128s1, norm, ReLU), (ConvTranspose -> 64, k3n64s1, norm, ReLU);
k7n3s1 -> tanh. Zero padding throughout, as the reference.

Discriminator (ndf 32): seven 3x3 convs with two stride-2 downs, LeakyReLU 0.2, norms after the third, fifth
and sixth; it returns logits (the reference ends in a sigmoid; our losses apply it, which is stabler).

Norms come from :func:`layers.make_norm` and biases follow :func:`layers.conv_bias` (with the default
instance norm every conv has a bias, as the reference). Weights are initialised N(0, 0.02) as the reference's
``initialize_weights`` does.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .layers import conv_bias, init_weights, make_norm

__all__ = ["CartoonGANDiscriminator", "CartoonGANGenerator"]


class _ResidualBlock(nn.Module):
    """``x + [conv3 -> norm -> ReLU -> conv3 -> norm](x)``, zero padding."""

    def __init__(self, channels: int, norm: str, bias: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(channels, channels, 3, padding=1, bias=bias), norm1=make_norm(norm, channels),
            relu=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(channels, channels, 3, padding=1, bias=bias), norm2=make_norm(norm, channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class CartoonGANGenerator(nn.Module):
    """CartoonGAN generator: ``(N, 3, H, W)`` in [-1, 1] -> ``(N, 3, H, W)`` in [-1, 1], H and W multiples of
    :attr:`size_multiple` (4; other sizes raise ``ValueError``). Blocks: ``flat``, ``down1``, ``down2``,
    ``r1`` .. ``rN``, ``up1``, ``up2``, ``out``."""

    size_multiple = 4

    def __init__(self, ngf: int = 64, n_blocks: int = 8, norm: str = "instance") -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        self.ngf, self.n_blocks, self.norm = ngf, n_blocks, norm
        bias = conv_bias(norm)
        blocks: OrderedDict[str, nn.Module] = OrderedDict(flat=nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, ngf, 7, padding=3, bias=bias), norm=make_norm(norm, ngf), relu=nn.ReLU(inplace=True))))
        for k, (in_ch, out_ch) in enumerate([(ngf, ngf * 2), (ngf * 2, ngf * 4)], start=1):
            blocks[f"down{k}"] = nn.Sequential(OrderedDict(
                conv1=nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=bias),
                conv2=nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=bias),
                norm=make_norm(norm, out_ch), relu=nn.ReLU(inplace=True)))
        for k in range(n_blocks):
            blocks[f"r{k + 1}"] = _ResidualBlock(ngf * 4, norm, bias)
        for k, (in_ch, out_ch) in enumerate([(ngf * 4, ngf * 2), (ngf * 2, ngf)], start=1):
            blocks[f"up{k}"] = nn.Sequential(OrderedDict(
                conv1=nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1, bias=bias),
                conv2=nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=bias),
                norm=make_norm(norm, out_ch), relu=nn.ReLU(inplace=True)))
        blocks["out"] = nn.Sequential(OrderedDict(conv=nn.Conv2d(ngf, 3, 7, padding=3), tanh=nn.Tanh()))
        self.model = nn.Sequential(blocks)
        init_weights(self, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        if height % 4 or width % 4:
            raise ValueError(f"CartoonGANGenerator needs H and W divisible by 4, got {height}x{width}")
        return self.model(x)

    def extra_repr(self) -> str:
        return f"ngf={self.ngf}, n_blocks={self.n_blocks}, norm={self.norm!r}"


class CartoonGANDiscriminator(nn.Module):
    """CartoonGAN discriminator: ``(N, 3, H, W)`` -> ``(N, 1, H/4, W/4)`` logits (for multiples of 4).

    k3n32s1, lrelu; k3n64s2, lrelu; k3n128s1, norm, lrelu; k3n128s2, lrelu; k3n256s1, norm, lrelu;
    k3n256s1, norm, lrelu; k3n1s1 (at ndf 32). Convolutions followed by a norm carry a bias as
    :func:`layers.conv_bias` says; the others always do."""

    def __init__(self, ndf: int = 32, norm: str = "instance") -> None:
        super().__init__()
        self.norm = norm
        bias = conv_bias(norm)

        def conv(in_ch: int, out_ch: int, stride: int = 1, normed: bool = False) -> nn.Conv2d:
            return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias or not normed)

        self.model = nn.Sequential(OrderedDict(
            conv1=conv(3, ndf), lrelu1=nn.LeakyReLU(0.2, True),
            conv2=conv(ndf, ndf * 2, 2), lrelu2=nn.LeakyReLU(0.2, True),
            conv3=conv(ndf * 2, ndf * 4, normed=True), norm3=make_norm(norm, ndf * 4), lrelu3=nn.LeakyReLU(0.2, True),
            conv4=conv(ndf * 4, ndf * 4, 2), lrelu4=nn.LeakyReLU(0.2, True),
            conv5=conv(ndf * 4, ndf * 8, normed=True), norm5=make_norm(norm, ndf * 8), lrelu5=nn.LeakyReLU(0.2, True),
            conv6=conv(ndf * 8, ndf * 8, normed=True), norm6=make_norm(norm, ndf * 8), lrelu6=nn.LeakyReLU(0.2, True),
            conv7=conv(ndf * 8, 1)))
        init_weights(self, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}"
