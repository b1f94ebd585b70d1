"""The training engine end to end on the shared local Ray: DDP sync, exact resume, learning, S3.

A fit on Ray Train workers costs seconds of fixed overhead (controller and worker actors), so only what only
Ray Train shows runs there: the 2-worker run on S3 (DDP sync + S3) and the exact resume's rerun, which also
shows that a worker trains bit for bit as local mode (``train.num_workers=0``) does. The rest trains in
this process. Train workers take half a CPU each (``train.cpus_per_worker=0.5``): with whole CPUs Ray Data
gets none and the run hangs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pytest
import torch
from runs import (LEARN_DATASET, LOCAL, SMALL_DATASET, assert_states_equal, hold_lease_in_another_process, make_cfg,
                  max_abs_diff, meta, metrics_lines, saved_state, sets, stop_and_rerun, timed_fit, tiny_overrides,
                  unique)

from ray_ganime import checkpoints, images, metrics, shards, storage, train, transforms
from ray_ganime.config import ConfigError
from ray_ganime.demo import ensure_synthetic
from ray_ganime.recipes import recipe_class

# ------------------------------------------------------------------------------------ helpers


def initial_nets(cfg) -> dict[str, torch.nn.Module]:
    """The networks as every worker builds them before step 1 (train_loop seeds, then builds)."""
    torch.manual_seed(cfg.train.seed)
    return recipe_class(cfg.recipe)(cfg, "cpu").nets


def held_out_ssim(generator: torch.nn.Module, data_uri: str, cfg, options=None) -> float:
    """Mean SSIM of G(sketch) vs colour over the test split, preprocessed as the eval pipeline does."""
    rows = shards.read_rows(data_uri, split="test", options=options)
    size, interpolation = cfg.data.crop_size, cfg.data.interpolation
    sketch, colour = (np.stack([transforms.resize(images.decode_rgb(r[c]), size, interpolation) for r in rows])
                      for c in ("sketch", "color"))
    with torch.no_grad():
        fake = transforms.to_uint8(generator.eval()(transforms.to_tensor(sketch)))
    return float(np.mean(metrics.ssim(fake, colour)))


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_session) -> str:
    """A local store holding the synthetic pairs, shared by the local fits of this module."""
    root = str(tmp_path_factory.mktemp("train-store"))
    for dataset in (SMALL_DATASET, LEARN_DATASET):
        ensure_synthetic(*dataset, make_cfg(root, "unused"))
    return root


# ------------------------------------------------------------------------------------ DDP sync (no Ray)


def _tiny_nets() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"G": torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)),
            "D": torch.nn.Sequential(torch.nn.Conv2d(6, 16, 4), torch.nn.Conv2d(16, 1, 4))}


def test_parameter_checksums_see_a_one_ulp_change_in_one_net():
    nets = _tiny_nets()
    before = train.parameter_checksums(nets)
    assert before.shape == (4,) and before.dtype == torch.float64  # (sum, weighted sum) per net
    assert torch.equal(before, train.parameter_checksums(nets))  # deterministic
    weight = nets["D"][1].weight
    with torch.no_grad():  # the smallest float32 change of one of D's 1,553 parameters
        weight[0, 3, 1, 2] = torch.nextafter(weight[0, 3, 1, 2], torch.tensor(1.0))
    after = train.parameter_checksums(nets)
    assert torch.equal(after[:2], before[:2]), "G did not change"
    assert not torch.equal(after[2:], before[2:]), "a one-ulp change of one D weight went unseen"
    # Two of D's weights swapped: the plain sum is unchanged, the position-weighted one is not.
    with torch.no_grad():
        flat = weight.view(-1)
        flat[[0, 5]] = flat[[5, 0]].clone()
    swapped = train.parameter_checksums(nets)
    assert not torch.equal(swapped[3], after[3])


def test_check_ranks_in_sync_raises_when_a_rank_differs(monkeypatch):
    nets = _tiny_nets()

    def all_gather(out, tensor, drift=0.0):
        for t in out:
            t.copy_(tensor)
        out[-1][2] += drift  # the last rank's D

    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)
    train.check_ranks_in_sync(nets, world=3)  # all equal: no error
    monkeypatch.setattr(torch.distributed, "all_gather", lambda out, t: all_gather(out, t, drift=1e-12))
    with pytest.raises(RuntimeError, match="rank 2's weights differ"):
        train.check_ranks_in_sync(nets, world=3)


# ------------------------------------------------------------------------------------ 2 workers on S3
# One fit serves two tests: DDP sync (test 1) and a run whose data set and run folder live on the loopback
# S3 server (test 5) -- the shape of a multi-node run, where checkpoints must be on shared storage.

DDP = ("train.num_workers=2", "train.seed=11")


@pytest.fixture(scope="module")
def s3_store(s3_server, ray_session) -> Iterator[str]:
    """A store on a fresh bucket of the loopback S3 server, for this module's fits (the AWS_* env vars
    that point at it are set by s3_server before Ray starts, so the workers inherit them)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    bucket = f"test-train-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/store"
    with contextlib.suppress(Exception):  # best effort: the server's memory goes with it at session end
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            if page.get("Contents"):
                client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": o["Key"]} for o in page["Contents"]]})
        client.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def ddp_run(s3_store) -> tuple:
    cfg = make_cfg(s3_store, unique("ddp"), *DDP)
    data_uri = ensure_synthetic(*SMALL_DATASET, cfg)  # 38 train rows: 19 per worker, 4 batches each
    return cfg, data_uri, timed_fit(cfg)


