"""`ganime import`: checkpoints of other projects become model packages with bitwise their outputs.

animegan2: an animegan2-pytorch checkpoint.

Its released weights cannot be downloaded here, so a seeded random state dict in the port's layout (the same
77 tensor names and shapes, written down below) saved with ``torch.save`` stands in for them. The reference
output is an independent functional forward pass (``reference_forward``: torch.nn.functional on the file's
tensors, as ../shared/REFERENCE.md describes the network), so a module that loads the file but computes
something else fails. Bad files must fail with exit code 2, a message naming the problem, and no package.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import junyanz
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ray_ganime import cli, export, inference, storage
from ray_ganime.nets import AnimeGANv2Generator, count_parameters

# The port's layout (bryandlee/animegan2-pytorch model.py): (key, shape) samples of its 77 entries.
PORT_KEYS = {"block_a.0.1.weight": (32, 3, 7, 7), "block_a.0.2.weight": (32,), "block_a.1.1.weight": (64, 32, 3, 3),
             "block_b.0.1.weight": (128, 64, 3, 3), "block_c.1.layers.0.1.weight": (256, 128, 1, 1),
             "block_c.1.layers.1.1.weight": (256, 1, 3, 3), "block_c.1.layers.1.1.bias": (256,),
             "block_c.1.layers.2.weight": (256, 256, 1, 1), "block_c.1.layers.3.bias": (256,),
             "block_c.4.layers.0.1.weight": (512, 256, 1, 1), "block_c.5.1.weight": (128, 256, 3, 3),
             "block_e.2.1.weight": (32, 64, 7, 7), "out_layer.0.weight": (3, 32, 1, 1)}


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """AnimeGANv2's generator as a function of its state dict: reflect pad -> conv -> GroupNorm(1, C) ->
    LeakyReLU 0.2 blocks (stride-2 ones padded bottom/right), four inverted residual blocks, bilinear resizes."""

    def block(key: str, x: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
        w = state[f"{key}.1.weight"]
        pad = (0, 1, 0, 1) if stride == 2 else (w.shape[-1] // 2,) * 4
        x = F.conv2d(F.pad(x, pad, mode="reflect"), w, state.get(f"{key}.1.bias"), stride=stride, groups=groups)
        return F.leaky_relu(F.group_norm(x, 1, state[f"{key}.2.weight"], state[f"{key}.2.bias"]), 0.2)

    def inverted_residual(key: str, x: torch.Tensor) -> torch.Tensor:
        h = block(f"{key}.layers.0", x)
        h = block(f"{key}.layers.1", h, groups=h.shape[1])
        h = F.conv2d(h, state[f"{key}.layers.2.weight"])
        h = F.group_norm(h, 1, state[f"{key}.layers.3.weight"], state[f"{key}.layers.3.bias"])
        return x + h if h.shape == x.shape else h

    def up(x: torch.Tensor, size) -> torch.Tensor:
        if align_corners:
            return F.interpolate(x, size, mode="bilinear", align_corners=True)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    h = block("block_a.2", block("block_a.1", block("block_a.0", x), stride=2))
    half = h.shape[-2:]
    h = block("block_b.1", block("block_b.0", h, stride=2))
    h = block("block_c.0", h)
    for i in range(1, 5):
        h = inverted_residual(f"block_c.{i}", h)
    h = block("block_d.1", block("block_d.0", up(block("block_c.5", h), half)))
    h = block("block_e.2", block("block_e.1", block("block_e.0", up(h, x.shape[-2:]))))
    return torch.tanh(F.conv2d(h, state["out_layer.0.weight"]))


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    """A seeded random checkpoint in the port's layout; norm gains/shifts and depthwise biases random too."""
    torch.manual_seed(0)
    out = {}
    for name, t in AnimeGANv2Generator().state_dict().items():
        out[name] = (torch.randn_like(t) * 0.1 + (1.0 if name.endswith("weight") else 0.0) if t.dim() == 1
                     else torch.randn_like(t) * (2.0 / t[0].numel()) ** 0.5)
    return out


@pytest.fixture(scope="module")
def checkpoint(state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "face_paint_512_v2.pt"
    torch.save(state, path)
    return path


def _inputs(*size: int) -> torch.Tensor:
    return torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(sum(size))) * 2 - 1


@pytest.mark.parametrize("align_corners,sizes", [(True, [(64, 64), (33, 50)]), (False, [(64, 64), (32, 52)])])
def test_our_generator_loads_the_checkpoint_and_matches_bitwise(checkpoint, align_corners, sizes):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ours = AnimeGANv2Generator(align_corners=align_corners).eval()
    assert len(state) == 77 and count_parameters(ours) == 2_143_552
    assert {k: tuple(state[k].shape) for k in PORT_KEYS} == PORT_KEYS
    ours.load_state_dict(state, strict=True)
    with torch.no_grad():
        for size in sizes:
            x = _inputs(*size)
            expected = reference_forward(state, x, align_corners)
            got = ours(x)
            assert got.shape == x.shape
            assert torch.equal(got, expected)


