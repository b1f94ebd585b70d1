"""AnimeGAN (v1, v2) and CartoonGAN networks: exact parameter counts, state-dict names, sizes, JSON rebuilds.

Counts are written out from the layer formulas (conv k*k*in*out [+ out bias], norm affine 2*C), so a changed
layer fails here rather than silently in a trained package. Nets run at 32-64 px; the 11M-parameter CartoonGAN
generator is built on the meta device.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from ray_ganime.nets import (
    GENERATORS,
    AnimeGANDiscriminator,
    AnimeGANv1Generator,
    AnimeGANv2Generator,
    CartoonGANDiscriminator,
    CartoonGANGenerator,
    PadToMultiple,
    build_generator,
    count_parameters,
)


def _on_meta(factory, **kwargs) -> nn.Module:
    # Counts and shapes without allocating or initialising the weights.
    with torch.device("meta"):
        return factory(**kwargs)


def _conv(k: int, cin: int, cout: int, bias: bool = False, groups: int = 1) -> int:
    return k * k * (cin // groups) * cout + (cout if bias else 0)


def _norm(c: int) -> int:  # GroupNorm(1, C) / affine InstanceNorm2d: a gain and a shift per channel
    return 2 * c


def _v2_count() -> int:
    def cnl(k, cin, cout, groups=1, bias=False):
        return _conv(k, cin, cout, bias, groups) + _norm(cout)

    def irb(cin, cout):
        mid = 2 * cin
        return cnl(1, cin, mid) + cnl(3, mid, mid, groups=mid, bias=True) + _conv(1, mid, cout) + _norm(cout)

    return (cnl(7, 3, 32) + cnl(3, 32, 64) + cnl(3, 64, 64)  # block_a
            + cnl(3, 64, 128) + cnl(3, 128, 128)  # block_b
            + cnl(3, 128, 128) + irb(128, 256) + 3 * irb(256, 256) + cnl(3, 256, 128)  # block_c
            + 2 * cnl(3, 128, 128)  # block_d
            + cnl(3, 128, 64) + cnl(3, 64, 64) + cnl(7, 64, 32)  # block_e
            + _conv(1, 32, 3))  # out_layer


def _v1_count(n_blocks: int = 8) -> int:
    def cnl(k, cin, cout):
        return _conv(k, cin, cout) + _norm(cout)

    def sep(cin, cout):
        return _conv(3, cin, cin, groups=cin) + _conv(1, cin, cout) + _norm(cout)

    def irb(c):
        mid = 2 * c
        return cnl(1, c, mid) + _conv(3, mid, mid, groups=mid) + _norm(mid) + _conv(1, mid, c) + _norm(c)

    return (cnl(3, 3, 64) + cnl(3, 64, 64) + 2 * sep(64, 128)  # b1 (Down-Conv: two separable convs)
            + cnl(3, 128, 128) + sep(128, 128) + 2 * sep(128, 256)  # b2
            + 2 * cnl(3, 256, 256) + n_blocks * irb(256)  # m
            + sep(256, 128) + sep(128, 128) + cnl(3, 128, 128)  # u2
            + sep(128, 128) + cnl(3, 128, 64) + cnl(3, 64, 64)  # u1
            + _conv(1, 64, 3))  # out_layer


def _d_count(ch: int = 64, n_dis: int = 3) -> int:
    # The TF D_net: no biases; layer norm after the stride-1 convs of each level and after last_conv.
    channel = ch // 2
    total, last = _conv(3, 3, channel), channel
    for _ in range(1, n_dis):
        total += _conv(3, last, channel * 2) + _conv(3, channel * 2, channel * 4) + _norm(channel * 4)
        last, channel = channel * 4, channel * 2
    return total + _conv(3, last, channel * 2) + _norm(channel * 2) + _conv(3, channel * 2, 1)


def _cartoon_g_count(ngf: int = 64, n_blocks: int = 8) -> int:
    # Instance norm without affine; every conv with a bias.
    return (_conv(7, 3, ngf, True)
            + _conv(3, ngf, 2 * ngf, True) + _conv(3, 2 * ngf, 2 * ngf, True)
            + _conv(3, 2 * ngf, 4 * ngf, True) + _conv(3, 4 * ngf, 4 * ngf, True)
            + n_blocks * 2 * _conv(3, 4 * ngf, 4 * ngf, True)
            + _conv(3, 4 * ngf, 2 * ngf, True) + _conv(3, 2 * ngf, 2 * ngf, True)  # ConvT counts as a conv
            + _conv(3, 2 * ngf, ngf, True) + _conv(3, ngf, ngf, True)
            + _conv(7, ngf, 3, True))


def _cartoon_d_count(ndf: int = 32) -> int:
    widths = [(3, ndf), (ndf, 2 * ndf), (2 * ndf, 4 * ndf), (4 * ndf, 4 * ndf), (4 * ndf, 8 * ndf),
              (8 * ndf, 8 * ndf), (8 * ndf, 1)]
    return sum(_conv(3, cin, cout, True) for cin, cout in widths)


def test_formulas_give_the_known_totals():
    assert _v2_count() == 2_143_552  # the TF AnimeGANv2 / animegan2-pytorch generator
    # The TF v1 G_net (TachibanaYoshino/AnimeGAN net/generator.py), layer for layer. REFERENCE.md's 3,761,280 is
    # ptran1203/pytorch-animeGAN's GeneratorV1, a looser port: it widens to 128 and 256 one layer earlier,
    # narrows 256 -> 128 with a full 3x3 conv before u2, has affine-free norms and depthwise biases
    # (-173,824 conv weights, -25,088 norm affines, +4,096 biases = -194,816).
    assert _v1_count() == 3_956_096
    assert _d_count() == 1_128_800  # REFERENCE.md: about 1.13M
    assert _cartoon_g_count() == 11_120_195
    assert _cartoon_d_count() == 1_128_385


@pytest.mark.parametrize("align_corners", [True, False])
def test_v2_parameters_and_state_dict_names(align_corners):
    net = AnimeGANv2Generator(align_corners)
    assert count_parameters(net) == _v2_count() == 2_143_552
    keys = list(net.state_dict())
    assert len(keys) == 77
    assert {k.split(".")[0] for k in keys} == {"block_a", "block_b", "block_c", "block_d", "block_e", "out_layer"}
    assert keys[:3] == ["block_a.0.1.weight", "block_a.0.2.weight", "block_a.0.2.bias"]
    assert "block_c.1.layers.1.1.bias" in keys  # the depthwise conv of an inverted residual block has a bias
    assert keys[-1] == "out_layer.0.weight"
    biases = [k for k in keys if k.endswith(".bias") and not re.search(r"\.2\.bias$|layers\.3\.bias$", k)]
    assert len(biases) == 4  # only the four depthwise convs; every other .bias is a GroupNorm's


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (33, 17), (50, 70)])
def test_v2_with_align_corners_keeps_any_size(size):
    torch.manual_seed(0)
    net = AnimeGANv2Generator().eval()
    assert net.size_multiple == 1
    with torch.no_grad():
        y = net(torch.rand(2, 3, *size) * 2 - 1)
    assert y.shape == (2, 3, *size)
    assert y.abs().max() <= 1


def test_v2_without_align_corners_needs_multiples_of_4():
    net = AnimeGANv2Generator(align_corners=False).eval()
    assert net.size_multiple == 4
    with torch.no_grad():
        assert net(torch.rand(1, 3, 32, 48)).shape == (1, 3, 32, 48)
        with pytest.raises(ValueError, match="divisible by 4"):
            net(torch.rand(1, 3, 33, 48))
        # The wrapper that packages use makes any size work.
        assert PadToMultiple(net, net.size_multiple)(torch.rand(1, 3, 33, 50)).shape == (1, 3, 33, 50)


def test_v1_counts_names_and_sizes():
    net = AnimeGANv1Generator().eval()
    assert count_parameters(net) == _v1_count() == 3_956_096
    assert count_parameters(_on_meta(AnimeGANv1Generator, norm="layer")) == 3_956_096
    assert count_parameters(_on_meta(AnimeGANv1Generator, n_blocks=4)) == _v1_count(4)
    assert [name for name, _ in net.named_children()] == ["b1", "b2", "m", "u2", "u1", "out_layer"]
    assert [name for name, _ in net.m.named_children()] == ["conv1", *[f"r{k}" for k in range(1, 9)], "conv2"]
    assert not any(k.endswith("bias") and "norm" not in k for k in net.state_dict())  # no conv has a bias
    assert net.size_multiple == 4
    with torch.no_grad():
        for size in [(32, 32), (36, 48)]:
            y = net(torch.rand(1, 3, *size) * 2 - 1)
            assert y.shape == (1, 3, *size) and y.abs().max() <= 1
        with pytest.raises(ValueError, match="divisible by 4"):
            net(torch.rand(1, 3, 34, 32))
    with pytest.raises(ValueError, match="unknown norm"):
        AnimeGANv1Generator(norm="batch")


def test_animegan_discriminator():
    d = AnimeGANDiscriminator()
    assert count_parameters(d) == _d_count() == 1_128_800
    assert count_parameters(_on_meta(AnimeGANDiscriminator, spectral_norm=False)) == 1_128_800
    assert count_parameters(_on_meta(AnimeGANDiscriminator, ch=32, n_dis=2)) == _d_count(32, 2)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 7 and all(c.bias is None for c in convs)
    assert all(hasattr(c, "parametrizations") for c in convs)  # spectral norm on every conv
    plain = _on_meta(AnimeGANDiscriminator, spectral_norm=False)
    assert not any(hasattr(c, "parametrizations") for c in plain.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in d.modules()) == 3
    with torch.no_grad():
        assert d(torch.rand(2, 3, 32, 32)).shape == (2, 1, 8, 8)
        assert d(torch.rand(1, 3, 33, 48)).shape == (1, 1, 8, 12)  # TF pads stride-2 convs top/left only
        assert AnimeGANDiscriminator(n_dis=2)(torch.rand(1, 3, 32, 32)).shape == (1, 1, 16, 16)


def test_cartoongan_generator():
    net = CartoonGANGenerator(ngf=8, n_blocks=2).eval()
    assert count_parameters(net) == _cartoon_g_count(8, 2)
    assert [name for name, _ in net.model.named_children()] == ["flat", "down1", "down2", "r1", "r2", "up1", "up2",
                                                                 "out"]
    assert net.size_multiple == 4
    with torch.no_grad():
        for size in [(32, 32), (64, 48)]:
            y = net(torch.rand(1, 3, *size) * 2 - 1)
            assert y.shape == (1, 3, *size) and y.abs().max() <= 1
        with pytest.raises(ValueError, match="divisible by 4"):
            net(torch.rand(1, 3, 30, 32))


def test_cartoongan_generator_at_the_default_config_on_meta():
    net = _on_meta(CartoonGANGenerator)
    y = net(torch.empty(1, 3, 256, 256, device="meta"))
    assert count_parameters(net) == _cartoon_g_count() == 11_120_195
    assert y.shape == (1, 3, 256, 256)


def test_cartoongan_discriminator():
    d = CartoonGANDiscriminator()
    assert count_parameters(d) == _cartoon_d_count() == 1_128_385
    assert sum(isinstance(m, nn.Conv2d) for m in d.modules()) == 7
    with torch.no_grad():
        y = d(torch.rand(2, 3, 64, 64))
    assert y.shape == (2, 1, 16, 16)
    assert y.min() < 0  # logits: a sigmoid's output never is
    assert not any(isinstance(m, nn.Sigmoid) for m in d.modules())


@pytest.mark.parametrize("class_name,args,size", [
    ("AnimeGANv2Generator", {"align_corners": True}, (33, 17)),
    ("AnimeGANv2Generator", {"align_corners": False}, (32, 32)),
    ("AnimeGANv1Generator", {"n_blocks": 2, "norm": "layer"}, (32, 32)),
    ("CartoonGANGenerator", {"ngf": 8, "n_blocks": 1, "norm": "instance"}, (32, 32)),
])
def test_build_generator_rebuilds_from_json_args(class_name, args, size):
    assert class_name in GENERATORS
    torch.manual_seed(0)
    original = GENERATORS[class_name](**args).eval()
    rebuilt = build_generator(class_name, json.loads(json.dumps(args))).eval()
    rebuilt.load_state_dict(original.state_dict())
    x = torch.rand(1, 3, *size) * 2 - 1
    with torch.no_grad():
        assert torch.equal(rebuilt(x), original(x))
    with pytest.raises(ValueError, match="bad constructor arguments"):
        build_generator(class_name, {**args, "nope": 1})