@pytest.mark.ray
@pytest.mark.s3
def test_two_workers_stay_in_sync_and_train(ddp_run):
    cfg, _, out = ddp_run
    # Every checkpointed epoch all-gathers G and D checksums and raises unless all ranks agree (checked by
    # hand: wrapping only G in DDP makes this fit fail with "rank 1's weights differ from rank 0's").
    assert out["metrics"]["ranks_in_sync"] is True
    assert [m.get("ranks_in_sync") for m in metrics_lines(out["run"])] == [True, True]
    final = saved_state(out["checkpoint"])
    assert final["epoch"] == 2 and final["global_step"] == 6  # steps per worker
    steps_lr = final["global_step"] * cfg.optim.lr_g
    for name, net in initial_nets(cfg).items():
        trained = final["recipe"]["nets"][name]
        diffs = {k: (trained[k] - p.detach()).abs().max().item() for k, p in net.named_parameters()}
        print(f"{name}: max |trained - initial| {max(diffs.values()):.3g} = {max(diffs.values()) / steps_lr:.2f} "
              f"lr per step")
        # Every parameter tensor moved (no net or layer was skipped) ...
        assert min(diffs.values()) > 0, f"{name}: parameters that never changed: {[k for k, d in diffs.items() if not d]}"
        # ... by about lr per Adam step (measured: G 1.19, D 1.17 lr per step, 1.4e-3 in all), so the workers
        # really started from these initial weights: a different N(0, 0.02) init would be ~0.1 away.
        assert max(diffs.values()) < 5 * steps_lr, (name, max(diffs.values()))