def test_align_corners_false_refuses_sizes_the_port_would_shrink(checkpoint):
    ours = AnimeGANv2Generator(align_corners=False).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="divisible by 4"):
        ours(_inputs(33, 50))


@pytest.fixture(scope="module")
def imported(checkpoint, tmp_path_factory) -> tuple[str, str]:
    store = str(tmp_path_factory.mktemp("store"))
    assert cli.main(["import", "animegan2", str(checkpoint), "--name", "face-paint", "--store", store]) == 0
    return store, export.package_uri(store, "face-paint")


def test_cli_import_writes_a_package_that_loads_back_bitwise(state, checkpoint, imported):
    store, uri = imported
    model, meta = export.load_package(uri)
    assert meta["network"] == {"class": "AnimeGANv2Generator", "args": {"align_corners": True}}
    assert meta["recipe"] == "animeganv2" and meta["kind"] == export.IMAGE_TO_IMAGE and meta["direction"] == ""
    assert meta["native_size"] == 512 and meta["size_multiple"] == 1
    assert meta["weights"]["parameters"] == 2_143_552
    assert meta["training"] == {"imported_from": storage.join(str(checkpoint)),
                                "source_format": "bryandlee/animegan2-pytorch",
                                "source_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    assert meta["source_checkpoint"] == storage.join(str(checkpoint))
    assert meta["input"]["value_range"] == [-1.0, 1.0] and meta["output"]["column"] == "B"
    ours = AnimeGANv2Generator().eval()
    ours.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    with torch.no_grad():
        for size in [(256, 256), (250, 333)]:
            x = _inputs(*size)
            got = model(x)  # PadToMultiple(…, 1) around the generator: no padding, no crop
            assert got.shape == x.shape
            assert torch.equal(got, ours(x))
            assert torch.equal(got, reference_forward(state, x))
    assert [m["uri"] for m in export.list_packages(store)] == [uri]


def test_cli_import_prints_the_package_uri(checkpoint, tmp_path, capsys):
    assert cli.main(["import", "animegan2", str(checkpoint), "--name", "paprika", "--store", str(tmp_path),
                     "--no-align-corners", "--native-size", "256"]) == 0
    uri = export.package_uri(str(tmp_path), "paprika")
    assert capsys.readouterr().out.splitlines()[0] == uri
    meta = export.package_meta(uri)
    assert meta["network"]["args"] == {"align_corners": False} and meta["size_multiple"] == 4
    # An existing package is replaced only when asked.
    argv = ["import", "animegan2", str(checkpoint), "--name", "paprika", "--store", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite"]) == 0
    assert export.package_meta(uri)["network"]["args"] == {"align_corners": True}


def test_inference_translates_an_image_to_its_size(imported):
    _, uri = imported
    generator = inference.Generator.load(uri, device="cpu", precision="float32")
    image = np.random.default_rng(0).integers(0, 256, (37, 52, 3), dtype=np.uint8)
    out, = generator.translate([image])
    assert out.shape == image.shape and out.dtype == np.uint8


def _bad_files(state, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "out_layer.0.weight"}, "missing keys: out_layer.0.weight"),
        "extra": ({**state, "block_f.0.weight": torch.zeros(1)}, "unexpected keys: block_f.0.weight"),
        "shape": ({**state, "block_a.0.1.weight": torch.zeros(32, 3, 3, 3)}, "mis-shaped: block_a.0.1.weight"),
        "nested": ({"state_dict": state, "epoch": 3}, "not tensors"),
        "list": ([v for v in state.values()], "not a state dict"),
    }
    files = {}
    for name, (obj, message) in cases.items():
        files[name] = (tmp_path / f"{name}.pt", message)
        torch.save(obj, files[name][0])
    files["text"] = (tmp_path / "text.pt", "not a PyTorch checkpoint")
    files["text"][0].write_text("these are not the weights you are looking for")
    return files


def test_bad_checkpoints_exit_2_naming_the_problem_and_write_nothing(state, tmp_path, capsys):
    store = tmp_path / "store"
    for case, (path, message) in _bad_files(state, tmp_path).items():
        assert cli.main(["import", "animegan2", str(path), "--name", case, "--store", str(store)]) == 2, case
        err = capsys.readouterr().err
        assert err.startswith("ganime: error: ") and message in err, (case, err)
        assert not storage.exists(export.package_uri(str(store), case)), case
    assert not (store / "models").exists()


