"""CycleGAN as a user runs it, through the `ganime` command: synthetic unpaired data -> train with
configs/cyclegan.yaml -> evaluate (FID per direction, labelled as random-init Inception) -> export both
directions -> the session's `ganime serve` answers both (training on 2 workers: DDP in sync, a pool per rank);
and a short real sweep over the cycle weight that exports its best.

Tiny everything (32 px, ngf 8, 2 residual blocks, 3 steps an epoch): this checks the plumbing of two
generators from data to HTTP; tests/test_cyclegan_train.py checks that CycleGAN learns and resumes exactly.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from runs import LOCAL, sets
from servers import REPO
from serving import random_image

from ray_ganime import checkpoints, images, inference, storage
from ray_ganime.cli import main

TINY = ["model.ngf=8", "model.ndf=8", "model.n_blocks=2", "data.load_size=36", "data.crop_size=32",
        "data.batch_size=2", "data.shuffle_buffer=8", "data.map_batch_size=16", "data.task_cpus=0.5",
        "train.epochs=2", "train.cpus_per_worker=0.5", "train.max_steps_per_epoch=3", "train.checkpoint_every=1",
        "train.sample_every=1", "eval.val_images=4", "eval.fid_weights=random", "eval.max_images=8", "eval.actors=0",
        "loss.pool_size=2"]
DIRECTIONS = ("a2b", "b2a")


@pytest.fixture(scope="session")  # its serve test runs at the end of the session
def store(unpaired_store) -> Path:
    """The session's store with "unpaired-40", which the session's `ganime serve` serves."""
    return unpaired_store


@pytest.fixture(scope="session")  # its serve test runs at the end of the session
def trained(store) -> Path:
    """`ganime train --config configs/cyclegan.yaml --evaluate` on 2 workers (the final checkpoint, evaluated)."""
    assert main(["train", "--config", str(REPO / "configs" / "cyclegan.yaml"), "--store", str(store), "--evaluate",
                 *sets([*TINY, "data.uri=unpaired-40", "train.run_name=cg", "train.num_workers=2"])]) == 0
    return store / "runs" / "cg"


@pytest.mark.ray
def test_two_workers_stay_in_sync_and_pool_their_own_images(trained):
    log = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    # Checked at every checkpointed epoch: all ranks' G_A, G_B, D_A, D_B checksums agree.
    assert [m["epoch"] for m in log] == [1, 2] and all(m["ranks_in_sync"] for m in log)
    state = checkpoints.load(str(trained / "checkpoint_epoch_0002"))[0]
    assert len(state["ranks"]) == 2
    for k in ("D_A", "D_B"):  # each rank pooled its own generated images (its own shard, its own seeds)
        ours, theirs = (state["ranks"][r]["recipe"]["pools"][k] for r in (0, 1))
        assert len(ours["images"]) == len(theirs["images"]) == 2
        assert not any(torch.equal(x, y) for x, y in zip(ours["images"], theirs["images"])), k
        assert not torch.equal(ours["rng"], theirs["rng"]), k


@pytest.mark.ray
def test_training_logs_both_directions(trained):
    log = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    for m in log:
        assert {"loss_G", "loss_D_A", "loss_D_B", "G_cycle_A", "G_cycle_B", "val_cycle_l1_a", "val_cycle_l1_b",
                "val_cycle_l1", "lr_G", "lr_D"} <= set(m)
        assert "val_ssim" not in m  # unpaired: nothing to compare pixel by pixel
    assert sorted(p.name for p in (trained / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    sheet = images.decode_rgb((trained / "samples" / "epoch_0002.png").read_bytes())
    assert sheet.shape[0] > sheet.shape[1]  # rows: 8 A examples and 8 B examples, 3 images across


@pytest.mark.ray
def test_evaluation_scores_each_direction_with_a_labelled_fid(trained):
    report = trained / "eval"
    for direction in DIRECTIONS:
        record = json.loads((report / direction / "metrics.json").read_text())
        assert record["model"] == f"CycleGAN {direction}" and np.isfinite(record["fid"]) and record["fid"] > 0
        assert "ssim" not in record and record["fid_backbone"]["random_init"] is True
        assert "RANDOM" in record["fid_warning"] and record["num_images"] == record["num_real"] == 4  # test split
    table = (report / "results.md").read_text()
    assert "| CycleGAN a2b |" in table and "| CycleGAN b2a |" in table and "not comparable" in table


@pytest.mark.ray
def test_both_directions_are_exported_and_served(trained, store, ganime_server):
    checkpoint = trained / "checkpoint_epoch_0002"
    assert main(["export", str(checkpoint), "--name", "cg", "--store", str(store)]) == 0
    packages = {d: store / "models" / f"cg-{d}" for d in DIRECTIONS}
    for direction, package in packages.items():
        meta = json.loads((package / "model.json").read_text())
        assert meta["direction"] == direction and meta["recipe"] == "cyclegan"
        assert meta["metrics"]["evaluation"]["model"] == f"CycleGAN {direction}"  # its own direction's report
    local = {d: inference.Generator.load(str(p), "cpu") for d, p in packages.items()}

    assert ganime_server.store == store  # found by the running server, without a restart
    assert {"cg-a2b", "cg-b2a"} <= ganime_server.models({"cg-a2b", "cg-b2a"}).keys()
    image = random_image(40, 24)
    answers = {}
    for direction in DIRECTIONS:
        request = urllib.request.Request(f"{ganime_server.url}v1/models/cg-{direction}/generate",
                                         data=images.encode_png(image), headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answers[direction] = images.decode_rgb(response.read())
        expected = local[direction].translate([image])[0]
        assert answers[direction].shape == (40, 24, 3)
        assert np.abs(answers[direction].astype(int) - expected.astype(int)).max() <= 1  # replica threads
    assert not np.array_equal(answers["a2b"], answers["b2a"])  # two generators, not one served twice


@pytest.mark.ray
def test_a_short_sweep_over_the_cycle_weight_exports_its_best(store, tmp_path):
    """About the 60 s budget: two CycleGAN trials, each a process that imports torch and Ray Data and builds
    four nets, then the best evaluated in both directions and exported."""
    config = yaml.safe_load((REPO / "configs" / "cyclegan_sweep.yaml").read_text())
    config["loss"]["cycle"] = {"grid": [2.0, 10.0]}
    config["loss"]["identity"] = 0.0
    config["tune"].update(scheduler="none", metric="val_cycle_l1", num_samples=1, max_concurrent_trials=2)
    config["eval"]["val_fid"] = False  # the cycle error needs no Inception
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    tiny = [o for o in TINY if not o.startswith("train.epochs")] + ["train.epochs=1", LOCAL, "data.uri=unpaired-40"]
    assert main(["tune", str(path), "--name", "cg-sweep", "--store", str(store), *sets(tiny)]) == 0
    sweep = store / "sweeps" / "cg-sweep"
    import pandas as pd

    results = pd.read_csv(sweep / "results.csv")
    assert sorted(results["loss.cycle"]) == [2.0, 10.0] and results["val_cycle_l1"].notna().all()
    best = results.loc[results["val_cycle_l1"].idxmin()]
    for direction in DIRECTIONS:
        meta = json.loads((store / "models" / f"cg-sweep-{direction}" / "model.json").read_text())
        assert meta["direction"] == direction and meta["training"]["config"]["loss"]["cycle"] == best["loss.cycle"]
    assert storage.exists(str(sweep / "objective.png"))
