"""AnimeGANv2 and CartoonGAN as a user runs them: synthetic unpaired photos and cartoons -> a short real sweep
over AnimeGANv2's colour weight (configs/animegan_sweep.yaml, ranked by val_fid) and CartoonGAN trained with its
config, both through an init phase then adversarial training -> evaluated (the sweep's best by the sweep,
CartoonGAN's by `ganime evaluate`; FID labelled for random Inception and random VGG features) -> exported -> the
session's `ganime serve` answers both, and an imported AnimeGANv2 checkpoint beside them (GET /v1/models says
where each came from). Exact resume inside the init phase and across its end: three more AnimeGANv2 fits.

Tiny everything (32 px, 3 steps an epoch, ndf 8): the plumbing from data to HTTP. Everything trains in local
mode (``train.num_workers=0``; the sweep's trials in their Tune actors): what Ray Train workers add is
recipe-independent (tests/test_train.py, tests/test_cyclegan_e2e.py). Learning and the phases are checked
without Ray (tests/test_photo2cartoon.py, tests/test_recipes.py).
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from servers import REPO
from serving import random_image
from runs import LOCAL, max_abs_diff, metrics_lines, saved_state, sets, stop_and_rerun

from ray_ganime import images, inference
from ray_ganime.cli import main
from ray_ganime.config import load_config
from ray_ganime.nets import AnimeGANv2Generator

TINY = ["model.ndf=8", "data.load_size=36", "data.crop_size=32", "data.batch_size=2", "data.shuffle_buffer=8",
        "data.map_batch_size=16", "data.task_cpus=0.5", "train.cpus_per_worker=0.5", "train.max_steps_per_epoch=3",
        "train.checkpoint_every=1", "train.sample_every=1", "eval.val_images=4", "eval.fid_weights=random",
        "eval.max_images=8", "eval.actors=0", "loss.vgg_weights=random", "data.uri=unpaired-40"]
# One init epoch (G alone, content loss) then one adversarial epoch.
ANIME = [*TINY, "optim.init_epochs=1", "train.epochs=2", LOCAL]
CARTOON = [*TINY, "model.ngf=8", "model.n_blocks=1", "optim.init_epochs=1", "train.epochs=2",
           "optim.step_epochs=[1]", LOCAL]


@pytest.fixture(scope="session")  # its serve test runs at the end of the session
def store(unpaired_store) -> Path:
    """The session's store with "unpaired-40", which the session's `ganime serve` serves."""
    return unpaired_store


def train(store: Path, config: str, overrides: list[str], name: str) -> Path:
    assert main(["train", "--config", str(REPO / "configs" / config), "--store", str(store),
                 *sets([*overrides, f"train.run_name={name}"])]) == 0
    return store / "runs" / name


@pytest.fixture(scope="session")  # its serve test runs at the end of the session
def anime(store, tmp_path_factory) -> Path:
    """Two trials over ω_col, the other ω at their Hayao values; the best becomes the package "hayao"."""
    config = yaml.safe_load((REPO / "configs" / "animegan_sweep.yaml").read_text())
    config["loss"] = {"adversarial": 300.0, "content": 1.5, "gram": 2.5, "tv": 1.0, "color": {"grid": [5.0, 50.0]}}
    # Ranked by the config's objective, val_fid (random Inception here); ASHA is the Pix2Pix sweeps' subject.
    config["tune"].update(scheduler="none", num_samples=1, max_concurrent_trials=2)
    assert config["tune"]["metric"] == "val_fid" and config["eval"]["val_fid"] is True
    path = tmp_path_factory.mktemp("anime-sweep") / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["tune", str(path), "--name", "hayao", "--store", str(store), *sets(ANIME)]) == 0
    return store / "sweeps" / "hayao"


@pytest.fixture(scope="session")  # its serve test runs at the end of the session
def cartoon(store) -> Path:
    """CartoonGAN trained with its config, then `ganime evaluate` on its last checkpoint, as a user runs it."""
    run = train(store, "cartoongan.yaml", CARTOON, "cartoon")
    assert main(["evaluate", "--model", str(run / "checkpoint_epoch_0002"), "--out", str(run / "eval"),
                 "--store", str(store), *sets(["eval.fid_weights=random", "eval.max_images=8", "eval.actors=0"])]) == 0
    return run


@pytest.mark.ray
def test_a_short_animeganv2_sweep_trains_each_trial_through_its_init_phase_and_exports_the_best(anime, store):
    import pandas as pd

    results = pd.read_csv(anime / "results.csv")
    assert sorted(results["loss.color"]) == [5.0, 50.0] and results["val_fid"].notna().all()
    assert set(results["status"]) == {"completed"}
    assert set(results["vgg_weights"]) == {"RANDOM-INIT VGG19 (perceptual losses used random features)"}
    for run in sorted((anime / "runs").iterdir()):
        log = metrics_lines(str(run))
        assert [sorted(k for k in m if k.startswith("loss_")) for m in log] == \
            [["loss_G_init"], ["loss_D", "loss_G"]]
        assert {m["vgg_weights"] for m in log} == {"RANDOM-INIT VGG19 (perceptual losses used random features)"}
        assert {"val_content", "val_color"} <= set(log[1])
    best = results.loc[results["val_fid"].idxmin()]
    meta = json.loads((store / "models" / "hayao" / "model.json").read_text())
    assert meta["recipe"] == "animeganv2" and meta["training"]["config"]["loss"]["color"] == best["loss.color"]
    assert meta["metrics"]["evaluation"]["model"] == "AnimeGANv2"


@pytest.mark.ray
def test_cartoongan_trains_through_both_phases_and_is_evaluated(cartoon):
    log = metrics_lines(str(cartoon))
    assert "loss_G_init" in log[0] and {"loss_G", "loss_D", "D_edge", "lr_G", "lr_D"} <= set(log[1])
    assert log[1]["lr_G"] == pytest.approx(2e-5)  # × 0.1 after optim.step_epochs [1]
    assert {"val_content", "val_color", "val_images"} <= set(log[1])
    record = json.loads((cartoon / "eval" / "metrics.json").read_text())
    assert record["model"] == "CartoonGAN" and np.isfinite(record["fid"]) and record["fid_backbone"]["random_init"]
    assert record["pretrained"]["vgg"]["random_init"] is True
    table = (cartoon / "eval" / "results.md").read_text()
    assert "| CartoonGAN |" in table and "perceptual losses it trained with used random features" in table


@pytest.mark.ray
def test_both_are_exported_and_served(anime, cartoon, store, ganime_server, tmp_path):
    assert main(["export", str(cartoon / "checkpoint_epoch_0002"), "--name", "cartoon", "--store", str(store)]) == 0
    # Beside them, a public AnimeGANv2 checkpoint (its layout, seeded weights) imported as it is.
    torch.manual_seed(0)
    torch.save(AnimeGANv2Generator().state_dict(), tmp_path / "paprika.pt")
    assert main(["import", "animegan2", str(tmp_path / "paprika.pt"), "--name", "paprika", "--store", str(store)]) == 0
    packages = {"hayao": "animeganv2", "cartoon": "cartoongan", "paprika": "animeganv2"}
    local = {}
    for name, recipe in packages.items():
        meta = json.loads((store / "models" / name / "model.json").read_text())
        assert meta["recipe"] == recipe
        if name != "paprika":
            assert meta["training"]["pretrained"]["vgg"]["random_init"] is True
            assert meta["metrics"]["evaluation"]["fid_backbone"]["random_init"] is True
        local[name] = inference.Generator.load(str(store / "models" / name), "cpu")

    assert ganime_server.store == store  # found by the running server, without a restart
    listed = ganime_server.models(set(packages))
    assert listed["paprika"]["source"] == {
        "imported": "bryandlee/animegan2-pytorch", "file": "paprika.pt",
        "sha256": hashlib.sha256((tmp_path / "paprika.pt").read_bytes()).hexdigest()}
    assert listed["hayao"]["source"] == {"trained": "animeganv2"}
    image = random_image(37, 50)  # AnimeGANv2 takes any size; CartoonGAN's is padded to a multiple of 4
    for name in packages:
        request = urllib.request.Request(f"{ganime_server.url}v1/models/{name}/generate",
                                         data=images.encode_png(image), headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = images.decode_rgb(response.read())
        assert answer.shape == (37, 50, 3)
        assert np.abs(answer.astype(int) - local[name].translate([image])[0].astype(int)).max() <= 1


# ------------------------------------------------------------------------------------ exact resume

def resume_cfg(store: str, name: str, *overrides: str):
    """AnimeGANv2 with 3 init epochs of 4: stop_and_rerun stops after epoch 2, inside the init phase, and the
    re-run crosses into adversarial training (a resume right after the init phase: tests/test_recipes.py)."""
    return load_config(str(REPO / "configs" / "animeganv2_hayao.yaml"),
                       [f"store.uri={store}", f"train.run_name={name}", *TINY,
                        "optim.init_epochs=3", "train.epochs=4", "train.sample_every=100", "eval.val_fid=false",
                        "data.deterministic=true", "train.seed=3", "data.seed=5", *overrides])


@pytest.fixture(scope="module")
def resume_runs(store) -> dict:
    return stop_and_rerun(resume_cfg, str(store), "ag-resume")


@pytest.mark.ray
def test_a_resume_inside_the_init_phase_continues_bitwise_across_its_end(resume_runs):
    a, b1, b2 = resume_runs["a"], resume_runs["b1"], resume_runs["b2"]
    assert b1["metrics"]["epoch"] == 2 and b2["run"] == b1["run"]
    sa, sb = saved_state(a["checkpoint"]), saved_state(b2["checkpoint"])
    assert sa["epoch"] == sb["epoch"] == 4
    for net in ("G", "D"):
        assert max_abs_diff(sa["recipe"]["nets"][net], sb["recipe"]["nets"][net]) == 0.0, net
    for name in ("G_init", "G", "D"):  # the init phase's own Adam too
        oa, ob = sa["recipe"]["optimizers"][name], sb["recipe"]["optimizers"][name]
        assert oa["state"].keys() == ob["state"].keys() and oa["state"], name
        for i in oa["state"]:
            assert max_abs_diff(oa["state"][i], ob["state"][i]) == 0.0, (name, i)
    log_a, log_b = metrics_lines(a["run"]), metrics_lines(b2["run"])
    assert [sorted(k for k in m if k.startswith("loss_")) for m in log_b] == \
        [["loss_G_init"]] * 3 + [["loss_D", "loss_G"]]
    for ma, mb in zip(log_a, log_b, strict=True):
        assert {k: v for k, v in ma.items() if k.startswith(("loss_", "G_", "D_", "val_"))} == \
               {k: v for k, v in mb.items() if k.startswith(("loss_", "G_", "D_", "val_"))}
