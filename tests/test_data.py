"""The Ray Data pipeline: shapes, ranges, pair alignment, seeded determinism, skipped rows, views, S3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch import nn

from ray_ganime import evaluate, images, shards, storage
from ray_ganime.config import DataConfig
from ray_ganime.data import ShardData
from ray_ganime.recipes import Direction

pytestmark = pytest.mark.ray
SIZE = 32


def write_pairs(dest: str, n: int = 24, corrupt: int = 0, held_out: str = "test", shard_bytes: int = 128 << 20) -> None:
    """Pairs whose colour is the exact negative of the sketch, so alignment is checkable pixel by pixel."""
    with shards.ShardWriter(dest, "paired", shard_bytes=shard_bytes) as w:
        for i in range(n):
            sketch = np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            w.write({"id": f"p{i:03d}", "split": "train" if i % 4 else held_out, "width": SIZE, "height": SIZE,
                     "source": "test", "sketch": images.encode_png(sketch), "color": images.encode_png(255 - sketch)})
        for i in range(corrupt):  # rows that got past ingest broken (e.g. written by another tool)
            w.write({"id": f"bad{i}", "split": "train", "width": SIZE, "height": SIZE, "source": "test",
                     "sketch": b"\x89PNG broken", "color": b""})


@pytest.fixture
def pairs(tmp_path, ray_session):
    uri = str(tmp_path / "pairs")
    write_pairs(uri, corrupt=2)
    return uri


def cfg(**kw) -> DataConfig:
    base = dict(load_size=SIZE, crop_size=24, batch_size=4, shuffle_buffer=8, map_batch_size=4, seed=7)
    return DataConfig(**{**base, **kw})


def epoch(data: ShardData, e: int, train: bool = True, split: str = "train") -> list[dict]:
    return list(data.iter_batches(data.dataset(split, train=train), epoch=e, train=train))


def test_batches_have_shapes_range_and_aligned_pairs(pairs):
    data = ShardData(pairs, cfg())
    batches = epoch(data, 0)
    assert sum(len(b["id"]) for b in batches) == 16  # 18 train rows minus 2 that do not decode; drop_last
    for b in batches:
        for col in ("sketch", "color"):
            assert b[col].shape == (4, 3, 24, 24) and b[col].dtype == torch.float32
            assert b[col].min() >= -1 and b[col].max() <= 1
        # same crop and flip on both halves: colour stays the exact negative of the sketch
        torch.testing.assert_close(b["sketch"] + b["color"], torch.zeros_like(b["sketch"]), atol=1e-6, rtol=0)
    count, reasons = data.skipped()
    assert count == 2 and all(r.startswith("bad") for r in reasons)


def test_same_seed_same_batches_new_epoch_new_batches(pairs):
    a, b = ShardData(pairs, cfg()), ShardData(pairs, cfg())
    first, again, next_epoch = epoch(a, 0), epoch(b, 0), epoch(a, 1)
    assert [x["id"] for x in first] == [x["id"] for x in again]
    for x, y in zip(first, again):
        assert torch.equal(x["sketch"], y["sketch"])
    assert [x["id"] for x in first] != [x["id"] for x in next_epoch] or not all(
        torch.equal(x["sketch"], y["sketch"]) for x, y in zip(first, next_epoch))
    other_seed = epoch(ShardData(pairs, cfg(seed=8)), 0)
    assert [x["id"] for x in first] != [x["id"] for x in other_seed]


def test_eval_has_no_jitter(pairs):
    data = ShardData(pairs, cfg(crop_size=SIZE))
    one, two = epoch(data, 0, train=False, split="test"), epoch(data, 5, train=False, split="test")
    assert sum(len(b["id"]) for b in one) == 6  # eval keeps the last partial batch
    for x, y in zip(one, two):
        assert x["id"] == y["id"] and torch.equal(x["sketch"], y["sketch"])
    row = shards.read_rows(pairs, split="test", limit=1)[0]
    expected = torch.from_numpy(images.decode_rgb(row["sketch"]).copy()).permute(2, 0, 1).float() / 127.5 - 1
    got = {i: t for b in one for i, t in zip(b["id"], b["sketch"])}[row["id"]]
    torch.testing.assert_close(got, expected)


def test_views_are_derived_per_column(pairs):
    data = ShardData(pairs, cfg(views={"color": ["gray", "smooth_gray"], "sketch": ["lineart"]}))
    (b, *_) = epoch(data, 0)
    assert {"color_gray", "color_smooth_gray", "sketch_lineart"} <= set(b)
    gray = b["color_gray"]
    assert gray.shape == b["color"].shape
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    with pytest.raises(ValueError, match="lacks"):
        ShardData(pairs, cfg(views={"image": ["gray"]}))


def test_unpaired_streams_each_domain(tmp_path, ray_session):
    uri = str(tmp_path / "unpaired")
    with shards.ShardWriter(uri, "unpaired") as w:
        for i in range(14):
            domain = "A" if i < 10 else "B"
            value = 0 if domain == "A" else 255
            w.write({"id": f"{domain}{i}", "split": "train", "domain": domain, "width": 16, "height": 16,
                     "source": "t", "image": images.encode_png(np.full((16, 16, 3), value, np.uint8))})
    data = ShardData(uri, cfg(load_size=16, crop_size=16, batch_size=2))
    with pytest.raises(ValueError, match="domain"):
        data.dataset("train")
    assert data.count("train") == 14 and data.count("train", "A") == 10
    sources = data.stream_datasets({"A": "A", "B": "B"})
    steps = list(data.train_batches(sources, {"A": "A", "B": "B"}, epoch=0))
    assert len(steps) == 5  # the longer domain's pass; B (2 batches) restarts
    for batch in steps:
        assert (batch["A"] == -1).all() and (batch["B"] == 1).all() and "image" not in batch
        assert batch["id"] == batch["id_A"] and all(i.startswith("B") for i in batch["id_B"])
    decoded = data.decoded("train", ["A", "B"], 3)
    assert decoded["A"].shape == (3, 16, 16, 3) and (decoded["A"] == 0).all() and (decoded["B"] == 255).all()


@pytest.mark.s3
def test_streams_from_s3(s3_bucket, ray_session):
    uri = f"{s3_bucket}/pairs"
    write_pairs(uri, n=8)
    data = ShardData(uri, cfg(batch_size=2))
    batches = epoch(data, 0)
    assert sum(len(b["id"]) for b in batches) == 6


def test_a_damaged_shard_is_named_before_ray_reads_it(tmp_path, ray_session):
    uri = str(tmp_path / "pairs")
    write_pairs(uri, n=16, shard_bytes=4 * len(images.encode_png(np.zeros((SIZE, SIZE, 3), np.uint8))))
    train = [s["path"] for s in shards.read_manifest(uri)["shards"] if s["path"].startswith("train/")]
    assert len(train) >= 2  # Ray Data inspects only the first file itself; the damage is in a later one
    shard = tmp_path / "pairs" / train[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    data = ShardData(uri, cfg())
    with pytest.raises(storage.StorageError, match="truncated or replaced") as caught:
        epoch(data, 0)
    assert str(caught.value).startswith(f"{shard}: shard is ") and "\n" not in str(caught.value)
    shard.unlink()
    with pytest.raises(storage.StorageError, match=f"^{shard}: shard listed in manifest.json is missing"):
        data.dataset("train")


@pytest.mark.filterwarnings("ignore:FID computed from only:UserWarning", "ignore:RANDOM-INIT INCEPTION:UserWarning")
def test_evaluation_without_a_test_split_uses_val(tmp_path, ray_session):
    uri = str(tmp_path / "train-val")
    write_pairs(uri, n=12, held_out="val")  # p000, p004, p008 are val: as the anime sketch pairs ship
    data = ShardData(uri, cfg(crop_size=SIZE))
    assert data.held_out_split() == "val" and data.held_out_split("train") == "train"
    result = evaluate.evaluate_generator(nn.Identity(), data, Direction("G", "sketch", "sketch", paired=True),
                                         fid_weights="random", batch_size=4)
    assert result["split"] == "val" and result["num_images"] == 3
    write_pairs(str(tmp_path / "train-only"), n=4, held_out="train")
    with pytest.raises(ValueError, match="no held-out split"):
        ShardData(str(tmp_path / "train-only"), cfg()).held_out_split()
