"""The pix2pix U-Net and PatchGAN: canonical sizes and counts, gradients, bf16 autocast + channels_last.

Only one 54M-parameter U-Net is materialised (module fixture); the other canonical counts are taken on the
meta device, and behaviour is checked on narrow (ngf/ndf = 8) nets at 64 px, which have the same structure.
"""

from __future__ import annotations

import junyanz
import pytest
import torch
from torch import nn

from ray_ganime.nets import (
    DCGANGenerator,
    PadToMultiple,
    PatchDiscriminator,
    ResNetGenerator,
    UNetGenerator,
    build_generator,
    count_parameters,
    init_weights,
    make_norm,
    receptive_field,
)

NORMS = ["batch", "instance", "none"]


@pytest.fixture(scope="module")
def unet256() -> UNetGenerator:
    torch.manual_seed(0)
    return UNetGenerator()


def _on_meta(factory, **kwargs) -> nn.Module:
    # Shapes and counts without allocating (or initialising) tens of millions of weights.
    with torch.device("meta"):
        return factory(**kwargs)


def _dropouts(net: nn.Module) -> int:
    return sum(isinstance(m, nn.Dropout) for m in net.modules())


# ---------------------------------------------------------------------------------------- canonical counts
# The published counts (../shared/REFERENCE.md) and, independently of our modules, the same counts from the layer
# lists of junyanz's models/networks.py (UnetSkipConnectionBlock, ResnetGenerator) transcribed as arithmetic.


def _conv(c_in: int, c_out: int, k: int, bias: bool) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def junyanz_unet_count(num_downs: int, norm: str, ngf: int = 64, channels: int = 3) -> int:
    """unet_256 (num_downs 8) / unet_128 (7): 4x4 convolutions; biased where instance norm (no affine) or no norm
    follows; batch norm's weight and bias per channel; the outermost up-convolution biased, with no norm."""
    bias, norm_params = norm == "instance", (lambda c: 2 * c if norm == "batch" else 0)
    inner = [(ngf, 2 * ngf), (2 * ngf, 4 * ngf), (4 * ngf, 8 * ngf), *[(8 * ngf, 8 * ngf)] * (num_downs - 5)]
    total = _conv(channels, ngf, 4, bias) + _conv(2 * ngf, channels, 4, True)  # outermost
    for outer, inside in inner:  # down conv + norm, up conv (of the skip-concatenated 2 x inside) + norm
        total += _conv(outer, inside, 4, bias) + norm_params(inside) + _conv(2 * inside, outer, 4, bias)
        total += norm_params(outer)
    return total + _conv(8 * ngf, 8 * ngf, 4, bias) + _conv(8 * ngf, 8 * ngf, 4, bias) + norm_params(8 * ngf)


def junyanz_resnet_count(n_blocks: int, ngf: int = 64, channels: int = 3) -> int:
    """c7s1-ngf, d2ngf, d4ngf, n_blocks x R4ngf (two 3x3 convolutions each), u2ngf, ungf, c7s1-3; instance norm
    without affine parameters, so every convolution has a bias."""
    return (_conv(channels, ngf, 7, True) + _conv(ngf, 2 * ngf, 3, True) + _conv(2 * ngf, 4 * ngf, 3, True)
            + n_blocks * 2 * _conv(4 * ngf, 4 * ngf, 3, True)
            + _conv(4 * ngf, 2 * ngf, 3, True) + _conv(2 * ngf, ngf, 3, True) + _conv(ngf, channels, 7, True))


def test_unet_256_batch_norm_parameter_count(unet256):
    assert count_parameters(unet256) == 54_413_955 == junyanz_unet_count(8, "batch")


@pytest.mark.parametrize(("kwargs", "expected", "junyanz"), [
    (dict(image_size=256, norm="instance"), 54_409_603, (8, "instance")),
    (dict(image_size=128, norm="batch"), 41_828_995, (7, "batch")),
])
def test_unet_parameter_counts(kwargs, expected, junyanz):
    assert count_parameters(_on_meta(UNetGenerator, **kwargs)) == expected == junyanz_unet_count(*junyanz)


