"""AnimeGAN (Chen et al. 2019) and AnimeGANv2 networks: photo -> anime-style generators and their discriminator.

* :class:`AnimeGANv2Generator` is module for module bryandlee/animegan2-pytorch's ``Generator`` (itself a port of
  the TF AnimeGANv2 ``G_net``), so its released checkpoints (``face_paint_512_v2.pt``, ``paprika.pt``, ...) load
  with ``strict=True`` and compute bitwise the port's output: the same state-dict names (``block_a`` ...
  ``block_e``, ``out_layer``; 77 entries), the same 2,143,552 parameters, the same operations in the same order.
  The one difference is where ``align_corners`` is chosen: the port takes it per call, we take it in the
  constructor, so that a model package's JSON arguments say which resize its outputs were made with.
* :class:`AnimeGANv1Generator` is the TF AnimeGAN (v1) ``G_net``: 3x3 conv blocks, Down-Conv (a stride-2
  separable conv plus a separable conv on a half-size resize, summed), eight inverted residual blocks at 256
  channels, Up-Conv (x2 resize + separable conv), 1x1 conv + tanh. Block names follow the TF scopes.
* :class:`AnimeGANDiscriminator` is the TF AnimeGAN(v2) ``D_net``: bias-free 3x3 convs, spectral norm, layer norm.

"Layer norm" in the TF code is ``tf.contrib.layers.layer_norm``: statistics over (H, W, C) of each sample,
a per-channel gain and shift; that is ``GroupNorm(1, C)``. All networks map (N, 3, H, W) in [-1, 1] to
(N, 3, H, W) in [-1, 1]; weights keep PyTorch's default init (the recipe may re-initialise).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

__all__ = ["AnimeGANDiscriminator", "AnimeGANv1Generator", "AnimeGANv2Generator", "ConvNormLReLU",
           "InvertedResBlock"]

_PADS = {"zero": nn.ZeroPad2d, "same": nn.ReplicationPad2d, "reflect": nn.ReflectionPad2d}


def _check_multiple(net: str, multiple: int, height: int, width: int) -> None:
    if height % multiple or width % multiple:
        raise ValueError(f"{net} needs H and W divisible by {multiple}, got {height}x{width}")


# ------------------------------------------------------------------------------------------------ AnimeGANv2


class ConvNormLReLU(nn.Sequential):
    """pad -> Conv (no bias unless asked) -> GroupNorm(1, C) -> LeakyReLU(0.2): the port's block.

    A ``Sequential`` with children 0..3, so that state-dict keys are the port's (``<block>.1.weight`` is the
    convolution, ``<block>.2.weight`` / ``.bias`` the norm). ``padding`` is an int or (left, right, top, bottom):
    the TF original pads stride-2 convolutions on the bottom/right only."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | tuple[int, int, int, int] = 1, pad_mode: str = "reflect", groups: int = 1,
                 bias: bool = False) -> None:
        if pad_mode not in _PADS:
            raise ValueError(f"unknown pad_mode {pad_mode!r}; expected one of {sorted(_PADS)}")
        super().__init__(
            _PADS[pad_mode](padding),
            nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, stride=stride, padding=0, groups=groups, bias=bias),
            nn.GroupNorm(num_groups=1, num_channels=out_ch, affine=True),
            nn.LeakyReLU(0.2, inplace=True))