def test_a_missing_file_or_a_bad_name_is_a_clear_error(checkpoint, tmp_path, capsys):
    assert cli.main(["import", "animegan2", str(tmp_path / "nope.pt"), "--name", "x", "--store", str(tmp_path)]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert cli.main(["import", "animegan2", str(checkpoint), "--name", "../x", "--store", str(tmp_path)]) == 2
    assert "invalid model name" in capsys.readouterr().err
    with pytest.raises(export.PackageError, match="multiple of 4"):
        export.import_animegan2(str(checkpoint), "odd", str(tmp_path), align_corners=False, native_size=510)
    assert not (tmp_path / "models").exists()


def test_onnx_export_of_an_imported_package_runs(checkpoint, tmp_path):
    import onnxruntime

    assert cli.main(["import", "animegan2", str(checkpoint), "--name", "onnx", "--store", str(tmp_path), "--onnx"]) == 0
    uri = export.package_uri(str(tmp_path), "onnx")
    model, meta = export.load_package(uri)
    session = onnxruntime.InferenceSession(str(Path(uri, meta["onnx"]["file"])), providers=["CPUExecutionProvider"])
    x = _inputs(40, 56)  # another size than the one it was exported at: the graph is any-size
    got = session.run(None, {meta["onnx"]["input"]: x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() < export.ONNX_TOLERANCE_GROUPNORM
    assert meta["onnx"]["verified"]["tolerance"] == export.ONNX_TOLERANCE_GROUPNORM  # GroupNorm: 1e-3, not 1e-4


# ---------------------------------------------------------------------------------------------- junyanz
# pix2pix / cyclegan: junyanz/pytorch-CycleGAN-and-pix2pix generators. tests/data/junyanz_state_dicts.json is
# what their code's state_dict() holds (key -> shape) for `--netG unet_256 --norm batch` (pix2pix's default)
# and `--netG resnet_9blocks --norm instance` (CycleGAN's); tests/junyanz.py transcribes their modules.

JUNYANZ = json.loads((Path(__file__).parent / "data" / "junyanz_state_dicts.json").read_text())
CANONICAL = {"unet_256": (lambda: junyanz.UnetGenerator(3, 3, 8, 64, junyanz.norm_layer("batch"), True), 54_413_955),
             "resnet_9blocks": (lambda: junyanz.ResnetGenerator(3, 3, 64, junyanz.norm_layer("instance"), False, 9),
                                11_378_179)}


@pytest.fixture(scope="module")
def junyanz_files(tmp_path_factory) -> dict[str, tuple[Path, nn.Module]]:
    folder = tmp_path_factory.mktemp("junyanz")
    files = {}
    for netG, (build, _) in CANONICAL.items():
        net = junyanz.randomised(build())
        files[netG] = (folder / f"{netG}_net_G.pth", net)
        torch.save(net.state_dict(), files[netG][0])
    return files


@pytest.mark.parametrize(("kind", "netG"), [("pix2pix", "unet_256"), ("cyclegan", "resnet_9blocks")])
def test_junyanz_generators_import_with_their_key_names_and_give_their_outputs_bitwise(kind, netG, junyanz_files,
                                                                                      tmp_path):
    path, canonical = junyanz_files[netG]
    state = torch.load(path, weights_only=True)
    assert {k: list(v.shape) for k, v in state.items()} == JUNYANZ[netG]
    assert count_parameters(canonical) == CANONICAL[netG][1]
    assert cli.main(["import", kind, str(path), "--name", kind, "--store", str(tmp_path)]) == 0  # default --netG
    uri = export.package_uri(str(tmp_path), kind)
    model, meta = export.load_package(uri)
    assert meta["recipe"] == kind and meta["weights"]["parameters"] == CANONICAL[netG][1]
    assert meta["native_size"] == 256 and meta["training"]["source_format"] == "junyanz/pytorch-CycleGAN-and-pix2pix"
    x = _inputs(256, 256)[:1]
    with torch.no_grad():
        assert torch.equal(model(x), canonical(x))
    if netG.startswith("resnet"):  # any size: padded to a multiple of 4 and cropped back
        generator = inference.Generator.load(uri, device="cpu", precision="float32")
        out, = generator.translate([np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)])
        assert out.shape == (30, 45, 3)


def test_junyanz_variants_import_too(junyanz_files, tmp_path):
    """A DataParallel ``module.`` prefix; a 1-channel input, ngf 16 and 128 px U-Net read off the file; old
    checkpoints' instance-norm running statistics (dropped on load, as their code does)."""
    _, resnet = junyanz_files["resnet_9blocks"]
    prefixed = {f"module.{k}": v for k, v in resnet.state_dict().items()}
    prefixed["module.model.2.running_mean"] = torch.zeros(64)
    torch.save(prefixed, tmp_path / "dp.pth")
    assert cli.main(["import", "cyclegan", str(tmp_path / "dp.pth"), "--name", "dp", "--store", str(tmp_path)]) == 0
    model, _ = export.load_package(export.package_uri(str(tmp_path), "dp"))
    x = _inputs(64, 64)[:1]
    with torch.no_grad():
        assert torch.equal(model(x), resnet(x))

    narrow = junyanz.randomised(junyanz.UnetGenerator(3, 3, 7, 16, junyanz.norm_layer("instance"), True))
    torch.save(narrow.state_dict(), tmp_path / "narrow.pth")
    assert cli.main(["import", "pix2pix", str(tmp_path / "narrow.pth"), "--name", "narrow", "--netG", "unet_128",
                     "--norm", "instance", "--store", str(tmp_path)]) == 0
    model, meta = export.load_package(export.package_uri(str(tmp_path), "narrow"))
    assert meta["network"]["args"]["ngf"] == 16 and meta["native_size"] == 128
    x = _inputs(128, 256)
    with torch.no_grad():
        assert torch.equal(model(x), narrow(x))

    dropout = junyanz.randomised(junyanz.ResnetGenerator(3, 3, 8, junyanz.norm_layer("batch"), True, 6))
    torch.save(dropout.state_dict(), tmp_path / "dropout.pth")
    assert cli.main(["import", "cyclegan", str(tmp_path / "dropout.pth"), "--name", "dropout", "--netG",
                     "resnet_6blocks", "--norm", "batch", "--store", str(tmp_path)]) == 0
    model, meta = export.load_package(export.package_uri(str(tmp_path), "dropout"))
    assert meta["network"]["args"]["dropout"] == 0.5 and meta["network"]["args"]["ngf"] == 8
    with torch.no_grad():
        assert torch.equal(model(x[:, :, :64, :64]), dropout(x[:, :, :64, :64]))


def test_a_wrong_netG_or_norm_is_a_one_line_error_and_writes_nothing(junyanz_files, tmp_path, capsys):
    unet, _ = junyanz_files["unet_256"]
    resnet, _ = junyanz_files["resnet_9blocks"]
    cases = [(["pix2pix", str(unet), "--netG", "resnet_9blocks"], "not a resnet_9blocks state dict: no model.1.weight"),
             (["pix2pix", str(unet), "--netG", "unet_128"], "unexpected ['model.model.1.model.3.model.3.model.3.mo"),
             (["cyclegan", str(resnet), "--norm", "batch"], "missing ['model.10.conv_block.2.bias'"),
             (["cyclegan", str(resnet), "--netG", "resnet_6blocks"], "unexpected ['model.16.conv_block.1.bias'"),
             (["pix2pix", str(unet), "--netG", "unet_512"], "unknown --netG 'unet_512'"),
             (["animegan2", str(unet)], "missing keys: block_a.0.1.weight"),
             (["animegan2", str(unet), "--netG", "unet_256"], "--netG: for pix2pix and cyclegan"),
             (["cyclegan", str(resnet), "--align-corners"], "--align-corners: for animegan2"),
             (["pix2pix", str(tmp_path / "sketch.pth"), "--netG", "unet_128"], "serving takes and gives RGB"),
             (["pix2pix", str(unet), "--native-size", "100"], "native_size must be a multiple of 256")]
    sketch = junyanz.randomised(junyanz.UnetGenerator(1, 3, 7, 8, junyanz.norm_layer("batch"), True))
    torch.save(sketch.state_dict(), tmp_path / "sketch.pth")  # a 1-channel input: not servable
    for argv, message in cases:
        assert cli.main(["import", *argv, "--name", "x", "--store", str(tmp_path)]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("ganime: error: ") and err.count("\n") == 1 and message in err, (argv, err)
    assert not (tmp_path / "models").exists()


def test_the_ray_job_entry_point_imports(junyanz_files, tmp_path):
    """jobs/import.py is what `ray job submit -- python jobs/import.py ...` runs: the CLI, from the working dir."""
    path, _ = junyanz_files["resnet_9blocks"]
    done = subprocess.run([sys.executable, "jobs/import.py", "cyclegan", str(path), "--name", "job",
                           "--store", str(tmp_path)], cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == export.package_uri(str(tmp_path), "job")
    assert export.package_meta(done.stdout.splitlines()[0])["weights"]["parameters"] == 11_378_179


def test_the_cli_knows_every_import_kind():
    assert cli.IMPORT_KINDS == sorted(export.IMPORT_SOURCES)


def test_models_lists_where_each_package_came_from(imported, capsys):
    store, _ = imported
    assert cli.main(["models", "--store", store]) == 0
    line, = [x for x in capsys.readouterr().out.splitlines() if x.startswith("face-paint")]
    assert "imported from bryandlee/animegan2-pytorch face_paint_512_v2.pt (sha256 " in line
