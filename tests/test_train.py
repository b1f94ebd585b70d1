"""The training engine end to end on the shared local Ray: DDP sync, exact resume, learning, S3."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from ray_ganime import train
from ray_ganime.config import load_config
from ray_ganime.demo import ensure_synthetic

pytestmark = pytest.mark.ray

DATASET = ("synthetic-paired-300x32", "paired", 300, 32)  # 240 train / 60 test rows


def unique(prefix: str) -> str:
    """A fresh run name: a stale run folder with the same name would silently resume."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_cfg(store, name: str, *overrides: str):
    """A tiny pix2pix run on the synthetic pairs (32 px, ngf/ndf 8, 3 steps of 4 images per epoch)."""
    base = [f"store.uri={store}", f"data.uri={DATASET[0]}", f"train.run_name={name}",
            "recipe=pix2pix", "model.ngf=8", "model.ndf=8",
            "data.load_size=36", "data.crop_size=32", "data.batch_size=4", "data.shuffle_buffer=16",
            "data.map_batch_size=16",
            "train.epochs=2", "train.cpus_per_worker=0.5", "train.max_steps_per_epoch=3",
            "train.checkpoint_every=1", "train.sample_every=100"]
    return load_config(None, [*base, *overrides])


def timed_fit(cfg) -> dict:
    started = time.perf_counter()
    out = train.fit(cfg)
    print(f"fit {cfg.train.run_name}: {time.perf_counter() - started:.1f} s")
    return out


def checkpoint_folder(run: str, epoch: int) -> Path:
    return Path(run) / f"checkpoint_epoch_{epoch:04d}"


def meta(folder) -> dict:
    return json.loads((Path(folder) / train.META_FILE).read_text())


def metrics_lines(run: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((x.double() - y.double()).abs().max().item() if x.is_floating_point() else float(not torch.equal(x, y))
               for x, y in ((a[k], b[k]) for k in a))


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_session) -> str:
    """A local store holding the synthetic pairs, shared by every fit in this module."""
    root = str(tmp_path_factory.mktemp("train-store"))
    ensure_synthetic(*DATASET, make_cfg(root, "unused"))
    return root


# ------------------------------------------------------------------------------------ exact resume

# 64 px crops of the 32 px pairs (upscaled): the U-Net is then deep enough (6 levels) to have a dropout
# layer, so the resumed run must also restore torch's RNG, not only weights, optimisers and schedulers.
RESUME = ("train.epochs=4", "optim.decay_epochs=2", "data.load_size=72", "data.crop_size=64",
          "data.deterministic=true", "train.seed=3", "data.seed=5")


@pytest.fixture(scope="module")
def resume_runs(store) -> dict:
    a = timed_fit(make_cfg(store, unique("resume-a"), *RESUME))
    name_b = unique("resume-b")
    b1 = timed_fit(make_cfg(store, name_b, *RESUME, "train.stop_after=2"))
    b2 = timed_fit(make_cfg(store, name_b, *RESUME))
    return {"a": a, "b1": b1, "b2": b2}


def test_resume_is_exact(resume_runs):
    a, b1, b2 = resume_runs["a"], resume_runs["b1"], resume_runs["b2"]
    assert meta(b1["checkpoint"])["epoch"] == 2
    assert b2["run"] == b1["run"]
    assert meta(a["checkpoint"])["epoch"] == meta(b2["checkpoint"])["epoch"] == 4
    sa, sb = train.load_state(a["checkpoint"]), train.load_state(b2["checkpoint"])
    assert sa["global_step"] == sb["global_step"] == 12
    for net in ("G", "D"):
        print(net, max_abs_diff(sa["recipe"]["nets"][net], sb["recipe"]["nets"][net]))
    print([(m["epoch"], m["lr_G"]) for m in metrics_lines(a["run"])])
    print([(m["epoch"], m["lr_G"]) for m in metrics_lines(b2["run"])])
