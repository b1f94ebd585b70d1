"""The `ganime` command as users run it: ingest to S3, inspect, synth, recipes, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ray_ganime import images, shards
from ray_ganime.cli import main


def test_ingest_to_s3_and_inspect_round_trip_bytes(tmp_path, s3_bucket, capsys):
    src = tmp_path / "faces"
    originals = {}
    for label in ("a", "b"):
        (src / label).mkdir(parents=True)
        for i in range(5):
            data = images.encode_png(np.random.default_rng(i + 10 * ord(label)).integers(0, 256, (20, 20, 3), np.uint8))
            (src / label / f"{i}.png").write_bytes(data)
            originals[f"{label}/{i}"] = data
    (src / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    uri = f"{s3_bucket}/datasets/faces"

    assert main(["data", "ingest", "--layout", "folder", str(src), uri]) == 0
    rows = shards.read_rows(uri)
    assert {r["id"]: r["image"] for r in rows} == originals  # bytes round-trip exactly through S3
    assert [s["source"] for s in shards.read_manifest(uri)["skipped"]] == ["a/broken.png"]

    sheet = tmp_path / "sheet.png"
    assert main(["data", "inspect", uri, "--out", str(sheet), "--samples", "6"]) == 0
    out = capsys.readouterr().out
    assert "examples: 10" in out and "train" in out and "a/broken.png" in out
    assert images.decode_rgb(sheet.read_bytes()).ndim == 3


def test_synth_is_deterministic_through_the_cli(tmp_path):
    for kind in ("paired", "unpaired", "faces"):
        for run in ("one", "two"):
            assert main(["data", "synth", "--kind", kind, "--count", "12", "--size", "32", "--seed", "3",
                         "--out", str(tmp_path / f"{kind}-{run}")]) == 0
        one, two = (shards.read_rows(str(tmp_path / f"{kind}-{run}")) for run in ("one", "two"))
        assert len(one) == 12 and one == two
    counts = shards.read_manifest(str(tmp_path / "unpaired-one"))["counts"]
    assert sum(v for k, v in counts.items() if k.endswith("/A")) == 6


def test_recipes_lists_canonical_parameter_counts_generators_and_metrics(capsys):
    assert main(["recipes", "--size", "256"]) == 0
    out = capsys.readouterr().out
    assert "54,413,955" in out and "2,768,705" in out
    lines = out.splitlines()
    # The generators a user serves (one package each) and the objectives a sweep may rank by.
    assert any(line.split()[:2] == ["pix2pix", "(none)"] and "G, sketch -> color (paired)" in line for line in lines)
    assert any(line.split()[:2] == ["cyclegan", "-a2b"] and "G_A, A -> B (unpaired)" in line for line in lines)
    assert any(line.split()[:2] == ["cyclegan", "-b2a"] and "G_B, B -> A (unpaired)" in line for line in lines)
    metrics = {line.split()[0]: line.split(None, 1)[1] for line in lines[lines.index(next(
        line for line in lines if "per-epoch validation metrics" in line)) + 1:]}
    assert metrics["pix2pix"] == "val_ssim, val_l1, val_fid"
    assert metrics["cyclegan"] == ("val_fid_a2b, val_fid_b2a, val_fid, val_cycle_l1_a, val_cycle_l1_b, "
                                   "val_cycle_l1")
    sizes = {tuple(line.split()[:2]): line.split()[2] for line in lines if len(line.split()) == 3}
    assert sizes[("animeganv2", "G")] == "2,143,552" and sizes[("animegan", "G")] == "3,956,096"
    assert sizes[("animeganv2", "D")] == sizes[("animegan", "D")] == "1,128,800"
    assert sizes[("cartoongan", "G")] == "11,120,195" and sizes[("cartoongan", "D")] == "1,128,385"
    assert metrics["animeganv2"] == metrics["cartoongan"] == "val_fid, val_content, val_color"


def test_recipes_with_a_config_that_has_an_init_phase(capsys):
    """The other recipes are listed with their defaults, not with the config's init phase they lack."""
    assert main(["recipes", "--config", str(Path(__file__).parents[1] / "configs" / "cartoongan.yaml"), "--size",
                 "128"]) == 0
    assert "11,120,195" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["recipes", "--set", "data.crop_sise=64"], "crop_sise"),
    (["recipes", "--set", "model.ngf=-1"], "model.ngf"),
    (["data", "inspect", "/nonexistent/data set"], "not a ray-ganime data set"),
])
def test_bad_input_is_one_clear_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ganime: error:") and message in err


def test_a_package_summary_shows_the_recipes_own_validation_measures():
    from ray_ganime.cli import _metrics_summary

    metrics = {"validation": {"val_cycle_l1": 0.29851, "val_cycle_l1_a": 0.25, "val_images": 16,
                              "val_split": "test"}}
    assert _metrics_summary(metrics, "a2b") == "val_cycle_l1 0.2985, val_cycle_l1_a 0.25"
    assert _metrics_summary({}) == "none recorded"


def test_a_package_summary_shows_the_baselines_and_a_model_that_does_not_beat_copying():
    from ray_ganime.cli import _metrics_summary

    evaluation = {"fid": 80.0, "ssim": 0.5, "num_images": 12, "fid_backbone": {"name": "pt_inception"},
                  "baselines": {"copy_input": {"fid": 90.0, "ssim": 0.85}, "mean_image": {"fid": 200.0, "ssim": 0.3},
                                "real_vs_real": {"fid": 20.0, "num_images": 12}, "fid_backbone": {"name": "x"}}}
    assert _metrics_summary({"evaluation": evaluation}) == (
        "eval FID 80 [pt_inception], eval SSIM 0.5000 (12 images), baselines: copy the input FID 90.0 SSIM 0.8500; "
        "the training set's mean image FID 200.0 SSIM 0.3000; real vs real FID 20.0, the model does not beat "
        "copying its input on SSIM")