@pytest.mark.ray
@pytest.mark.s3
def test_run_on_s3_keeps_data_and_checkpoints_there(ddp_run, s3_store):
    cfg, data_uri, out = ddp_run
    assert data_uri == f"{s3_store}/datasets/{SMALL_DATASET[0]}"
    assert out["run"] == f"{s3_store}/runs/{cfg.train.run_name}"
    assert out["checkpoint"] == f"{out['run']}/checkpoint_epoch_0002"
    for path in ("config.yaml", "metrics.jsonl", "samples/epoch_0001.png", "checkpoint_epoch_0001/state.pt",
                 "checkpoint_epoch_0002/state.pt", "checkpoint_epoch_0002/meta.json"):
        assert storage.exists(storage.join(out["run"], path)), path

    generator, info = checkpoints.load_generator(out["checkpoint"])  # downloads the checkpoint from S3
    assert info["checkpoint"] == out["checkpoint"] and info["epoch"] == 2 and info["global_step"] == 6
    assert not generator.training
    # The downloaded generator holds the trained weights (state.pt read straight from S3), not a fresh init.
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(out["checkpoint"], checkpoints.STATE_FILE))),
                       map_location="cpu", weights_only=True)
    for k, v in generator.state_dict().items():
        assert torch.equal(v, state["recipe"]["nets"]["G"][k]), k
    assert max_abs_diff(generator.state_dict(), initial_nets(cfg)["G"].state_dict()) > 0
    assert 0 < held_out_ssim(generator, data_uri, cfg) < 1  # it runs on the S3 data set's test split


# ------------------------------------------------------------------------------------ resume

# 64 px crops of the 32 px pairs (upscaled): the U-Net is then 6 levels deep and has a dropout layer, so an
# exact resume also needs torch's RNG restored, not only weights, optimisers and LR schedulers. decay_epochs=2
# makes the LR change at the resume boundary: 2e-4, 2e-4 | 1.33e-4, 0.67e-4.
RESUME = ("train.epochs=4", "optim.decay_epochs=2", "data.load_size=72", "data.crop_size=64",
          "data.deterministic=true", "train.seed=3", "data.seed=5")
RESUME_LRS = [2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3]


@pytest.fixture(scope="module")
def resume_runs(store) -> dict:
    """The uninterrupted run and the first half in this process, the rerun on a Ray Train worker; the
    uninterrupted run streams and decodes its data every epoch, the others decode it once (data.cache_mb)."""
    return stop_and_rerun(make_cfg, store, "resume", *RESUME, rerun=(), uninterrupted=("data.cache_mb=0",))


@pytest.mark.ray
def test_stop_after_then_rerun_equals_an_uninterrupted_run(resume_runs):
    a, b1, b2 = resume_runs["a"], resume_runs["b1"], resume_runs["b2"]
    assert meta(b1["checkpoint"])["epoch"] == 2 and b1["metrics"]["epoch"] == 2
    assert b2["run"] == b1["run"] and b2["checkpoint"] != b1["checkpoint"]
    assert meta(a["checkpoint"])["epoch"] == meta(b2["checkpoint"])["epoch"] == 4
    sa, sb = saved_state(a["checkpoint"]), saved_state(b2["checkpoint"])
    assert sa["epoch"] == sb["epoch"] == 4 and sa["global_step"] == sb["global_step"] == 12

    # Same LR per epoch (the schedule decays across the resume boundary) and the same scheduler state.
    for run in (a, b2):
        log = metrics_lines(run["run"])
        assert [m["lr_G"] for m in log] == [m["lr_D"] for m in log] == pytest.approx(RESUME_LRS, rel=1e-9)
    assert sa["recipe"]["schedulers"] == sb["recipe"]["schedulers"]
    assert sb["recipe"]["schedulers"]["G"]["last_epoch"] == 4

    # Bit-identical weights, BN statistics and Adam moments: measured max |A - B| = 0.0 on CPU in every run, so
    # no tolerance. (Data order is fixed by data.deterministic + seeds; crop/flip and shuffle are keyed by
    # (seed, epoch); torch's RNG state, which drives dropout, travels in the checkpoint. Checked by hand: with
    # set_rng_state skipped on resume, G ends 0.0105 away and this fails.)
    for net in ("G", "D"):
        na, nb = sa["recipe"]["nets"][net], sb["recipe"]["nets"][net]
        assert max_abs_diff(na, nb) == 0.0, net
        oa, ob = sa["recipe"]["optimizers"][net], sb["recipe"]["optimizers"][net]
        assert oa["param_groups"] == ob["param_groups"]
        for i in oa["state"]:
            assert max_abs_diff(oa["state"][i], ob["state"][i]) == 0.0, (net, i)
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])

    # The resumed run's log has every epoch exactly once, with the uninterrupted run's losses.
    log_a, log_b = metrics_lines(a["run"]), metrics_lines(b2["run"])
    assert [m["epoch"] for m in log_b] == [1, 2, 3, 4]
    assert [m["global_step"] for m in log_b] == [3, 6, 9, 12]
    for ma, mb in zip(log_a, log_b):
        assert {k: v for k, v in ma.items() if k.startswith(("loss_", "G_"))} == \
               {k: v for k, v in mb.items() if k.startswith(("loss_", "G_"))}


