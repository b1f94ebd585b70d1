"""bench/gpu_check.sh and bench/gpu_step.py degrade to CPU: the Ray-free part at tiny sizes, its table checked.

The GPU figures themselves come from running the script on a CUDA machine; here it must run, write every row the
table promises and compute its ratios from the timings of the same run. Also: the canonical pix2pix nets the
step benchmark compares against have the canonical sizes.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def gpu_step_module():
    spec = importlib.util.spec_from_file_location("gpu_step", ROOT / "bench" / "gpu_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_the_canonical_nets_have_the_canonical_sizes():
    """unet_256 and the basic PatchGAN (6-channel input, batch norm) as junyanz's repository prints them."""
    gs = gpu_step_module()
    with torch.device("meta"):
        assert count(gs.canonical_unet(3, 3, 8, 64)) == 54_413_955
        assert count(gs.canonical_patchgan(6, 64, 3)) == 2_768_705


def test_canonical_step_trains_and_keeps_nchw_float32():
    gs = gpu_step_module()
    torch.manual_seed(0)
    step = gs.CanonicalPix2Pix(32, 8, torch.device("cpu"))
    batch = {k: torch.rand(2, 3, 32, 32) * 2 - 1 for k in ("sketch", "color")}
    before = [p.detach().clone() for p in step.netG.parameters()]
    losses = step.train_step(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, step.netG.parameters()))
    assert step.netG(batch["sketch"]).dtype == torch.float32


def test_gpu_check_quick_on_cpu_writes_the_step_table(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "GPU_CHECK_SITE": str(tmp_path / "no-site.tar.xz"), "GPU_CHECK_BUDGET_S": "240"}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--quick", "--parts", "step"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "summary.tsv") as f:
        rows = {r["figure"]: r for r in csv.DictReader(f, delimiter="\t")}
    assert rows["part step"]["value"].startswith("ok"), (rows["part step"], (tmp_path / "step.log").read_text()[-2000:])

    step = json.loads((tmp_path / "gpu_step.json").read_text())
    ms = {(r["batch"], r["variant"]): r["ms"] for r in step["rows"]}
    for b in (4, 1):
        for variant in ("canonical float32", "ours auto (float32)", "ours bfloat16"):
            value = float(rows[f"step 32 px batch {b} {variant} ms"]["value"])
            assert math.isfinite(value) and value > 0 and value == pytest.approx(ms[b, variant], abs=0.006)
        for variant in ("ours auto (float32)", "ours bfloat16"):
            ratio = float(rows[f"step 32 px batch {b} {variant} / canonical (speed)"]["value"])
            # computed from the same run's timings (the table rounds to 3 decimals)
            assert ratio == pytest.approx(ms[b, "canonical float32"] / ms[b, variant], abs=6e-4)
            assert rows[f"step 32 px batch {b} {variant} MFU"]["value"] == "n/a"  # no peak known for a CPU
    assert rows["step 32 px batch 1 ours auto (float32) / canonical (speed)"]["target"] == ">= 1.0"
    assert float(rows["FID Inception features float32 img/s"]["value"]) > 0
    assert (tmp_path / "summary.md").read_text().startswith("| figure | value | target |")

    flops = {r["variant"]: r["tflop_per_step"] for r in step["rows"] if r["batch"] == 4}
    assert all(f > 0 for f in flops.values())
    # Same nets, same conv work: ours (which adds a TV term) within a few percent of canonical's count.
    assert flops["ours bfloat16"] == pytest.approx(flops["canonical float32"], rel=0.05)


def test_mfu_is_flops_over_time_over_peak():
    """With a peak given, a CPU run rates each step as a GPU run does (and a table name is never needed)."""
    result = gpu_step_module().main(["--device", "cpu", "--size", "32", "--ngf", "8", "--batches", "2",
                                     "--precisions", "float32", "--steps", "1", "--warmup", "2", "--repeats", "1",
                                     "--peak-tflops", "0.001"])
    assert [r["variant"] for r in result["rows"]] == ["canonical float32", "ours float32"]
    for r in result["rows"]:
        assert r["mfu"] == pytest.approx(r["tflop_per_step"] * 1e12 / (r["ms"] / 1000) / 1e9, rel=1e-9)
        assert r["images_per_s"] == pytest.approx(2000 / r["ms"], rel=1e-9)