@pytest.mark.parametrize(("kwargs", "expected"), [
    (dict(in_channels=6, norm="batch"), 2_768_705),
    (dict(in_channels=3, norm="instance"), 2_764_737),
])
def test_patch_discriminator_parameter_counts(kwargs, expected):
    assert count_parameters(PatchDiscriminator(**kwargs)) == expected


def test_count_parameters_counts_only_trainable_parameters():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), make_norm("batch", 4))  # 3*4*9 + 4 conv, 4 + 4 norm, buffers not
    assert count_parameters(net) == 120
    net[0].weight.requires_grad_(False)
    assert count_parameters(net) == 120 - 108


# ------------------------------------------------------------------------------------------------ shapes


def test_unet_256_output_shape_and_range(unet256):
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    unet256.eval()
    with torch.no_grad():
        y = unet256(x)
    assert y.shape == (1, 3, 256, 256)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all() and y.abs().max() <= 1
    assert y.std() > 0  # not collapsed to a constant


@pytest.mark.parametrize(("size", "depth", "dropouts"), [(256, 8, 3), (128, 7, 2), (64, 6, 1), (32, 5, 0)])
def test_unet_depth_follows_image_size(size, depth, dropouts):
    net = _on_meta(UNetGenerator, image_size=size)
    assert net.num_downs == depth and len(net.encoder) == len(net.decoder) == depth
    assert net.size_multiple == size
    assert _dropouts(net) == dropouts  # canonical: num_downs - 5 dropout blocks


def test_unet_without_dropout_has_no_dropout_layers():
    assert _dropouts(_on_meta(UNetGenerator, dropout=0.0)) == 0


def test_unet_skips_concatenate_channels():
    # Each up convolution but the innermost reads skip + upsampled channels: twice its level's width.
    net = _on_meta(UNetGenerator, image_size=64, ngf=8)
    assert [up.conv.in_channels for up in net.decoder] == [64, 128, 128, 64, 32, 16]
    assert [down.conv.out_channels for down in net.encoder] == [8, 16, 32, 64, 64, 64]


def test_unet_any_size_divisible_by_size_multiple():
    net = UNetGenerator(ngf=8, num_downs=6).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 3, 64, 128))
    assert y.shape == (2, 3, 64, 128)


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (1, 3, 96, 64), (1, 3, 32, 32)])
def test_unet_rejects_size_not_divisible(shape):
    net = UNetGenerator(ngf=8, num_downs=6)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*6 = 64"):
        net(torch.randn(shape))


def test_pad_to_multiple_pads_bottom_right_and_crops_back():
    # A per-pixel net sees every input pixel where it was: padding on the bottom/right only, cropped away.
    torch.manual_seed(0)
    pointwise = nn.Conv2d(3, 3, 1)
    net = PadToMultiple(pointwise, 16)
    for shape in [(2, 3, 45, 70), (1, 3, 7, 5), (1, 3, 32, 16)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert torch.equal(net(x), pointwise(x))


def test_pad_to_multiple_runs_a_unet_at_any_size_and_is_exact_at_multiples():
    unet = UNetGenerator(ngf=8, num_downs=5).eval()
    net = PadToMultiple(unet, unet.size_multiple).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 45, 70)).shape == (2, 3, 45, 70)
        x = torch.randn(2, 3, 64, 32)
        assert torch.equal(net(x), unet(x))


def test_build_generator_from_json_arguments():
    args = {"in_channels": 3, "out_channels": 3, "ngf": 8, "num_downs": 5, "norm": "instance", "dropout": 0.0}
    net = build_generator("UNetGenerator", args)
    assert isinstance(net, UNetGenerator) and net.size_multiple == 32 and _dropouts(net) == 0
    with pytest.raises(ValueError, match="unknown generator class"):
        build_generator("Pickle", {})
    with pytest.raises(ValueError, match="bad constructor arguments"):
        build_generator("UNetGenerator", {"ngf": 8, "nonsense": 1})


def test_unet_rejects_bad_depth_arguments():
    with pytest.raises(ValueError, match="power of two"):
        UNetGenerator(image_size=96)
    with pytest.raises(ValueError, match="num_downs"):
        UNetGenerator(num_downs=1)
    with pytest.raises(ValueError, match="unknown norm"):
        UNetGenerator(image_size=32, norm="group")