@pytest.mark.ray
def test_resume_from_starts_a_new_run_at_the_checkpoint_epoch(store, resume_runs):
    a = resume_runs["a"]
    source = str(Path(a["run"]) / "checkpoint_epoch_0002")
    out = timed_fit(make_cfg(store, unique("resume-c"), *RESUME, f"train.resume_from={source}",
                             "train.stop_after=3", LOCAL))
    assert out["run"] != a["run"] and Path(out["run"]).parent == Path(a["run"]).parent
    assert meta(out["checkpoint"])["epoch"] == 3 and out["metrics"]["epoch"] == 3
    assert [m["epoch"] for m in metrics_lines(out["run"])] == [3]  # nothing before the checkpoint's epoch
    assert sorted(p.name for p in Path(out["run"]).glob("checkpoint_epoch_*")) == ["checkpoint_epoch_0003"]
    # From A's epoch-2 state it trains epoch 3 exactly as A did.
    got, want = saved_state(out["checkpoint"]), saved_state(Path(a["run"]) / "checkpoint_epoch_0003")
    assert got["global_step"] == want["global_step"] == 9
    for net in ("G", "D"):
        assert max_abs_diff(got["recipe"]["nets"][net], want["recipe"]["nets"][net]) == 0.0, net
    # And the source run is untouched.
    assert [m["epoch"] for m in metrics_lines(a["run"])] == [1, 2, 3, 4]


@pytest.mark.s3
def test_local_mode_keeps_its_checkpoints_in_the_run_folder_and_reports_to_callbacks(s3_store):
    """train.num_workers=0 on S3: what Ray Train's controller would do with the reports, done by LocalRun."""
    reports = []

    class Recorder:
        def after_report(self, run_context, metrics, checkpoint):
            reports.append((metrics[0]["epoch"], checkpoint and checkpoint.path))

    cfg = make_cfg(s3_store, unique("local"), LOCAL, "train.epochs=3", "train.keep_checkpoints=2")
    ensure_synthetic(*SMALL_DATASET, cfg)
    out = train.fit(cfg, callbacks=(Recorder(),))
    assert out["checkpoint"] == f"{out['run']}/checkpoint_epoch_0003" and out["metrics"]["epoch"] == 3
    assert checkpoints.run_checkpoints(out["run"]) == [f"{out['run']}/checkpoint_epoch_000{e}" for e in (3, 2)]
    assert checkpoints.verify(out["checkpoint"])["epoch"] == 3
    assert reports == [(e, f"{out['run']}/checkpoint_epoch_000{e}".removeprefix("s3://")) for e in (1, 2, 3)]
    assert [m["epoch"] for m in metrics_lines(out["run"])] == [1, 2, 3]


def test_a_complete_run_run_again_reports_its_last_epoch_without_training(store):
    """A sweep resumed after a trial's last epoch but before Tune recorded it: the trial must show complete."""
    reports = []

    class Recorder:
        def after_report(self, run_context, metrics, checkpoint):
            reports.append((metrics[0]["epoch"], checkpoint.path))

    cfg = make_cfg(store, unique("complete"), LOCAL)
    first = train.fit(cfg)
    again = train.fit(cfg, callbacks=(Recorder(),))
    assert reports == [(2, first["checkpoint"])] and again["checkpoint"] == first["checkpoint"]
    assert again["metrics"] == metrics_lines(first["run"])[-1] and len(metrics_lines(first["run"])) == 2