class InvertedResBlock(nn.Module):
    """MobileNetV2's inverted residual block as the port has it: [1x1 expand] -> depthwise 3x3 (with bias) ->
    1x1 project -> GroupNorm(1, C), plus the input when the widths agree (``layers.0`` ... ``layers.3``)."""

    def __init__(self, in_ch: int, out_ch: int, expansion_ratio: float = 2) -> None:
        super().__init__()
        self.use_res_connect = in_ch == out_ch
        bottleneck = int(round(in_ch * expansion_ratio))
        layers: list[nn.Module] = []
        if expansion_ratio != 1:
            layers.append(ConvNormLReLU(in_ch, bottleneck, kernel_size=1, padding=0))
        layers.append(ConvNormLReLU(bottleneck, bottleneck, groups=bottleneck, bias=True))
        layers.append(nn.Conv2d(bottleneck, out_ch, kernel_size=1, padding=0, bias=False))
        layers.append(nn.GroupNorm(num_groups=1, num_channels=out_ch, affine=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.use_res_connect else out


class AnimeGANv2Generator(nn.Module):
    """The AnimeGANv2 generator (2,143,552 parameters): ``(N, 3, H, W)`` in [-1, 1] -> ``(N, 3, H, W)`` in [-1, 1].

    ``align_corners=True`` (what the port's released weights were made with) resizes back to the sizes saved on
    the way down, so any H, W works (:attr:`size_multiple` 1). ``align_corners=False`` (the TF original) doubles
    twice, which returns to H x W only when both are multiples of 4 (:attr:`size_multiple` 4); other sizes
    raise ``ValueError`` where the port would silently return a smaller image."""

    def __init__(self, align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = bool(align_corners)
        self.block_a = nn.Sequential(
            ConvNormLReLU(3, 32, kernel_size=7, padding=3),
            ConvNormLReLU(32, 64, stride=2, padding=(0, 1, 0, 1)),
            ConvNormLReLU(64, 64))
        self.block_b = nn.Sequential(
            ConvNormLReLU(64, 128, stride=2, padding=(0, 1, 0, 1)),
            ConvNormLReLU(128, 128))
        self.block_c = nn.Sequential(
            ConvNormLReLU(128, 128),
            InvertedResBlock(128, 256, 2),
            InvertedResBlock(256, 256, 2),
            InvertedResBlock(256, 256, 2),
            InvertedResBlock(256, 256, 2),
            ConvNormLReLU(256, 128))
        self.block_d = nn.Sequential(
            ConvNormLReLU(128, 128),
            ConvNormLReLU(128, 128))
        self.block_e = nn.Sequential(
            ConvNormLReLU(128, 64),
            ConvNormLReLU(64, 64),
            ConvNormLReLU(64, 32, kernel_size=7, padding=3))
        self.out_layer = nn.Sequential(
            nn.Conv2d(32, 3, kernel_size=1, stride=1, padding=0, bias=False),
            nn.Tanh())

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this."""
        return 1 if self.align_corners else 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.align_corners:
            _check_multiple("AnimeGANv2Generator(align_corners=False)", 4, x.shape[-2], x.shape[-1])
        out = self.block_a(x)
        half_size = out.shape[-2:]
        out = self.block_c(self.block_b(out))
        out = self._up(out, half_size)
        out = self.block_d(out)
        out = self._up(out, x.shape[-2:])
        out = self.block_e(out)
        return self.out_layer(out)

    def _up(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        # Exactly the port's two calls: bitwise equality with its outputs depends on it.
        if self.align_corners:
            return F.interpolate(x, size, mode="bilinear", align_corners=True)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"align_corners={self.align_corners}"


# ------------------------------------------------------------------------------------------------ AnimeGAN v1


class _SeparableConvNormLReLU(nn.Sequential):
    """``tf.contrib.layers.separable_conv2d`` as the TF AnimeGAN code calls it: reflect pad (1 on every side at
    stride 1; bottom/right only at stride 2) -> depthwise 3x3 -> pointwise 1x1 (no biases) -> norm -> LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, norm: str = "instance") -> None:
        super().__init__(OrderedDict(
            pad=nn.ReflectionPad2d(1 if stride == 1 else (0, 1, 0, 1)),
            depthwise=nn.Conv2d(in_ch, in_ch, 3, stride=stride, groups=in_ch, bias=False),
            pointwise=nn.Conv2d(in_ch, out_ch, 1, bias=False),
            norm=_v1_norm(norm, out_ch),
            lrelu=nn.LeakyReLU(0.2, inplace=True)))


def _v1_norm(norm: str, channels: int) -> nn.Module:
    # TF AnimeGAN v1 uses tf.contrib instance_norm (per-channel affine, eps 1e-5); "layer" is GroupNorm(1, C).
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "layer":
        return nn.GroupNorm(1, channels, affine=True)
    raise ValueError(f"unknown norm {norm!r}; expected 'instance' or 'layer'")


class _ConvNormLReLU(nn.Sequential):
    """TF ``Conv2DNormLReLU``: reflect pad 1 for 3x3 kernels -> conv (no bias) -> norm -> LeakyReLU(0.2)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, norm: str = "instance") -> None:
        super().__init__(OrderedDict(
            pad=nn.ReflectionPad2d(kernel_size // 2),
            conv=nn.Conv2d(in_ch, out_ch, kernel_size, bias=False),
            norm=_v1_norm(norm, out_ch),
            lrelu=nn.LeakyReLU(0.2, inplace=True)))


class _DownConv(nn.Module):
    """Down-Conv: a stride-2 separable conv plus a separable conv of the half-size bilinear resize, summed."""

    def __init__(self, in_ch: int, out_ch: int, norm: str) -> None:
        super().__init__()
        self.strided = _SeparableConvNormLReLU(in_ch, out_ch, stride=2, norm=norm)
        self.resized = _SeparableConvNormLReLU(in_ch, out_ch, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = F.interpolate(x, (x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear", align_corners=False)
        return self.strided(x) + self.resized(half)


class _UpConv(nn.Module):
    """Up-Conv: bilinear x2 resize, then a separable conv (instead of a transposed conv: no checkerboard)."""

    def __init__(self, in_ch: int, out_ch: int, norm: str) -> None:
        super().__init__()
        self.conv = _SeparableConvNormLReLU(in_ch, out_ch, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class _V1InvertedResBlock(nn.Module):
    """TF ``InvertedRes_block`` (stride 1): 1x1 expand -> norm -> lrelu -> depthwise 3x3 (reflect pad, no bias)
    -> norm -> lrelu -> 1x1 project -> norm, plus the input when the widths agree."""

    def __init__(self, in_ch: int, out_ch: int, expansion_ratio: float = 2, norm: str = "instance") -> None:
        super().__init__()
        bottleneck = int(round(in_ch * expansion_ratio))
        self.use_res_connect = in_ch == out_ch
        self.layers = nn.Sequential(OrderedDict(
            expand=_ConvNormLReLU(in_ch, bottleneck, kernel_size=1, norm=norm),
            pad=nn.ReflectionPad2d(1),
            depthwise=nn.Conv2d(bottleneck, bottleneck, 3, groups=bottleneck, bias=False),
            norm1=_v1_norm(norm, bottleneck),
            lrelu=nn.LeakyReLU(0.2, inplace=True),
            project=nn.Conv2d(bottleneck, out_ch, 1, bias=False),
            norm2=_v1_norm(norm, out_ch)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.use_res_connect else out


class AnimeGANv1Generator(nn.Module):
    """The AnimeGAN (v1) generator, TF ``G_net``: ``(N, 3, H, W)`` in [-1, 1] -> ``(N, 3, H, W)`` in [-1, 1], for H
    and W multiples of :attr:`size_multiple` (4; other sizes raise ``ValueError``).

    Blocks as the TF scopes: ``b1`` (conv 64, conv 64, Down-Conv 128), ``b2`` (conv 128, separable 128,
    Down-Conv 256), ``m`` (conv 256, ``n_blocks`` inverted residual blocks at 256 with expansion 2, conv 256),
    ``u2`` (Up-Conv 128, separable 128, conv 128), ``u1`` (Up-Conv 128 (the code's width; the paper's figure
    says 64), conv 64, conv 64), ``out_layer`` (1x1 conv -> 3, no bias, tanh).

    ``norm``: the TF v1 code normalises with ``instance_norm`` (affine); ``"layer"`` uses GroupNorm(1, C) as
    AnimeGANv2 does. Resizes are bilinear with half-pixel centres (``align_corners=False``; TF 1's
    ``resize_images`` sampled without them, so TF-trained weights would see slightly shifted resizes)."""

    def __init__(self, n_blocks: int = 8, norm: str = "instance") -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        _v1_norm(norm, 1)  # an unknown norm fails here, not at the first block
        self.n_blocks, self.norm = n_blocks, norm
        self.b1 = nn.Sequential(OrderedDict(
            conv1=_ConvNormLReLU(3, 64, norm=norm), conv2=_ConvNormLReLU(64, 64, norm=norm),
            down=_DownConv(64, 128, norm)))
        self.b2 = nn.Sequential(OrderedDict(
            conv=_ConvNormLReLU(128, 128, norm=norm), sep=_SeparableConvNormLReLU(128, 128, norm=norm),
            down=_DownConv(128, 256, norm)))
        middle: OrderedDict[str, nn.Module] = OrderedDict(conv1=_ConvNormLReLU(256, 256, norm=norm))
        for k in range(n_blocks):
            middle[f"r{k + 1}"] = _V1InvertedResBlock(256, 256, 2, norm)
        middle["conv2"] = _ConvNormLReLU(256, 256, norm=norm)
        self.m = nn.Sequential(middle)
        self.u2 = nn.Sequential(OrderedDict(
            up=_UpConv(256, 128, norm), sep=_SeparableConvNormLReLU(128, 128, norm=norm),
            conv=_ConvNormLReLU(128, 128, norm=norm)))
        self.u1 = nn.Sequential(OrderedDict(
            up=_UpConv(128, 128, norm), conv1=_ConvNormLReLU(128, 64, norm=norm),
            conv2=_ConvNormLReLU(64, 64, norm=norm)))
        self.out_layer = nn.Sequential(OrderedDict(conv=nn.Conv2d(64, 3, 1, bias=False), tanh=nn.Tanh()))

    size_multiple = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_multiple("AnimeGANv1Generator", 4, x.shape[-2], x.shape[-1])
        return self.out_layer(self.u1(self.u2(self.m(self.b2(self.b1(x))))))

    def extra_repr(self) -> str:
        return f"n_blocks={self.n_blocks}, norm={self.norm!r}"


# ------------------------------------------------------------------------------------------------ discriminator


class AnimeGANDiscriminator(nn.Module):
    """The TF AnimeGAN(v2) ``D_net``: ``(N, 3, H, W)`` -> ``(N, 1, H', W')`` logits (a patch map; H' = H / 2**(n_dis-1)
    for multiples of that).

    ``conv_0`` 3x3 -> ch/2, LeakyReLU; for i in 1..n_dis-1: 3x3/2 -> 2c, LeakyReLU, 3x3 -> 4c, layer norm,
    LeakyReLU (c doubles); ``last_conv`` 3x3 -> 2c, layer norm, LeakyReLU; ``D_logit`` 3x3 -> 1. No biases;
    zero padding as TF's ``conv`` pads (1 on every side at stride 1, top/left only at stride 2); spectral norm
    on every convolution when ``spectral_norm``. No sigmoid: the loss takes logits (LSGAN in AnimeGAN)."""

    def __init__(self, ch: int = 64, n_dis: int = 3, spectral_norm: bool = True) -> None:
        super().__init__()
        if n_dis < 1:
            raise ValueError(f"n_dis must be >= 1, got {n_dis}")
        self.n_dis, self.spectral_norm = n_dis, spectral_norm

        def conv(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
            layer = nn.Conv2d(in_ch, out_ch, 3, stride=stride, bias=False)
            pad = nn.ZeroPad2d(1 if stride == 1 else (1, 0, 1, 0))
            return nn.Sequential(OrderedDict(pad=pad, conv=_spectral_norm(layer) if spectral_norm else layer))

        channel = ch // 2
        layers: OrderedDict[str, nn.Module] = OrderedDict(conv_0=conv(3, channel), lrelu_0=nn.LeakyReLU(0.2, True))
        last = channel
        for i in range(1, n_dis):
            layers[f"conv_s2_{i}"] = conv(last, channel * 2, stride=2)
            layers[f"lrelu_s2_{i}"] = nn.LeakyReLU(0.2, True)
            layers[f"conv_s1_{i}"] = conv(channel * 2, channel * 4)
            layers[f"norm_{i}"] = nn.GroupNorm(1, channel * 4)
            layers[f"lrelu_s1_{i}"] = nn.LeakyReLU(0.2, True)
            last, channel = channel * 4, channel * 2
        layers["last_conv"] = conv(last, channel * 2)
        layers["last_norm"] = nn.GroupNorm(1, channel * 2)
        layers["last_lrelu"] = nn.LeakyReLU(0.2, True)
        layers["D_logit"] = conv(channel * 2, 1)
        self.model = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def extra_repr(self) -> str:
        return f"n_dis={self.n_dis}, spectral_norm={self.spectral_norm}"