@pytest.mark.parametrize(("size", "side"), [(256, 30), (128, 14), (64, 6)])
def test_patch_discriminator_map_size(size, side):
    net = PatchDiscriminator(ndf=8).eval()
    with torch.no_grad():
        logits = net(torch.randn(1, 6, size, size))
    assert logits.shape == (1, 1, side, side)


def test_receptive_field():
    assert receptive_field(3) == 70 == PatchDiscriminator().receptive_field
    assert [receptive_field(n) for n in (1, 2, 4)] == [16, 34, 142]


def test_receptive_field_matches_input_gradient_extent():
    # One logit of the default 70x70 PatchGAN must depend on exactly a 70x70 patch of its input.
    torch.manual_seed(0)
    net = PatchDiscriminator(in_channels=3, ndf=8).eval()  # eval: batch statistics would couple all pixels
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    net(x)[0, 0, 7, 7].backward()
    rows, cols = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero(as_tuple=True)
    assert rows.max() - rows.min() + 1 == cols.max() - cols.min() + 1 == receptive_field(3)


# ------------------------------------------------------------------------------------------------- init


def test_init_weights_is_canonical_normal_002(unet256):
    convs = [m for m in unet256.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    big = max(convs, key=lambda m: m.weight.numel())
    assert big.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert big.weight.mean().abs().item() < 1e-3
    assert all(torch.all(m.bias == 0) for m in convs if m.bias is not None)
    gains = torch.cat([m.weight.detach() for m in unet256.modules() if isinstance(m, nn.BatchNorm2d)])
    shifts = torch.cat([m.bias.detach() for m in unet256.modules() if isinstance(m, nn.BatchNorm2d)])
    assert gains.mean().item() == pytest.approx(1.0, abs=3e-3)
    assert gains.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.all(shifts == 0)


def test_init_weights_gain_and_return_value():
    net = nn.Sequential(nn.Conv2d(64, 64, 4), nn.BatchNorm2d(64))
    assert init_weights(net, gain=0.1) is net
    assert net[0].weight.std().item() == pytest.approx(0.1, rel=0.05)
    d = PatchDiscriminator(ndf=8)
    assert d.model.logits.weight.std().item() == pytest.approx(0.02, rel=0.2)


# ------------------------------------------------------------------------------------ training behaviour


def _small_pair(norm: str) -> tuple[UNetGenerator, PatchDiscriminator]:
    torch.manual_seed(0)
    return UNetGenerator(ngf=8, num_downs=6, norm=norm), PatchDiscriminator(in_channels=6, ndf=8, norm=norm)


def _pix2pix_step(g: nn.Module, d: nn.Module, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fake = g(condition)
    logits = d(torch.cat([condition, fake], dim=1))
    # Squares and a fixed random mix, not a plain mean: a mean right after a batch norm has zero gradient.
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    return fake, (logits.float().square() * weights).sum() + fake.float().square().mean()


@pytest.mark.parametrize("norm", NORMS)
def test_every_parameter_gets_a_gradient(norm):
    # An unused parameter hangs DistributedDataParallel (or forces find_unused_parameters=True).
    g, d = _small_pair(norm)
    g.train(), d.train()
    _, loss = _pix2pix_step(g, d, torch.randn(2, 3, 64, 64))
    loss.backward()
    for net in (g, d):
        for name, p in net.named_parameters():
            assert p.grad is not None, f"{type(net).__name__}.{name} got no gradient"
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{type(net).__name__}.{name}"


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_channels_last_matches_contiguous(norm):
    g, d = _small_pair(norm)
    g.eval(), d.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fake, logits = g(x), d(torch.cat([x, g(x)], dim=1))
        g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        fake_cl = g(x_cl)
        logits_cl = d(torch.cat([x_cl, fake_cl], dim=1))
    torch.testing.assert_close(fake_cl, fake, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits_cl, logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_bf16_autocast_channels_last_forward_backward(norm):
    g, d = _small_pair(norm)
    g.train(), d.train()
    g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake, loss = _pix2pix_step(g, d, x)
    assert fake.dtype == torch.bfloat16  # autocast really ran the convolutions in bf16
    assert fake.shape == (2, 3, 64, 64) and torch.isfinite(fake).all()
    assert torch.isfinite(loss)
    loss.backward()
    for net in (g, d):
        for name, p in net.named_parameters():
            assert p.dtype == torch.float32, name  # master weights stay float32
            assert p.grad is not None and p.grad.dtype == torch.float32, name
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_dcgan_generator_matches_the_reference_parameter_count_and_shapes():
    g = DCGANGenerator()  # nz 100, ngf 64, 64 px
    assert count_parameters(g) == 3_576_704
    names = [name for name, _ in g.blocks.named_children()]
    assert names == ["project", "up1", "up2", "up3", "to_rgb"]
    assert [b.conv.out_channels for b in g.blocks] == [512, 256, 128, 64, 3]
    out = g(torch.randn(2, 100))
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1
    assert DCGANGenerator(latent_dim=16, ngf=8, size=32)(torch.randn(3, 16, 1, 1)).shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="power of two"):
        DCGANGenerator(size=48)


# ------------------------------------------------------------------------------- CycleGAN ResNet generator


@pytest.mark.parametrize(("kwargs", "expected"), [
    (dict(n_blocks=6), 7_837_699),  # ../shared/REFERENCE.md, CycleGAN: instance norm, ngf 64, RGB -> RGB
    (dict(n_blocks=9), 11_378_179),
    (dict(n_blocks=15, ngf=128), 73_782_275),  # REFERENCE.md: CycleGANime's served generator
])
def test_resnet_generator_parameter_counts(kwargs, expected):
    net = _on_meta(ResNetGenerator, in_channels=3, out_channels=3, norm="instance", **kwargs)
    assert count_parameters(net) == expected == junyanz_resnet_count(**kwargs)


def test_resnet_generator_blocks_follow_the_paper():
    # c7s1-64, d128, d256, R256 x 9, u128, u64, c7s1-3; every convolution has a bias with instance norm.
    net = _on_meta(ResNetGenerator)
    names = [name for name, _ in net.model.named_children()]
    assert names == ["c7s1", "d1", "d2", *[f"r{k}" for k in range(1, 10)], "u1", "u2", "out"]
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [c.out_channels for c in convs] == [64, 128, 256, *[256] * 18, 128, 64, 3]
    assert all(c.bias is not None for c in convs)
    assert [c.kernel_size for c in (convs[0], convs[1], convs[-2], convs[-1])] == [(7, 7), (3, 3), (3, 3), (7, 7)]
    assert convs[-2].output_padding == (1, 1) and convs[1].stride == (2, 2)
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in net.modules()) == 2 + 2 * 9
    # Batch norm makes the biases redundant, except the output convolution's.
    batch = _on_meta(ResNetGenerator, norm="batch", n_blocks=2)
    biased = [c.bias is not None for c in batch.modules() if isinstance(c, (nn.Conv2d, nn.ConvTranspose2d))]
    assert biased == [False] * (len(biased) - 1) + [True]


def test_resnet_generator_avatar_variant_is_narrow_and_the_same_class():
    # Tsinghua avatars: 2 downs + 4 residual blocks + 2 ups; other depths change the size multiple.
    net = _on_meta(ResNetGenerator, ngf=32, n_blocks=4, n_downs=2)
    assert [name for name, _ in net.model.named_children()] == ["c7s1", "d1", "d2", "r1", "r2", "r3", "r4",
                                                                 "u1", "u2", "out"]
    assert net.size_multiple == 4
    deep = _on_meta(ResNetGenerator, ngf=8, n_blocks=1, n_downs=3)
    assert deep.size_multiple == 8 and deep.model.r1.block.conv1.in_channels == 64


@pytest.mark.parametrize("size", [(32, 32), (36, 36), (40, 24), (8, 12)])
def test_resnet_generator_maps_any_multiple_of_4_to_itself(size):
    torch.manual_seed(0)
    net = ResNetGenerator(ngf=8, n_blocks=2).eval()
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, *size)
    assert torch.isfinite(y).all() and y.abs().max() <= 1 and y.std() > 0