def test_a_small_training_set_is_decoded_once_and_a_larger_one_streams(store):
    """data.cache_mb: the decoded size of a stream (rows x images per row x load_size^2 x 3) decides."""
    from ray.data.dataset import MaterializedDataset

    from ray_ganime.data import ShardData

    cfg = make_cfg(store, "unused")
    data = ShardData.from_config(cfg)
    size = data.decoded_mb("train", None, 36)
    assert size == pytest.approx(data.count("train") * 2 * 36 * 36 * 3 / 2**20) and data.count("train") == 38
    assert isinstance(data.dataset("train"), MaterializedDataset)
    assert not isinstance(data.dataset("test", train=False), MaterializedDataset)  # evaluation always streams
    cfg.data.cache_mb = size * 0.99
    assert not isinstance(ShardData.from_config(cfg).dataset("train"), MaterializedDataset)


# ------------------------------------------------------------------------------------ learning

# 2 epochs over the 240 training pairs: 120 steps.
# 4 epochs of 60 steps (240 training pairs in batches of 4) at a learning rate of 1e-3: the least training that
# beats copying the input on this data.
LEARN = ("model.ngf=16", "model.ndf=16", "data.batch_size=4", "data.shuffle_buffer=64", "optim.lr_g=0.001",
         "optim.lr_d=0.001", "train.epochs=4", "train.max_steps_per_epoch=null", "train.checkpoint_every=100",
         "train.seed=1", LOCAL)


def held_out_l1(generator: torch.nn.Module, pairs: dict[str, np.ndarray]) -> float:
    """Mean |G(sketch) - colour| over held-out pairs, in [-1, 1] as the L1 loss."""
    with torch.no_grad():
        fake = generator.eval()(transforms.to_tensor(pairs["sketch"]))
    return (fake - transforms.to_tensor(pairs["color"])).abs().mean().item()


