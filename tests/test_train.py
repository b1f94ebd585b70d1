"""The training engine end to end on the shared local Ray: DDP sync, exact resume, learning, S3.

Every ``fit`` costs ~30-50 s of fixed overhead on a small machine (worker group, Ray Data executor),
so fits are module-scoped fixtures shared by several tests. Train workers take half a CPU each
(``train.cpus_per_worker=0.5``): with whole CPUs Ray Data gets none and the run hangs.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ray_ganime import images, metrics, shards, storage, train, transforms
from ray_ganime.config import load_config
from ray_ganime.demo import ensure_synthetic
from ray_ganime.recipes import recipe_class

LEARN_DATASET = ("synthetic-paired-300x32", "paired", 300, 32)  # 240 train / 60 test rows
# Short fits read little (3 steps of 4 images per epoch), but Ray Data decodes the whole split every epoch.
SMALL_DATASET = ("synthetic-paired-48x32", "paired", 48, 32)


# ------------------------------------------------------------------------------------ helpers


def unique(prefix: str) -> str:
    """A fresh run name: a stale run folder with the same name would silently resume."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_cfg(store: str, name: str, *overrides: str, dataset: str = SMALL_DATASET[0]):
    """A tiny pix2pix run on synthetic pairs: 32 px, ngf/ndf 8, 2 epochs of 3 steps of 4 images."""
    base = [f"store.uri={store}", f"data.uri={dataset}", f"train.run_name={name}",
            "recipe=pix2pix", "model.ngf=8", "model.ndf=8",
            "data.load_size=36", "data.crop_size=32", "data.batch_size=4", "data.shuffle_buffer=16",
            "data.map_batch_size=64",
            "train.epochs=2", "train.cpus_per_worker=0.5", "train.max_steps_per_epoch=3",
            "train.checkpoint_every=1", "train.sample_every=100"]
    return load_config(None, [*base, *overrides])


def timed_fit(cfg) -> dict:
    started = time.perf_counter()
    out = train.fit(cfg)
    print(f"fit {cfg.train.run_name}: {time.perf_counter() - started:.1f} s")
    return out


def initial_nets(cfg) -> dict[str, torch.nn.Module]:
    """The networks as every worker builds them before step 1 (train_loop seeds, then builds)."""
    torch.manual_seed(cfg.train.seed)
    return recipe_class(cfg.recipe)(cfg, "cpu").nets


def meta(folder) -> dict:
    return json.loads((Path(folder) / train.META_FILE).read_text())