@pytest.mark.parametrize(("shape", "match"), [((1, 3, 34, 32), "divisible by 2\\*\\*2 = 4"),
                                              ((1, 3, 4, 32), ">= 8")])
def test_resnet_generator_rejects_sizes_it_cannot_map(shape, match):
    net = ResNetGenerator(ngf=8, n_blocks=1)
    with pytest.raises(ValueError, match=match):
        net(torch.randn(shape))


def test_resnet_generator_residual_blocks_add_their_input():
    # A residual block whose second convolution is zeroed is the identity (x + 0).
    net = ResNetGenerator(ngf=8, n_blocks=1, norm="none")
    block = net.model.r1
    nn.init.zeros_(block.block.conv2.weight), nn.init.zeros_(block.block.conv2.bias)
    x = torch.randn(2, 32, 5, 7)
    with torch.no_grad():
        assert torch.equal(block(x), x)


def test_resnet_generator_dropout_and_arguments():
    assert _dropouts(_on_meta(ResNetGenerator, n_blocks=3)) == 0
    assert _dropouts(_on_meta(ResNetGenerator, n_blocks=3, dropout=0.5)) == 3
    with pytest.raises(ValueError, match="n_blocks"):
        ResNetGenerator(n_blocks=-1)
    with pytest.raises(ValueError, match="unknown norm"):
        ResNetGenerator(ngf=8, n_blocks=1, norm="group")


