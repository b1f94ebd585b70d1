"""Model packages: export -> load gives bitwise the checkpoint's generator; ONNX matches PyTorch at odd
sizes; a tampered, incomplete or existing package is handled loudly; local and S3 stores; the CLI.

No Ray here: checkpoints come from ``train.save_checkpoint`` on a tiny Pix2Pix (ngf 8, 32 px) after one
real training step (so that batch-norm statistics are not their initial values). The one ONNX export
(~10 s) is shared by a module fixture.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ray_ganime import checkpoints, export, storage, train
from ray_ganime.cli import main
from ray_ganime.config import load_config
from ray_ganime.recipes import recipe_class

SIZE = 32
VALIDATION = {"val_ssim": 0.4321, "val_l1": 0.2468, "val_fid": 123.4, "val_fid_backbone": "pt_inception-test",
              "val_split": "test", "val_images": 16}
BACKBONE = {"name": "pt_inception-2015-12-05-6726825d.pth", "sha256": "6726825d" + "0" * 56,
            "random_init": False, "source": "test"}


def _checkpoint(folder: Path) -> Path:
    cfg = load_config(None, ["model.ngf=8", "model.ndf=8", f"data.load_size={SIZE + 4}", f"data.crop_size={SIZE}"])
    torch.manual_seed(0)
    recipe = recipe_class("pix2pix")(cfg, "cpu")
    g = torch.Generator().manual_seed(1)
    recipe.train_step({k: torch.rand(4, 3, SIZE, SIZE, generator=g) * 2 - 1 for k in ("sketch", "color")})
    folder.mkdir(parents=True)
    train.save_checkpoint(folder, recipe, cfg, epoch=3, global_step=12,
                          metrics={"epoch": 3, "loss_G": 1.5, **VALIDATION})
    return folder


def _write_evaluation(out_uri: str, checkpoint: str) -> None:
    from ray_ganime import evaluate  # its report writer; nothing here starts Ray

    result = {"ssim": 0.5555, "ssim_std": 0.1, "fid": 77.7, "num_images": 8, "fid_backbone": BACKBONE,
              "split": "test", "samples": []}
    evaluate.write_report(result, out_uri, "pix2pix", extra={"checkpoint": checkpoint, "epoch": 3})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A checkpoint with validation metrics, and an evaluation report beside it (as `ganime evaluate`)."""
    ckpt = str(_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_epoch_0003"))
    _write_evaluation(ckpt + "_eval", ckpt)
    return ckpt


@pytest.fixture(scope="module")
def package(checkpoint, tmp_path_factory) -> str:
    return export.export_package(checkpoint, "tiny-pix2pix", str(tmp_path_factory.mktemp("store")), onnx=True)


def _images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------- round trip


def test_package_gives_bitwise_the_checkpoint_generator(checkpoint, package):
    reference, _ = checkpoints.load_generator(checkpoint)
    model, meta = export.load_package(package)
    assert not model.training and meta["uri"] == package
    x = _images(3, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        # Any size: 45x70 is no multiple of 32, which the raw U-Net refuses.
        odd = model(_images(2, 3, 45, 70, seed=1))
        with pytest.raises(ValueError, match="divisible"):
            reference(_images(2, 3, 45, 70, seed=1))
    assert odd.shape == (2, 3, 45, 70) and odd.abs().max() <= 1


def test_model_json_describes_the_package(checkpoint, package):
    meta = json.loads(Path(package, "model.json").read_text())
    weights = Path(package, meta["weights"]["file"]).read_bytes()
    assert meta["format"] == export.FORMAT and meta["format_version"] == export.FORMAT_VERSION
    assert meta["name"] == "tiny-pix2pix" and meta["recipe"] == "pix2pix" and meta["kind"] == "image-to-image"
    assert meta["weights"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert meta["network"] == {"class": "UNetGenerator", "args": {"in_channels": 3, "out_channels": 3, "ngf": 8,
                                                                  "num_downs": 5, "norm": "batch", "dropout": 0.5}}
    assert meta["native_size"] == SIZE and meta["size_multiple"] == 2**5
    assert meta["input"]["channels"] == meta["output"]["channels"] == 3
    assert meta["input"]["value_range"] == meta["output"]["value_range"] == [-1.0, 1.0]
    assert meta["source_checkpoint"] == checkpoint
    assert meta["training"]["epoch"] == 3 and meta["training"]["global_step"] == 12
    assert meta["training"]["config"]["data"]["crop_size"] == SIZE
    assert meta["metrics"]["validation"] == VALIDATION  # every val_* key, nothing else (no loss_G)
    evaluation = meta["metrics"]["evaluation"]
    assert evaluation["fid"] == 77.7 and evaluation["ssim"] == 0.5555
    assert evaluation["fid_backbone"]["name"] == BACKBONE["name"] and evaluation["checkpoint"] == checkpoint
    assert meta["created"].endswith("+00:00") and meta["ray_ganime_version"]


def test_onnx_matches_pytorch_on_an_odd_size(package):
    import onnxruntime

    meta = export.package_meta(package)
    data = Path(package, meta["onnx"]["file"]).read_bytes()
    assert meta["onnx"]["sha256"] == hashlib.sha256(data).hexdigest() and meta["onnx"]["opset"] >= 17
    model, _ = export.load_package(package)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 45, 70), (1, 3, 7, 5)]:
        x = _images(*shape, seed=2)
        got = session.run(None, {meta["onnx"]["input"]: x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()
        assert got.shape == shape
        assert np.abs(got - expected).max() <= 1e-4


def test_loading_needs_neither_ray_nor_training_code(package, checkpoint, tmp_path):
    # A fresh interpreter: export (recipes allowed) must not pull in Ray; loading not even the recipes.
    code = textwrap.dedent(f"""
        import sys, torch
        from ray_ganime import export
        model, meta = export.load_package({package!r})
        assert model(torch.zeros(1, 3, 9, 11)).shape == (1, 3, 9, 11)
        loaded = {{m for m in sys.modules if m == "ray" or m.startswith(("ray.", "ray_ganime.recipes",
                                                                         "ray_ganime.train", "ray_ganime.data"))}}
        assert not loaded, loaded
        export.export_package({checkpoint!r}, "again", {str(tmp_path)!r})
        assert "ray" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------------- integrity, listing


def test_tampered_weights_are_refused(package, tmp_path):
    copy = tmp_path / "models" / "tampered"
    shutil.copytree(package, copy)
    weights = copy / "generator.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(export.PackageError, match="sha256 .* does not match"):
        export.load_package(str(copy))


def test_incomplete_package_is_neither_listed_nor_loaded(package, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(package, store / "models" / "complete")
    shutil.copytree(package, store / "models" / "half-written")
    (store / "models" / "half-written" / "model.json").unlink()
    assert [m["uri"] for m in export.list_packages(str(store))] == [str(store / "models" / "complete")]
    with pytest.raises(FileNotFoundError, match="not a model package"):
        export.load_package(str(store / "models" / "half-written"))
    assert export.list_packages(str(tmp_path / "nothing-here")) == []


def test_existing_package_is_replaced_only_when_asked(checkpoint, package, tmp_path):
    store = str(tmp_path / "store")
    shutil.copytree(package, Path(store, "models", "m"))  # has generator.onnx
    before = Path(store, "models", "m", "model.json").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_package(checkpoint, "m", store)
    assert Path(store, "models", "m", "model.json").read_bytes() == before
    uri = export.export_package(checkpoint, "m", store, overwrite=True)
    assert export.package_meta(uri)["onnx"] is None
    assert sorted(p.name for p in Path(uri).iterdir()) == ["generator.safetensors", "model.json"]  # no stale ONNX


def test_onnx_without_the_export_extra_says_what_to_install(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # how Python marks a module as not importable
    with pytest.raises(export.PackageError, match=r"onnxruntime: pip install 'ray-ganime\[export\]'"):
        export.export_package(checkpoint, "m", str(tmp_path), onnx=True)
    assert not (tmp_path / "models").exists()  # refused before anything was written


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "x" * 129, "sp ace"])
def test_bad_package_names_are_refused(checkpoint, tmp_path, name):
    with pytest.raises(export.PackageError, match="invalid model name"):
        export.export_package(checkpoint, name, str(tmp_path))
    assert not (tmp_path / "models").exists()


def test_evaluation_of_the_run_counts_only_when_it_names_this_checkpoint(tmp_path):
    run = tmp_path / "run"
    older, newer = (str(_checkpoint(run / f"checkpoint_epoch_000{e}")) for e in (1, 2))
    _write_evaluation(str(run / "eval"), newer)  # as `ganime train --evaluate` does for its last checkpoint
    assert export.find_evaluation(older) is None
    assert export.find_evaluation(newer)["report"] == str(run / "eval" / "metrics.json")
    with pytest.warns(UserWarning, match="without its FID backbone id"):
        uri = export.export_package(older, "older", str(tmp_path / "store"), evaluation={"fid": 1.0, "ssim": 0.9})
    metrics = export.package_meta(uri)["metrics"]
    assert metrics["evaluation"] == {"ssim": 0.9}  # an FID that does not say which Inception made it is dropped


# ------------------------------------------------------------------------------------------------ S3


@pytest.mark.s3
def test_s3_round_trip(checkpoint, s3_bucket):
    remote_ckpt = f"{s3_bucket}/runs/r/checkpoint_epoch_0003"
    storage.upload(checkpoint, remote_ckpt)
    storage.upload(checkpoint + "_eval", remote_ckpt + "_eval")
    store = f"{s3_bucket}/ganime"
    uri = export.export_package(remote_ckpt, "on-s3", store)
    assert uri == f"{store}/models/on-s3"
    [listed] = export.list_packages(store)
    assert listed["uri"] == uri and listed["source_checkpoint"] == remote_ckpt
    assert listed["metrics"]["evaluation"]["fid_backbone"]["name"] == BACKBONE["name"]
    model, _ = export.load_package(uri)
    reference, _ = checkpoints.load_generator(checkpoint)
    x = _images(2, 3, SIZE, SIZE, seed=3)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_export_then_models_lists_it(checkpoint, tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["models", "--store", store]) == 0
    assert f"no model packages in {store}/models" in capsys.readouterr().out
    assert main(["export", checkpoint, "--name", "x", "--dest", store]) == 0
    out = capsys.readouterr().out
    assert f"{store}/models/x" in out and "val SSIM 0.4321" in out
    assert main(["models", "--store", store]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("x "))
    for text in ("pix2pix", "val SSIM 0.4321", "val FID 123.4 [pt_inception-test]", "eval FID 77.7",
                 BACKBONE["name"], "eval SSIM 0.5555"):
        assert text in row


def test_cli_export_of_a_folder_that_is_no_checkpoint(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--name", "x", "--dest", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ganime: error:") and "not a ray-ganime checkpoint" in err
    assert not (tmp_path / "store").exists()


# ----------------------------------------------------------------------------- several generators (CycleGAN)


def _cyclegan_checkpoint(folder: Path, *overrides: str) -> str:
    cfg = load_config(None, ["recipe=cyclegan", "model.ngf=8", "model.ndf=8", "model.n_blocks=2",
                             f"data.load_size={SIZE}", f"data.crop_size={SIZE}", *overrides])
    torch.manual_seed(0)
    recipe = recipe_class("cyclegan")(cfg, "cpu")
    recipe.train_step(recipe.example_batch(2, seed=1))  # weights that are no longer their initial values
    folder.mkdir(parents=True)
    train.save_checkpoint(folder, recipe, cfg, epoch=2, global_step=2,
                          metrics={"epoch": 2, "val_fid_a2b": 11.0, "val_fid_b2a": 13.0, "val_fid": 12.0,
                                   "val_cycle_l1": 0.3, "val_fid_backbone": "pt_inception-test"})
    return str(folder)


@pytest.fixture(scope="module")
def cyclegan(tmp_path_factory) -> str:
    """A CycleGAN checkpoint with an evaluation report per direction beside it (as `ganime evaluate`)."""
    from ray_ganime import evaluate

    ckpt = _cyclegan_checkpoint(tmp_path_factory.mktemp("cycle") / "checkpoint_epoch_0002")
    results = {d: {"fid": fid, "num_images": 8, "num_real": 9, "fid_backbone": BACKBONE, "split": "test",
                   "source": s, "target": t, "samples": [], "model": f"CycleGAN {d}"}
               for d, fid, s, t in (("a2b", 21.0, "A", "B"), ("b2a", 23.0, "B", "A"))}
    evaluate.write_reports(results, ckpt + "_eval", extra={"checkpoint": ckpt, "epoch": 2})
    return ckpt


def test_each_direction_is_its_own_package_with_bitwise_its_generator(cyclegan, tmp_path):
    uris = export.export_packages(cyclegan, "cycle", str(tmp_path))
    assert uris == {"a2b": str(tmp_path / "models" / "cycle-a2b"), "b2a": str(tmp_path / "models" / "cycle-b2a")}
    recipe = checkpoints.recipe_of(checkpoints.load(cyclegan)[0])
    for direction, (source, target, fid) in {"a2b": ("A", "B", 21.0), "b2a": ("B", "A", 23.0)}.items():
        model, meta = export.load_package(uris[direction])
        assert meta["name"] == f"cycle-{direction}" and meta["direction"] == direction and meta["recipe"] == "cyclegan"
        assert (meta["input"]["column"], meta["output"]["column"]) == (source, target)
        assert "preprocess" not in meta["input"]  # trained on the images as they are
        assert meta["metrics"]["evaluation"]["fid"] == fid  # its own direction's report
        validation = meta["metrics"]["validation"]  # the checkpoint's, every direction's
        assert validation["val_fid_a2b"] == 11.0 and validation["val_cycle_l1"] == 0.3
        x = _images(2, 3, SIZE, SIZE, seed=4)
        with torch.no_grad():
            assert torch.equal(model(x), recipe.generator(direction).eval()(x))
    a2b, _ = export.load_package(uris["a2b"])
    with torch.no_grad():  # two different generators, not one exported twice
        assert not torch.equal(a2b(x), recipe.generator("b2a").eval()(x))


def test_a_chosen_direction_exports_one_package(cyclegan, tmp_path):
    assert export.export_packages(cyclegan, "cycle", str(tmp_path), directions=["b2a"]) == {
        "b2a": str(tmp_path / "models" / "cycle-b2a")}
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["cycle-b2a"]
    uri = export.export_package(cyclegan, "just-a2b", str(tmp_path), direction="a2b")
    assert export.package_meta(uri)["direction"] == "a2b" and uri.endswith("/just-a2b")


def test_unknown_or_missing_directions_are_clear_errors(cyclegan, checkpoint, tmp_path):
    with pytest.raises(export.PackageError, match="no direction 'x2y'; its directions: 'a2b', 'b2a'"):
        export.export_packages(cyclegan, "cycle", str(tmp_path), directions=["x2y"])
    with pytest.raises(export.PackageError, match="several generators .*a2b, b2a.*direction="):
        export.export_package(cyclegan, "cycle", str(tmp_path))
    with pytest.raises(export.PackageError, match="no direction 'a2b'.*one generator"):
        export.export_package(checkpoint, "p", str(tmp_path), direction="a2b")
    assert not (tmp_path / "models").exists()
    # A recipe with one generator: one package, the name as given, direction "".
    assert export.export_packages(checkpoint, "p", str(tmp_path)) == {"": str(tmp_path / "models" / "p")}
    assert export.package_meta(str(tmp_path / "models" / "p"))["direction"] == ""


def test_a_view_trained_generator_records_how_to_prepare_inputs(tmp_path):
    ckpt = _cyclegan_checkpoint(tmp_path / "ckpt", "model.view=lineart", "data.views={image: [lineart]}")
    uri = export.export_package(ckpt, "lines", str(tmp_path / "store"), direction="b2a")
    meta = export.package_meta(uri)
    assert meta["input"]["preprocess"] == {"view": "lineart", "lineart_target": 185.0}
    assert (meta["input"]["column"], meta["output"]["column"]) == ("B_lineart", "A_lineart")
    for preprocess, reason in (({"view": "sepia"}, "input.preprocess.view: unknown view 'sepia'"),
                               ({"view": "lineart", "lineart_target": 300}, "lineart_target"),
                               ({"view": "gray", "resize": 2}, "resize")):
        bad = {**meta, "input": {**meta["input"], "preprocess": preprocess}}
        with pytest.raises(export.PackageError, match=reason):
            export.check_manifest(bad)


def test_cli_exports_every_direction_or_the_one_asked_for(cyclegan, tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["export", cyclegan, "--name", "c", "--dest", store, "--direction", "b2a"]) == 0
    out = capsys.readouterr().out
    assert f"{store}/models/c-b2a" in out and "c-a2b" not in out and "(b2a: B -> A)" in out
    assert "val FID 13 [pt_inception-test]" in out and "eval FID 23" in out  # b2a's own numbers
    assert main(["export", cyclegan, "--name", "c", "--dest", store, "--direction", "sideways"]) == 2
    assert "no direction 'sideways'" in capsys.readouterr().err
    assert main(["export", cyclegan, "--name", "c", "--dest", store, "--overwrite"]) == 0
    assert main(["models", "--store", store]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("c-")}
    assert set(rows) == {"c-a2b", "c-b2a"} and "val FID 11" in rows["c-a2b"] and "eval FID 21" in rows["c-a2b"]