@pytest.mark.ray
def test_training_beats_copying_the_input_and_the_same_fit_without_its_l1_term(store):
    """Pix2Pix learns its task: held-out L1 to the colour image (which copying cannot game, unlike SSIM against
    line art: copying the sketch scores SSIM 0.85, above this fit's) below what copying the input, the training
    set's mean image and the same fit without its L1 term (the adversarial term alone, same data, seeds and
    steps) reach."""
    from ray_ganime.baselines import MeanImage
    from ray_ganime.data import ShardData

    fits = {name: make_cfg(store, unique(f"learn-{name}"), *LEARN, *more, dataset=LEARN_DATASET[0])
            for name, more in (("full", ()), ("adversarial-only", ("loss.l1=0",)))}
    data = ShardData.from_config(fits["full"])
    pairs = data.decoded("test", ["sketch", "color"], data.count("test"))
    train_colour = data.decoded("train", ["color"], data.count("train"))["color"]
    scores = {"untrained": held_out_l1(initial_nets(fits["full"])["G"], pairs),
              "copy": held_out_l1(torch.nn.Identity(), pairs),
              "mean": held_out_l1(MeanImage(train_colour.astype(np.float64).mean(axis=0)), pairs)}
    for name, cfg in fits.items():
        generator, info = checkpoints.load_generator(timed_fit(cfg)["checkpoint"])
        assert info["epoch"] == 4 and info["global_step"] == 240
        scores[name] = held_out_l1(generator, pairs)
    print("held-out L1: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    # Measured (seeded, the same every run): untrained 0.56, full 0.2291, adversarial only 0.3522, copying the
    # input 0.2546, the mean image 0.4376. The bars are about half of the margins.
    assert scores["full"] < scores["copy"] - 0.012 and scores["full"] < scores["mean"] - 0.1
    assert scores["full"] < scores["adversarial-only"] - 0.06
    assert scores["adversarial-only"] > scores["copy"]  # the control does not reach the baseline


# ------------------------------------------------------------------------------------ failure config


@pytest.mark.ray
@pytest.mark.parametrize("max_failures", [0, 3, -1])
def test_fit_passes_max_failures_and_resources_to_ray_train(store, monkeypatch, max_failures, capsys):
    """What fit hands to Ray Train, without starting workers (a real worker crash and recovery would cost
    two more fits; the recovery itself is Ray's, from the last checkpoint get_checkpoint() returns)."""
    import ray.train.torch

    seen = {}

    class FakeTrainer:
        def __init__(self, loop, **kwargs):
            seen.update(kwargs, loop=loop)

        def fit(self):
            return SimpleNamespace(checkpoint=None, metrics={"epoch": 0})

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", FakeTrainer)
    cfg = make_cfg(store, unique("failures"), f"train.max_failures={max_failures}", "train.num_workers=2",
                   "train.keep_checkpoints=2", "train.epochs=6", "optim.decay_epochs=100")
    out = train.fit(cfg)
    # The first epoch's LR, said at start: a run shorter than its decay starts at 6/7 of lr_g, not at 7/101.
    assert "learning rate, epoch 1: G 0.000171, D 0.000171 (linear, decay over the last 6 of 6 epochs)" in \
        capsys.readouterr().out
    assert out["checkpoint"] is None and out["metrics"] == {"epoch": 0}
    assert seen["loop"] is train.train_loop
    run_config = seen["run_config"]
    assert run_config.failure_config.max_failures == max_failures
    assert run_config.checkpoint_config.num_to_keep == 2
    assert run_config.name == cfg.train.run_name and out["run"] == f"{store}/runs/{cfg.train.run_name}"
    scaling = seen["scaling_config"]
    assert scaling.num_workers == 2 and not scaling.use_gpu and scaling.resources_per_worker == {"CPU": 0.5}
    assert seen["train_loop_config"]["cfg"]["train"]["max_failures"] == max_failures


def test_validator_scores_the_subset_without_touching_the_rng(tmp_path):
    """Per-epoch validation (no Ray): SSIM/L1 of G(sketch) vs colour on the first val_images test rows,
    FID of that subset with the (random-init) Inception, in eval mode, leaving torch's RNG where it was."""
    from ray_ganime.data import ShardData

    cfg = make_cfg(str(tmp_path), "unused", "eval.val_images=6", "eval.val_fid=true", "eval.fid_weights=random",
                   "eval.batch_size=4")
    cfg.data.uri = ensure_synthetic(*SMALL_DATASET, cfg)
    data = ShardData.from_config(cfg)
    recipe = recipe_class("pix2pix")(cfg, "cpu")
    validate = train.Validator(data, cfg, recipe, torch.device("cpu"))
    rng = torch.get_rng_state()
    scores = validate()
    assert torch.equal(torch.get_rng_state(), rng) and recipe.nets["G"].training
    assert scores["val_images"] == 6 and scores["val_split"] == "test"
    G = recipe.nets["G"].eval()
    sketch, colour = (transforms.to_tensor(validate.images[k]) for k in ("sketch", "color"))
    with torch.no_grad():
        fake = G(sketch)
    assert scores["val_l1"] == pytest.approx((fake - colour).abs().mean().item(), rel=1e-5)
    assert scores["val_ssim"] == pytest.approx(float(np.mean(metrics.ssim(transforms.to_uint8(fake),
                                                                          validate.images["color"]))))
    assert np.isfinite(scores["val_fid"]) and "RANDOM" in scores["val_fid_backbone"]
    # Beside them, what copying the sketch scores on the same images and weights.
    sketch_u8, colour_u8 = validate.images["sketch"], validate.images["color"]
    assert scores["baseline_copy_val_l1"] == pytest.approx((sketch - colour).abs().mean().item(), rel=1e-5)
    assert scores["baseline_copy_val_ssim"] == pytest.approx(float(np.mean(metrics.ssim(sketch_u8, colour_u8))))
    real = metrics.inception_features(validate.inception, colour_u8, "cpu")
    copied = metrics.inception_features(validate.inception, sketch_u8, "cpu")
    assert scores["baseline_copy_val_fid"] == pytest.approx(metrics.fid_from_features(copied, real, warn=False))


def test_a_run_this_machine_cannot_hold_is_one_line_before_ray_train_starts(store, capsys):
    """cpus_per_worker 4 on the suite's 2-CPU Ray: Ray Train would wait a minute, fail and retry for ever."""
    from ray_ganime.cli import main

    cfg = make_cfg(store, unique("too-big"), "train.cpus_per_worker=4")
    started = time.monotonic()
    argv = ["train", "--store", store, *[a for o in ("recipe=pix2pix", "train.cpus_per_worker=4", "model.ngf=8",
                                                      "data.task_cpus=0.5", f"data.uri={cfg.data.uri}")
                                         for a in ("--set", o)]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ganime: error: this machine's Ray has 2 CPU, the run needs "
                                                   "4.5 CPU (train.num_workers 1 x train.cpus_per_worker 4 + "
                                                   "data.task_cpus 0.5): lower train.cpus_per_worker"), err
    with pytest.raises(ConfigError, match="the run needs 4.75 CPU .* 0.25 for the sweep's trial driver"):
        train.check_resources(cfg, extra_cpus=0.25)
    assert time.monotonic() - started < 30


def test_a_run_name_in_use_is_refused_in_one_line_and_free_once_its_holder_died(store, capsys):
    """Two drivers with one run name and store would each overwrite the other's checkpoints and metrics."""
    from ray_ganime.cli import main

    name = unique("leased")
    run = f"{store}/runs/{name}"
    argv = ["train", "--run-name", name, *sets(tiny_overrides(store, LOCAL, "train.epochs=1"))]
    holder = hold_lease_in_another_process(run)
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{run}: run in use by pid {holder.pid} on this machine, since " in err, err
        assert sorted(p.name for p in Path(run).iterdir()) == ["lease"]  # the refused driver wrote nothing
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert main(argv) == 0  # the holder died: its run name is free again, at once
    assert checkpoints.run_checkpoints(run) == [f"{run}/checkpoint_epoch_0001"]
    assert lease_released(run)


def test_a_driver_whose_run_was_taken_over_stops_before_writing_to_it(store):
    """A driver that stalled past its lease (a frozen VM) while another took the run over must not write over the
    new holder's files: the lease's generation fences the run's metrics and checkpoints."""
    from ray_ganime import lease

    name = unique("taken")
    run = f"{store}/runs/{name}"

    class TakeOver:  # at epoch 1's report: another driver found this one's lease lapsed and took the run
        def after_report(self, run_context, metrics, checkpoint):
            now, newest = time.time(), max(lease.generations(run))
            record = {"owner": "other", "pid": 4242, "machine": {"host": "elsewhere"}, "started": now,
                      "expires": now + lease.TTL_S}
            Path(run, lease.FOLDER, f"{newest + 1:06d}.json").write_text(json.dumps(record))

    expected = f"^{re.escape(run)}: another driver took the run over .* \\(holder: pid 4242 on elsewhere, since "
    with pytest.raises(lease.RunTakenOver, match=expected):
        train.fit(make_cfg(store, name, LOCAL, "train.epochs=3"), callbacks=(TakeOver(),))
    assert [m["epoch"] for m in metrics_lines(run)] == [1]
    assert checkpoints.run_checkpoints(run) == [f"{run}/checkpoint_epoch_0001"]


def lease_released(run: str) -> bool:
    """Whether the run's newest lease file says its holder released it."""
    from ray_ganime import lease

    newest = sorted(Path(run, lease.FOLDER).iterdir())[-1]
    return bool(json.loads(newest.read_text()).get("released"))


@contextlib.contextmanager
def train_process(store: str, name: str, tmp_path: Path, *overrides: str
                  ) -> Iterator[tuple[subprocess.Popen, Path, list[str]]]:
    """`ganime train` of a 40-epoch tiny run on a Ray of its own, in its own process group: (process, its output,
    its arguments) once its first checkpoint is complete. The group is killed afterwards."""
    from servers import tail

    run = Path(store) / "runs" / name
    argv = ["train", "--run-name", name, *sets(tiny_overrides(store, "train.epochs=40", *overrides))]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ray_ganime", *argv], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (run / "checkpoint_epoch_0001" / checkpoints.META_FILE).exists():
            assert proc.poll() is None and time.monotonic() < deadline, tail(log)
            time.sleep(0.2)
        yield proc, log, argv
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def assert_gone(pids: list[int], within_s: float) -> None:
    from servers import alive

    deadline = time.monotonic() + within_s  # killed processes can take a moment to go
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(pids) > 5 and not alive(pids), alive(pids)


def test_ctrl_c_stops_a_run_within_seconds_and_it_resumes_exactly(store, tmp_path):
    """SIGINT to the process group of a `ganime train` on a Ray of its own, as a terminal's Ctrl-C sends it, on a
    Ray Train worker (whose fit took SIGINT over for a graceful abort that did not end). Then the run resumed
    under its name equals one never stopped. The terminal shows the run's epochs, not Ray's internals."""
    from servers import process_tree, tail

    name = unique("ctrl-c")
    run = Path(store) / "runs" / name
    with train_process(store, name, tmp_path) as (proc, log, argv):
        tree = process_tree(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) == 130, tail(log)
    assert_gone(tree, 5)
    text = log.read_text()
    epoch = max(checkpoints.epoch_of(c) for c in checkpoints.run_checkpoints(str(run)))
    assert (f"ganime: stopped. last complete checkpoint: {run}/checkpoint_epoch_{epoch:04d} (epoch {epoch})\n"
            f"resume with: ganime {' '.join(argv)}\n") in text, text
    assert lease_released(str(run))
    # A terminal a person can read: the run's own lines, Ray's in the run folder.
    assert "epoch 1/40  G_L1 " in text and "eta 0:" in text and (run / "logs" / "raylet.out").is_file()
    for noise in ("TrainingReport(", "Execution plan", "Traceback"):
        assert noise not in text, text

    # Resumed (here in this process) for one more epoch, it equals a run never stopped.
    resumed = train.fit(make_cfg(store, name, "train.epochs=40", LOCAL, f"train.stop_after={epoch + 1}"))
    straight = train.fit(make_cfg(store, unique("straight"), "train.epochs=40", LOCAL, f"train.stop_after={epoch + 1}"))
    sa, sb = saved_state(straight["checkpoint"]), saved_state(resumed["checkpoint"])
    assert sa["epoch"] == sb["epoch"] == epoch + 1
    assert_states_equal(sa["recipe"], sb["recipe"], "recipe")
    assert [m["epoch"] for m in metrics_lines(resumed["run"])] == list(range(1, epoch + 2))


def test_a_killed_driver_leaves_no_process_behind_and_its_run_resumes_at_once(store, tmp_path):
    """SIGKILL to `ganime train` alone (the OOM killer, `kill -9`): nothing of it runs, so its watchdog stops the
    Ray it started (which ran on for a minute and more), and its lease no longer holds the run name."""
    from servers import process_tree

    name = unique("killed")
    run = Path(store) / "runs" / name
    with train_process(store, name, tmp_path, LOCAL) as (proc, _, _):  # its own Ray all the same: Ray Data's
        tree = process_tree(proc.pid)
        proc.kill()
        proc.wait()
        assert_gone(tree, 10)
    epoch = max(checkpoints.epoch_of(c) for c in checkpoints.run_checkpoints(str(run)))
    out = train.fit(make_cfg(store, name, "train.epochs=40", LOCAL, f"train.stop_after={epoch + 1}"))
    assert out["metrics"]["epoch"] == epoch + 1