@pytest.mark.parametrize(("norm", "dropout"), [("instance", 0.0), ("batch", 0.5)])
def test_resnet_generator_loads_canonical_weights_and_matches_canonical(norm, dropout):
    canonical = junyanz.randomised(junyanz.ResnetGenerator(3, 3, 8, junyanz.norm_layer(norm), bool(dropout), 3))
    canonical_sd = canonical.state_dict()
    net = ResNetGenerator(ngf=8, n_blocks=3, norm=norm, dropout=dropout)
    assert count_parameters(net) == count_parameters(canonical)
    assert sorted(net.canonical_key_map().values()) == sorted(canonical_sd)
    net.load_canonical_state_dict(canonical_sd)
    x = torch.randn(2, 3, 16, 20)
    canonical.eval(), net.eval()  # dropout off; batch norm on the loaded running statistics
    with torch.no_grad():
        assert torch.equal(net(x), canonical(x))
    with pytest.raises(ValueError, match="missing"):
        net.load_canonical_state_dict({k: v for k, v in canonical_sd.items() if k != "model.1.weight"})


@pytest.mark.parametrize(("norm", "num_downs"), [("batch", 6), ("instance", 5)])
def test_unet_generator_loads_canonical_weights_and_matches_canonical(norm, num_downs):
    canonical = junyanz.randomised(junyanz.UnetGenerator(3, 2, num_downs, 8, junyanz.norm_layer(norm), True))
    canonical_sd = canonical.state_dict()
    net = UNetGenerator(3, 2, ngf=8, num_downs=num_downs, norm=norm)
    assert count_parameters(net) == count_parameters(canonical)
    assert sorted(net.canonical_key_map().values()) == sorted(canonical_sd)
    net.load_canonical_state_dict(canonical_sd)
    x = torch.randn(2, 3, 2**num_downs, 2 * 2**num_downs)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), canonical(x))
    with pytest.raises(ValueError, match=r"missing \['model.model.0.weight'\]"):
        net.load_canonical_state_dict({k: v for k, v in canonical_sd.items() if k != "model.model.0.weight"})
    with pytest.raises(ValueError, match="model.model.3.weight has shape"):
        net.load_canonical_state_dict({**canonical_sd, "model.model.3.weight": torch.zeros(16, 3, 4, 4)})


def test_resnet_generator_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = ResNetGenerator(ngf=8, n_blocks=2).train()
    y = net(torch.randn(2, 3, 16, 16))
    (y.square() * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_build_generator_builds_a_resnet_generator_from_json_arguments():
    args = {"in_channels": 3, "out_channels": 3, "ngf": 8, "n_blocks": 4, "norm": "instance", "dropout": 0.0,
            "n_downs": 2}
    net = build_generator("ResNetGenerator", args)
    assert isinstance(net, ResNetGenerator) and net.size_multiple == 4 and net.n_blocks == 4
    torch.manual_seed(0)
    twin = build_generator("ResNetGenerator", args)
    twin.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, 12, 16)
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), net.eval()(x))
    with pytest.raises(ValueError, match="bad constructor arguments"):
        build_generator("ResNetGenerator", {"ngf": 8, "num_downs": 2})