def metrics_lines(run: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a - b| over two state dicts (integer entries, e.g. BN step counters: 0 or 1 for differ)."""
    assert a.keys() == b.keys()
    return max((x.double() - y.double()).abs().max().item() if x.is_floating_point() else float(not torch.equal(x, y))
               for x, y in ((a[k], b[k]) for k in a))


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
    """A local store holding the synthetic pairs, shared by every fit in this module."""
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
        for i, t in enumerate(out):
            t.copy_(tensor)
        out[-1][2] += drift  # the last rank's D

    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)
    train.check_ranks_in_sync(nets, world=3)  # all equal: no error
    monkeypatch.setattr(torch.distributed, "all_gather", lambda out, t: all_gather(out, t, drift=1e-12))
    with pytest.raises(RuntimeError, match="rank 2's weights differ"):
        train.check_ranks_in_sync(nets, world=3)


# ------------------------------------------------------------------------------------ 2 workers (DDP)

DDP = ("train.num_workers=2", "train.seed=11")


@pytest.fixture(scope="module")
def ddp_run(store) -> tuple:
    cfg = make_cfg(store, unique("ddp"), *DDP)
    return cfg, timed_fit(cfg)


@pytest.mark.ray
def test_two_workers_stay_in_sync_and_train(ddp_run):
    cfg, out = ddp_run
    # Every checkpointed epoch all-gathers G and D checksums and raises unless all ranks agree.
    assert out["metrics"]["ranks_in_sync"] is True
    assert [m.get("ranks_in_sync") for m in metrics_lines(out["run"])] == [True, True]
    state = train.load_state(out["checkpoint"])
    assert state["epoch"] == 2 and state["global_step"] == 6  # steps per worker
    start = initial_nets(cfg)
    bound = 10 * state["global_step"] * cfg.optim.lr_g
    for name, net in start.items():
        trained = state["recipe"]["nets"][name]
        diffs = {k: (trained[k] - p.detach()).abs().max().item() for k, p in net.named_parameters()}
        print(f"{name}: max |trained - initial| {max(diffs.values()):.3g} = "
              f"{max(diffs.values()) / (state['global_step'] * cfg.optim.lr_g):.2f} lr per step")
        # Every parameter tensor moved (no net or layer was skipped) ...
        assert min(diffs.values()) > 0, f"{name}: parameters that never changed: {[k for k, d in diffs.items() if not d]}"
        # ... by at most ~lr per Adam step (measured max ~1.3e-3 = 1.1 lr per step): the engine really started
        # from these initial weights, rather than the comparison being with some unrelated init.
        assert max(diffs.values()) < bound, (name, max(diffs.values()))


# ------------------------------------------------------------------------------------ resume

# 64 px crops of the 32 px pairs (upscaled): the U-Net is then 6 levels deep and has a dropout layer, so an
# exact resume also needs torch's RNG restored, not only weights, optimisers and LR schedulers. decay_epochs=2
# makes the LR change at the resume boundary: 2e-4, 2e-4 | 1.33e-4, 0.67e-4.
RESUME = ("train.epochs=4", "optim.decay_epochs=2", "data.load_size=72", "data.crop_size=64",
          "data.deterministic=true", "train.seed=3", "data.seed=5")
RESUME_LRS = [2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3]


@pytest.fixture(scope="module")
def resume_runs(store) -> dict:
    a = timed_fit(make_cfg(store, unique("resume-a"), *RESUME))
    name_b = unique("resume-b")
    b1 = timed_fit(make_cfg(store, name_b, *RESUME, "train.stop_after=2"))
    b2 = timed_fit(make_cfg(store, name_b, *RESUME))
    return {"a": a, "b1": b1, "b2": b2}


@pytest.mark.ray
def test_stop_after_then_rerun_equals_an_uninterrupted_run(resume_runs):
    a, b1, b2 = resume_runs["a"], resume_runs["b1"], resume_runs["b2"]
    assert meta(b1["checkpoint"])["epoch"] == 2 and b1["metrics"]["epoch"] == 2
    assert b2["run"] == b1["run"] and b2["checkpoint"] != b1["checkpoint"]
    assert meta(a["checkpoint"])["epoch"] == meta(b2["checkpoint"])["epoch"] == 4
    sa, sb = train.load_state(a["checkpoint"]), train.load_state(b2["checkpoint"])
    assert sa["epoch"] == sb["epoch"] == 4 and sa["global_step"] == sb["global_step"] == 12

    # Same LR per epoch (the schedule decays across the resume boundary) and the same scheduler state.
    for run in (a, b2):
        log = metrics_lines(run["run"])
        assert [m["lr_G"] for m in log] == [m["lr_D"] for m in log] == pytest.approx(RESUME_LRS, rel=1e-9)
    assert sa["recipe"]["schedulers"] == sb["recipe"]["schedulers"]
    assert sb["recipe"]["schedulers"]["G"]["last_epoch"] == 4

    # Bit-identical weights, BN statistics and Adam moments: measured max |A - B| = 0.0 on CPU. (Data order
    # is fixed by data.deterministic + seeds; crop/flip and shuffle are keyed by (seed, epoch); torch's RNG
    # state, which drives dropout, travels in the checkpoint.)
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
                             "train.stop_after=3"))
    assert out["run"] != a["run"] and Path(out["run"]).parent == Path(a["run"]).parent
    assert meta(out["checkpoint"])["epoch"] == 3 and out["metrics"]["epoch"] == 3
    assert [m["epoch"] for m in metrics_lines(out["run"])] == [3]  # nothing before the checkpoint's epoch
    assert sorted(p.name for p in Path(out["run"]).glob("checkpoint_epoch_*")) == ["checkpoint_epoch_0003"]
    # From A's epoch-2 state it trains epoch 3 exactly as A did.
    got, want = train.load_state(out["checkpoint"]), train.load_state(Path(a["run"]) / "checkpoint_epoch_0003")
    assert got["global_step"] == want["global_step"] == 9
    for net in ("G", "D"):
        assert max_abs_diff(got["recipe"]["nets"][net], want["recipe"]["nets"][net]) == 0.0, net
    # And the source run is untouched.
    assert [m["epoch"] for m in metrics_lines(a["run"])] == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------ learning

LEARN = ("model.ngf=16", "model.ndf=16", "data.batch_size=4", "data.shuffle_buffer=64",
         "train.epochs=2", "train.max_steps_per_epoch=null", "train.checkpoint_every=100", "train.seed=1")


@pytest.mark.ray
def test_training_raises_held_out_ssim(store):
    cfg = make_cfg(store, unique("learn"), *LEARN, dataset=LEARN_DATASET[0])
    data_uri = cfg.dataset_uri()
    baseline = held_out_ssim(initial_nets(cfg)["G"], data_uri, cfg)
    out = timed_fit(cfg)
    generator, info = train.load_generator(out["checkpoint"])
    trained = held_out_ssim(generator, data_uri, cfg)
    print(f"held-out SSIM: untrained {baseline:.4f}, trained {trained:.4f} after {info['global_step']} steps, "
          f"margin {trained - baseline:.4f}")
    assert info["epoch"] == 2
    assert trained > baseline + 0.1


# ------------------------------------------------------------------------------------ S3


@pytest.mark.ray
@pytest.mark.s3
def test_trains_with_data_and_checkpoints_on_s3(s3_bucket, ray_session):
    store, name = f"{s3_bucket}/store", unique("s3")
    cfg = make_cfg(store, name, "train.epochs=1", "train.max_steps_per_epoch=2", dataset=SMALL_DATASET[0])
    data_uri = ensure_synthetic(*SMALL_DATASET, cfg)
    assert data_uri == f"{store}/datasets/{SMALL_DATASET[0]}"
    out = timed_fit(cfg)
    assert out["run"] == f"{store}/runs/{name}"
    assert out["checkpoint"] == f"{out['run']}/checkpoint_epoch_0001"
    for path in ("config.yaml", "metrics.jsonl", "checkpoint_epoch_0001/state.pt", "checkpoint_epoch_0001/meta.json"):
        assert storage.exists(storage.join(out["run"], path)), path

    generator, info = train.load_generator(out["checkpoint"])  # downloads the checkpoint from S3
    assert info["checkpoint"] == out["checkpoint"] and info["epoch"] == 1 and info["global_step"] == 2
    # The downloaded generator holds the trained weights (state.pt read straight from S3), not a fresh init.
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(out["checkpoint"], train.STATE_FILE))),
                       map_location="cpu", weights_only=True)
    for k, v in generator.state_dict().items():
        assert torch.equal(v, state["recipe"]["nets"]["G"][k]), k
    assert max_abs_diff(generator.state_dict(), initial_nets(cfg)["G"].state_dict()) > 0
    assert 0 <= held_out_ssim(generator, data_uri, cfg) <= 1  # it runs on the S3 data set's test split


# ------------------------------------------------------------------------------------ failure config


@pytest.mark.ray
@pytest.mark.parametrize("max_failures", [0, 3, -1])
def test_fit_passes_max_failures_and_resources_to_ray_train(store, monkeypatch, max_failures):
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
                   "train.keep_checkpoints=2")
    out = train.fit(cfg)
    assert out["checkpoint"] is None and out["metrics"] == {"epoch": 0}
    assert seen["loop"] is train.train_loop
    run_config = seen["run_config"]
    assert run_config.failure_config.max_failures == max_failures
    assert run_config.checkpoint_config.num_to_keep == 2
    assert run_config.name == cfg.train.run_name and out["run"] == f"{store}/runs/{cfg.train.run_name}"
    scaling = seen["scaling_config"]
    assert scaling.num_workers == 2 and not scaling.use_gpu and scaling.resources_per_worker == {"CPU": 0.5}
    assert seen["train_loop_config"]["cfg"]["train"]["max_failures"] == max_failures
