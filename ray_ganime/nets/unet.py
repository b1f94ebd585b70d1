"""The pix2pix U-Net generator (Isola et al. 2017), as in junyanz/pytorch-CycleGAN-and-pix2pix.

Canonical builds it recursively from ``UnetSkipConnectionBlock``; here it is an explicit encoder list and
decoder list, which reads top to bottom, runs on any input size divisible by ``2 ** num_downs`` and exports
without recursion. Layer for layer it is the canonical net: same convolutions, biases, norms, dropouts and
activation order, hence the same parameter count (54,413,955 at 256 px with batch norm), and the
concatenation puts the skip first, as canonical's ``torch.cat([x, self.model(x)], 1)``, so each up-convolution
sees its input channels in canonical order.

Level ``k`` (0 = outermost) halves the resolution on the way down and doubles it on the way up:

* down 0 (outermost):   Conv4x4/2                          no norm, no activation before it
* down k (inner):       LeakyReLU(0.2) -> Conv4x4/2 -> norm
* down n-1 (innermost): LeakyReLU(0.2) -> Conv4x4/2        the 1x1 (at 2**n px) bottleneck: no norm
* up n-1 (innermost):   ReLU -> ConvT4x4/2 -> norm          input: the bottleneck alone (it is not a skip)
* up k (inner):         ReLU -> ConvT4x4/2 -> norm [-> Dropout(0.5)]   input: [skip k, up k+1]
* up 0 (outermost):     ReLU -> ConvT4x4/2 -> Tanh          input: [skip 0, up 1]

The activation opens each block (instead of closing the previous one) because that is where canonical puts
it; each skip is therefore the pre-activation output of its down block. (Canonical applies its in-place
LeakyReLU to the skip too, but the up block's ReLU follows, and ReLU(LeakyReLU(x)) == ReLU(x).)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from .layers import conv_bias, init_weights, load_mapped_state_dict, make_norm, rename_modules

__all__ = ["UNetGenerator", "unet_channels"]

# Canonical caps the width at 8 * ngf (512 for ngf=64) from level 3 inwards.
MAX_WIDTH_MULT = 8
# Canonical's dropout blocks are the num_downs - 5 levels between the width cap and the innermost level
# (levels 4 .. n-2): three at 256 px, two at 128 px, none at 32 px.
FIRST_DROPOUT_LEVEL = 4


def unet_channels(ngf: int, num_downs: int) -> list[int]:
    """Output channels of each down level: ngf * (1, 2, 4, 8, 8, ...)."""
    return [ngf * min(2**k, MAX_WIDTH_MULT) for k in range(num_downs)]


def _depth_for_size(image_size: int) -> int:
    """log2(image_size): the depth at which the bottleneck is 1x1, as canonical ``unet_256``/``unet_128``."""
    if image_size < 4 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 4 to choose the depth, got {image_size}; "
                         f"pass num_downs explicitly for other sizes")
    return image_size.bit_length() - 1


class UNetGenerator(nn.Module):
    """pix2pix U-Net: ``(N, in_channels, H, W)`` in [-1, 1] -> ``(N, out_channels, H, W)`` in [-1, 1].

    ``num_downs`` defaults to log2(``image_size``) (256 -> 8, 128 -> 7, 64 -> 6, 32 -> 5); ``image_size`` is
    used for nothing else. H and W must both be divisible by :attr:`size_multiple` (``2 ** num_downs``),
    e.g. 64x128 at depth 6; other sizes raise ``ValueError``. ``norm`` is "batch", "instance" or "none";
    ``dropout`` is the probability of the canonical dropout layers (0 or None leaves them out).
    Weights are initialised as canonical ``init_weights('normal', 0.02)``.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, num_downs: int | None = None,
                 image_size: int = 256, norm: str = "batch", dropout: float | None = 0.5) -> None:
        super().__init__()
        if num_downs is None:
            num_downs = _depth_for_size(image_size)
        if num_downs < 2:
            raise ValueError(f"num_downs must be >= 2 (an outermost and an innermost level), got {num_downs}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_downs = num_downs
        self.norm = norm

        # Activations are not in place: every down block's output is also kept as a skip.
        bias = conv_bias(norm)
        channels = unet_channels(ngf, num_downs)
        innermost = num_downs - 1

        encoder = [nn.Sequential(OrderedDict(conv=_down_conv(in_channels, channels[0], bias)))]
        for level in range(1, num_downs):
            layers = OrderedDict(lrelu=nn.LeakyReLU(0.2), conv=_down_conv(channels[level - 1], channels[level], bias))
            if level != innermost:
                layers["norm"] = make_norm(norm, channels[level])
            encoder.append(nn.Sequential(layers))

        # Built outermost first to mirror the encoder, then reversed into the order the forward pass runs.
        decoder = [nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=_up_conv(2 * channels[0], out_channels, True),
                                             tanh=nn.Tanh()))]
        for level in range(1, num_downs):
            in_ch = channels[level] if level == innermost else 2 * channels[level]
            layers = OrderedDict(relu=nn.ReLU(), conv=_up_conv(in_ch, channels[level - 1], bias),
                                 norm=make_norm(norm, channels[level - 1]))
            if dropout and FIRST_DROPOUT_LEVEL <= level < innermost:
                layers["dropout"] = nn.Dropout(dropout)
            decoder.append(nn.Sequential(layers))

        self.encoder = nn.ModuleList(encoder)            # encoder[k]: down level k, outermost first
        self.decoder = nn.ModuleList(reversed(decoder))  # decoder[j]: up level num_downs-1-j, innermost first
        init_weights(self, 0.02)

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this (``2 ** num_downs``)."""
        return 2**self.num_downs

    def check_size(self, height: int, width: int) -> None:
        """Raises ``ValueError`` unless ``height`` and ``width`` are positive multiples of :attr:`size_multiple`."""
        m = self.size_multiple
        if height <= 0 or width <= 0 or height % m or width % m:
            raise ValueError(f"UNetGenerator with num_downs={self.num_downs} needs H and W divisible by "
                             f"2**{self.num_downs} = {m}, got {height}x{width}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x.shape[-2], x.shape[-1])
        skips = []
        for down in self.encoder:
            x = down(x)
            skips.append(x)
        x = self.decoder[0](skips.pop())  # the bottleneck feeds the innermost up block only
        for up in self.decoder[1:]:
            x = up(torch.cat([skips.pop(), x], dim=1))
        return x

    def extra_repr(self) -> str:
        return f"num_downs={self.num_downs}, norm={self.norm!r}"

    # ------------------------------------------------------------------------ canonical weights

    def canonical_key_map(self) -> dict[str, str]:
        """Our state-dict key -> canonical ``UnetGenerator``'s, for every key we have.

        Canonical nests one ``UnetSkipConnectionBlock`` per level, each a ``model`` Sequential: the outermost
        ``[downconv, submodule, uprelu, upconv, tanh]`` (``model.model.0``, ``.1``, ``.3``), the inner ones
        ``[downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm(, dropout)]`` and the innermost
        ``[downrelu, downconv, uprelu, upconv, upnorm]``; level k's block is ``model.model.1`` then
        ``.model.3`` (k - 1) times."""
        innermost = self.num_downs - 1
        prefixes = {"encoder.0.conv": "model.model.0", f"decoder.{innermost}.conv": "model.model.3"}
        for level in range(1, self.num_downs):
            block = "model.model.1" + ".model.3" * (level - 1)
            up = f"decoder.{innermost - level}"
            prefixes[f"encoder.{level}.conv"] = f"{block}.model.1"
            if level == innermost:
                prefixes.update({f"{up}.conv": f"{block}.model.3", f"{up}.norm": f"{block}.model.4"})
            else:
                prefixes.update({f"encoder.{level}.norm": f"{block}.model.2", f"{up}.conv": f"{block}.model.5",
                                 f"{up}.norm": f"{block}.model.6"})
        return rename_modules(self, prefixes)

    def load_canonical_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Loads a canonical ``UnetGenerator`` state dict (a pix2pix ``latest_net_G.pth``) into this net, which must
        have been built with the same arguments. Missing, extra or mis-shaped keys raise ``ValueError``."""
        load_mapped_state_dict(self, self.canonical_key_map(), state_dict, f"UnetGenerator ({self.extra_repr()})")


def _down_conv(in_ch: int, out_ch: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=bias)


def _up_conv(in_ch: int, out_ch: int, bias: bool) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=bias)
