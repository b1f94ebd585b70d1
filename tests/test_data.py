"""The Ray Data pipeline: shapes, ranges, pair alignment, seeded determinism, skipped rows, views, S3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch import nn

from ray_ganime import evaluate, images, shards, storage, transforms
from ray_ganime.config import DataConfig
from ray_ganime.data import Collate, Pixels, ShardData, device_batch
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
    """One epoch's batches as the trainer's nets see them (float, on the CPU)."""
    return [device_batch(b) for b in data.iter_batches(data.dataset(split, train=train), epoch=e, train=train)]


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
    # Page-locked batches only for a CUDA device (the copy there is asynchronous; elsewhere it is a wasted copy);
    # for a CPU device the collate makes the float tensors itself.
    on_cpu, on_cuda = (ShardData(pairs, cfg(), device=torch.device(d)).collate(0) for d in ("cpu", "cuda:0"))
    assert not data.collate(0).pin_memory and not data.collate(0).on_host
    assert not on_cpu.pin_memory and on_cpu.on_host and on_cuda.pin_memory and not on_cuda.on_host


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
    steps = [device_batch(b) for b in data.train_batches(sources, {"A": "A", "B": "B"}, epoch=0)]
    assert len(steps) == 5  # the longer domain's pass; B (2 batches) restarts
    for batch in steps:
        assert (batch["A"] == -1).all() and (batch["B"] == 1).all() and "image" not in batch
        assert batch["id"] == batch["id_A"] and all(i.startswith("B") for i in batch["id_B"])
    decoded = data.decoded("train", ["A", "B"], 3)
    assert decoded["A"].shape == (3, 16, 16, 3) and (decoded["A"] == 0).all() and (decoded["B"] == 255).all()


@pytest.mark.s3
def test_streams_from_s3_the_very_batches_a_folder_gives(s3_bucket, tmp_path, ray_session):
    """The same data set written to S3 and to a folder: the same rows, crops and pixels, batch for batch."""
    folder = str(tmp_path / "pairs")
    for uri in (f"{s3_bucket}/pairs", folder):
        write_pairs(uri, n=8)
    from_s3, from_folder = (epoch(ShardData(uri, cfg(batch_size=2)), 0) for uri in (f"{s3_bucket}/pairs", folder))
    assert sum(len(b["id"]) for b in from_s3) == 6
    for a, b in zip(from_s3, from_folder, strict=True):
        assert list(a["id"]) == list(b["id"])
        for col in ("sketch", "color"):
            torch.testing.assert_close(a[col], b[col], rtol=0, atol=0)


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
                                         fid_weights="random", batch_size=4, concurrency=0)  # in this process
    assert result["split"] == "val" and result["num_images"] == 3
    write_pairs(str(tmp_path / "train-only"), n=4, held_out="train")
    with pytest.raises(ValueError, match="no held-out split"):
        ShardData(str(tmp_path / "train-only"), cfg()).held_out_split()


# ------------------------------------------------------------------------------- the collate (no Ray)


def rows(n: int, size: int = 12) -> dict[str, np.ndarray]:
    """A numpy batch as Ray hands it to the collate: ids, and a sketch/colour pair of uint8 images."""
    sketch = np.stack([np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8) for i in range(n)])
    return {"id": np.array([f"r{i}" for i in range(n)], dtype=object), "sketch": sketch, "color": 255 - sketch}


def by_id(batches: list[dict], name: str = "sketch") -> dict[str, torch.Tensor]:
    return {i: t for b in batches for i, t in zip(b["id"], device_batch(b)[name])}


def test_collate_hands_over_uint8_and_the_device_crops_by_row_id():
    collate, batch = Collate(crop_size=8, flip=True, seed=7, epoch=0, train=True), rows(16)
    out = collate(batch)
    assert out["id"] == [f"r{i}" for i in range(16)]
    pixels = out["sketch"]
    assert isinstance(pixels, Pixels) and pixels.pixels.dtype == torch.uint8 and pixels.pixels.shape == (16, 12, 12, 3)
    assert not pixels.pixels.is_pinned()  # pinned only when asked (the trainer asks on a CUDA device)
    assert out["color"].crop is pixels.crop  # one window per example, shared by its columns
    params = pixels.crop.numpy()
    assert len({tuple(p[:2]) for p in params}) > 1 and set(params[:, 2]) == {0, 1}
    on_device = device_batch(out)
    for i, (top, left, flip) in enumerate(params):  # bitwise the old host path: numpy crop + flip, to_tensor
        expected = transforms.to_tensor(transforms.crop_flip(batch["sketch"][i], int(top), int(left), 8, bool(flip)))
        assert torch.equal(on_device["sketch"][i], expected)
    torch.testing.assert_close(on_device["sketch"] + on_device["color"], torch.zeros_like(on_device["sketch"]),
                               atol=1e-6, rtol=0)
    assert device_batch(out, channels_last=True)["sketch"].is_contiguous(memory_format=torch.channels_last)

    # Independent of batch grouping: the same rows collated in other batches get the same windows.
    regrouped = [collate({k: v[s] for k, v in batch.items()}) for s in (slice(0, 3), slice(3, 11), slice(11, 16))]
    whole, parts = by_id([out]), by_id(regrouped)
    assert all(torch.equal(whole[i], parts[i]) for i in whole)
    # Another epoch or repeat: other windows for most rows; the same epoch again: the same ones.
    for other in (Collate(8, True, 7, 1, True), Collate(8, True, 7, 0, True, repeat=1)):
        moved = by_id([other(batch)])
        assert sum(not torch.equal(whole[i], moved[i]) for i in whole) >= 12
    again = by_id([Collate(8, True, 7, 0, True)(batch)])
    assert all(torch.equal(whole[i], again[i]) for i in whole)
    # For a CPU device the collate thread does the device's part itself: the same bits.
    host = Collate(8, True, 7, 0, True, on_host=True)(batch)
    assert all(torch.equal(host[k], on_device[k]) for k in ("sketch", "color"))


def test_eval_collate_keeps_the_decoded_window():
    batch = rows(4, size=8)
    out = Collate(crop_size=8, flip=True, seed=7, epoch=3, train=False)(batch)
    assert out["sketch"].crop is None
    assert torch.equal(device_batch(out)["sketch"], transforms.to_tensor(batch["sketch"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_collate_pins_for_cuda():
    out = Collate(crop_size=8, flip=True, seed=7, epoch=0, train=True, pin_memory=True)(rows(4))
    assert out["sketch"].pixels.is_pinned()
    gpu = device_batch(out, "cuda", channels_last=True)["sketch"]
    assert torch.equal(gpu.cpu(), device_batch(out)["sketch"])  # the same bits as the CPU path
