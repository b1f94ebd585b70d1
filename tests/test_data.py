"""The Ray Data pipeline: shapes, ranges, pair alignment, seeded determinism, skipped rows, views, S3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_ganime import images, shards
from ray_ganime.config import DataConfig
from ray_ganime.data import ShardData, zip_domains

pytestmark = pytest.mark.ray
SIZE = 32


def write_pairs(dest: str, n: int = 24, corrupt: int = 0) -> None:
    """Pairs whose colour is the exact negative of the sketch, so alignment is checkable pixel by pixel."""
    with shards.ShardWriter(dest, "paired") as w:
        for i in range(n):
            sketch = np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            w.write({"id": f"p{i:03d}", "split": "train" if i % 4 else "test", "width": SIZE, "height": SIZE,
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
    a = data.iter_batches(data.dataset("train", domain="A"))
    b = data.iter_batches(data.dataset("train", domain="B"))
    steps = list(zip_domains(a, b))
    assert len(steps) == 5  # the longer domain's pass; B (2 batches) restarts
    for x, y in steps:
        assert (x["image"] == -1).all() and (y["image"] == 1).all()


@pytest.mark.s3
def test_streams_from_s3(s3_bucket, ray_session):
    uri = f"{s3_bucket}/pairs"
    write_pairs(uri, n=8)
    data = ShardData(uri, cfg(batch_size=2))
    batches = epoch(data, 0)
    assert sum(len(b["id"]) for b in batches) == 6
