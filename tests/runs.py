"""Training-run helpers shared by the test modules (never imported from a test module): run names, the tiny
Pix2Pix config, timed fits, exact resume's three fits, reading back what a run wrote, a run's lease held by
another process, and recipe states compared bitwise."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid

import torch

from ray_ganime import checkpoints, storage, train
from ray_ganime.config import load_config

LEARN_DATASET = ("synthetic-paired-300x32", "paired", 300, 32)  # 240 train / 60 test rows
# Short fits read little (3 steps of 4 images per epoch), but Ray Data decodes the whole split every epoch.
SMALL_DATASET = ("synthetic-paired-48x32", "paired", 48, 32)


def unique(prefix: str) -> str:
    """A fresh run name: a stale run folder with the same name would silently resume."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def tiny_overrides(store: str, *overrides: str, dataset: str = SMALL_DATASET[0]) -> list[str]:
    """A tiny pix2pix run on synthetic pairs, as config overrides: 32 px, ngf/ndf 8, 2 epochs of 3 steps of 4
    images."""
    return [f"store.uri={store}", f"data.uri={dataset}", "recipe=pix2pix", "model.ngf=8", "model.ndf=8",
            "data.load_size=36", "data.crop_size=32", "data.batch_size=4", "data.shuffle_buffer=16",
            "data.map_batch_size=64", "data.task_cpus=0.5",
            "train.epochs=2", "train.cpus_per_worker=0.5", "train.max_steps_per_epoch=3",
            "train.checkpoint_every=1", "train.sample_every=100", *overrides]


def make_cfg(store: str, name: str, *overrides: str, dataset: str = SMALL_DATASET[0]):
    """``tiny_overrides``' run named ``name``."""
    return load_config(None, tiny_overrides(store, f"train.run_name={name}", *overrides, dataset=dataset))


def timed_fit(cfg) -> dict:
    started = time.perf_counter()
    out = train.fit(cfg)
    print(f"fit {cfg.train.run_name}: {time.perf_counter() - started:.1f} s")
    return out


LOCAL = "train.num_workers=0"  # train in the test process (Ray Train's local mode): no worker actors to start


def stop_and_rerun(make_cfg, store: str, prefix: str, *overrides: str, rerun: tuple[str, ...] = (LOCAL,),
                   uninterrupted: tuple[str, ...] = ()) -> dict:
    """Exact resume's three fits: "a" uninterrupted; "b1" the same run stopped after epoch 2 (train.stop_after);
    "b2" that run re-run under its name to the end. "a" and "b1" train in this process, "b2" with ``rerun``'s
    overrides (``()``: on a Ray Train worker); ``uninterrupted``: more overrides for "a"."""
    a = timed_fit(make_cfg(store, unique(f"{prefix}-a"), *overrides, LOCAL, *uninterrupted))
    name_b = unique(f"{prefix}-b")
    b1 = timed_fit(make_cfg(store, name_b, *overrides, LOCAL, "train.stop_after=2"))
    b2 = timed_fit(make_cfg(store, name_b, *overrides, *rerun))
    return {"a": a, "b1": b1, "b2": b2}


def meta(folder) -> dict:
    return storage.read_json(storage.join(str(folder), checkpoints.META_FILE))


def saved_state(folder) -> dict:
    return checkpoints.load(str(folder))[0]


def metrics_lines(run: str) -> list[dict]:
    text = storage.read_bytes(storage.join(run, "metrics.jsonl")).decode()
    return [json.loads(line) for line in text.splitlines() if line]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a - b| over two state dicts; an integer entry (BN's step counter) counts 1 if it differs."""
    assert a.keys() == b.keys()
    return max((x.double() - y.double()).abs().max().item() if x.is_floating_point() else float(not torch.equal(x, y))
               for x, y in ((a[k], b[k]) for k in a))


def hold_lease_in_another_process(run_uri: str) -> subprocess.Popen:
    """A live process holding ``run_uri``'s lease (as a running `ganime train` would), in its own process group."""
    hold = ("import sys, time\nfrom ray_ganime import lease\nlease.Lease(sys.argv[1]).acquire()\n"
            "print('held', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", hold, run_uri], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def sets(overrides: list[str]) -> list[str]:
    """``--set`` arguments of the CLI for config overrides."""
    return [a for o in overrides for a in ("--set", o)]


# ------------------------------------------------------------------------------------ recipe states


def snapshot(recipe) -> dict[str, dict[str, torch.Tensor]]:
    return {k: {n: t.detach().clone() for n, t in net.state_dict().items()} for k, net in recipe.nets.items()}


def assert_states_equal(a, b, where: str = "") -> None:
    """Bitwise equality of nested state (dicts, lists, tensors, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_states_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_states_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def saved_and_loaded(obj):
    """``obj`` through torch.save and the safe loader (no pickled code)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)
