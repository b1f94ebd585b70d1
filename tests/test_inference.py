"""inference.Generator, what the Serve replicas run, without Ray: sizes, batching, seeded noise grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from serving import dcgan_spec, make_packages, random_image

from ray_ganime import export, inference, transforms
from ray_ganime.nets import PadToMultiple, build_generator


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    names = make_packages(str(store))
    return {key: inference.Generator.load(str(store / "models" / name), "cpu") for key, name in names.items()}


def test_translate_keeps_every_size_and_batching_does_not_change_answers(generators):
    g = generators["image_a"]
    inputs = [random_image(32, 32, 0), random_image(17, 45, 1), random_image(32, 32, 2), random_image(64, 33, 3)]
    together = g.translate(inputs)
    alone = [g.translate([image])[0] for image in inputs]
    for image, a, b in zip(inputs, together, alone):
        assert a.shape == image.shape and a.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert not np.array_equal(together[0], together[2])


def test_translate_in_float32_matches_the_package_network_at_its_native_size(generators):
    g = generators["image_b"]
    g32 = inference.Generator(g.model, g.meta, g.device, precision="float32")
    image = random_image(32, 32, 5)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        expected = ((g.model.net(x)[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).round().byte().numpy()
    got = g32.translate([image])[0]
    assert g32.precision == "float32"
    # channels-last convolutions add in another order: a pixel may round the other way
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_bfloat16_answers_stay_within_a_few_levels_of_float32(generators):
    g = generators["image_a"]
    g32, g16 = (inference.Generator(g.model, g.meta, g.device, precision=p) for p in ("float32", "bfloat16"))
    inputs = [random_image(64, 64, seed) for seed in range(4)]
    diff = np.abs(np.stack(g16.translate(inputs)).astype(int) - np.stack(g32.translate(inputs)).astype(int))
    assert g16.precision == "bfloat16" and 0 < diff.mean() < 0.5 and diff.max() <= 3, (diff.mean(), diff.max())
    noise = generators["noise"]
    grid32, grid16 = (inference.Generator(noise.model, noise.meta, noise.device, precision=p).sample(3, 4)
                      for p in ("float32", "bfloat16"))
    assert np.abs(grid16.astype(int) - grid32.astype(int)).mean() < 0.5


def test_auto_precision_is_bfloat16_only_with_bf16_matrix_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert inference.pick_precision("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert inference.pick_precision("auto", cpu) == torch.float32
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch that dropped the private probe
    assert inference.pick_precision("auto", cpu) == torch.float32
    assert inference.pick_precision("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="float16"):
        inference.pick_precision("float16", cpu)


def test_noise_latents_are_seeded_prefix_stable_and_truncated(generators):
    g = generators["noise"]
    assert torch.equal(g.latents(3, 4), g.latents(3, 4))
    assert torch.equal(g.latents(3, 5)[:4], g.latents(3, 4))  # n = 5 starts with the n = 4 grid
    assert not torch.equal(g.latents(3, 4), g.latents(4, 4))
    assert g.latents(3, 64, truncation=0.5).abs().max() <= 0.5
    assert g.latents(3, 64).abs().max() > 0.5


def test_sample_tiles_n_images_in_rows_of_ceil_sqrt_n(generators):
    g = generators["noise"]
    assert g.sample(0, 1).shape == (36, 36, 3)  # 32 px + 2 px around
    assert g.sample(0, 5).shape == (2 * 34 + 2, 3 * 34 + 2, 3)
    assert g.sample(0, 9).shape == (3 * 34 + 2, 3 * 34 + 2, 3)
    assert not np.array_equal(g.sample(0, 2), g.sample(1, 2))


def test_each_kind_refuses_the_other_kind_of_request(generators):
    with pytest.raises(ValueError, match="seed"):
        generators["noise"].translate([random_image(8, 8, 0)])
    with pytest.raises(ValueError, match="image"):
        generators["image_a"].sample(0, 1)


def test_fit_max_side_keeps_the_aspect_ratio():
    image = random_image(200, 300, 0)
    assert transforms.fit_max_side(image, 64).shape == (43, 64, 3)
    assert transforms.fit_max_side(image, None) is image
    assert transforms.fit_max_side(image, 500) is image


def test_noise_packages_load_without_padding_and_refuse_onnx(tmp_path, generators):
    assert not isinstance(generators["noise"].model, PadToMultiple)
    assert isinstance(generators["image_a"].model, PadToMultiple)
    net = build_generator(dcgan_spec()["class"], dcgan_spec()["args"])
    with pytest.raises(export.PackageError, match="ONNX"):
        export.write_package(net, dcgan_spec(), "x", str(tmp_path), recipe="dcgan", onnx=True)


def test_a_package_trained_on_line_art_gets_its_uploads_normalised_first(tmp_path):
    from serving import seeded_net, unet_spec

    spec = unet_spec()
    spec["input"] = {**spec["input"], "preprocess": {"view": "lineart", "lineart_target": 185.0}}
    uri = export.write_package(seeded_net(spec, 4), spec, "lines", str(tmp_path), recipe="cyclegan")
    g = inference.Generator.load(uri, "cpu", precision="float32")
    plain = inference.Generator(g.model, {**g.meta, "input": unet_spec()["input"]}, g.device, precision="float32")
    image = random_image(32, 48, 6)
    prepared = transforms.normalize_lineart(image, target=185.0)
    assert np.array_equal(g.prepare(image), prepared) and np.array_equal(plain.prepare(image), image)

    x = transforms.to_tensor(prepared[None])
    with torch.no_grad():
        expected = transforms.to_uint8(g.model(x))[0]
    got = g.translate([image])[0]
    assert got.shape == image.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # channels-last order of additions
    # The generator saw the normalised image, not the upload.
    assert np.abs(got.astype(int) - plain.translate([image])[0].astype(int)).mean() > 5


def test_device_side_conversions_are_bitwise_those_of_transforms(generators):
    # translate converts on the generator's device (uint8 over the bus); the values must be the host's.
    g = generators["image_a"]
    batch = np.stack([random_image(19, 23, seed) for seed in range(3)])
    x = g._to_input(batch)
    expected = transforms.to_tensor(batch, channels_last_memory=True)
    assert x.device == g.device and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x.cpu(), expected)
    y = torch.linspace(-1.2, 1.2, 3 * 19 * 23 * 3).reshape(3, 3, 19, 23).to(g.device)
    assert np.array_equal(transforms.to_uint8(y), transforms.to_uint8(y.cpu().numpy()))
    assert np.array_equal(transforms.to_uint8(y.to(torch.bfloat16)), transforms.to_uint8(y.to(torch.bfloat16).cpu()))


def test_tiny_images_are_padded_up_not_refused(tmp_path):
    """A ResNet (CycleGAN) generator needs 8 px at least, AnimeGANv2's reflect paddings a few: smaller uploads are
    padded up to MIN_SIDE and cropped back, as large ones are padded to a multiple (no 500 for a 4 x 4 icon)."""
    from ray_ganime.nets import AnimeGANv2Generator, ResNetGenerator
    from ray_ganime.recipes.base import image_side

    nets = {"resnet": (ResNetGenerator(ngf=8, n_blocks=2), {"ngf": 8, "n_blocks": 2}, "ResNetGenerator", 4),
            "animegan2": (AnimeGANv2Generator(), {}, "AnimeGANv2Generator", 1)}
    for name, (net, args, cls, multiple) in nets.items():
        spec = {"class": cls, "args": args, "kind": export.IMAGE_TO_IMAGE, "input": image_side("A"),
                "output": image_side("B"), "native_size": 32, "size_multiple": multiple}
        export.write_package(net.eval(), spec, name, str(tmp_path), recipe="test")
        g = inference.Generator.load(str(tmp_path / "models" / name), "cpu", precision="float32")
        for size in [(4, 4), (1, 1), (3, 50), (31, 7)]:
            out, = g.translate([random_image(*size)])
            assert out.shape == (*size, 3), (name, size)
        image = random_image(inference.MIN_SIDE, 40)  # big enough: not padded, as before
        with torch.no_grad():
            expected = transforms.to_uint8(g.model(transforms.to_tensor(image[None])))[0]
        assert np.abs(g.translate([image])[0].astype(int) - expected.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="needs H and W >= 8"):
        nets["resnet"][0](torch.zeros(1, 3, 4, 4))  # what the padding spares the server
