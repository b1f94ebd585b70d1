"""Ingest layouts -> shards: counts, bad files listed, good bytes round-trip exactly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ray_ganime import images, shards, storage
from ray_ganime.ingest import IngestOptions, ingest


def png(seed: int, w: int = 24, h: int = 16) -> bytes:
    return images.encode_png(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def jpeg(seed: int, w: int = 24, h: int = 16) -> bytes:
    return images.encode_jpeg(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def add_bad_files(folder: Path) -> dict[str, str]:
    """Zero-byte, truncated, non-image and garbage files, and a link to a file that is gone; returns name ->
    expected reason fragment."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(png(99, 64, 64)[:200])
    (folder / "notes.txt").write_text("not an image")
    (folder / "garbage.jpg").write_bytes(np.random.default_rng(5).bytes(500))
    (folder / "dangling.png").symlink_to(folder / "deleted.png")
    return {"empty.png": "empty", "truncated.png": "truncated", "notes.txt": "not an image", "garbage.jpg": "not an image",
            "dangling.png": "a symbolic link to a file that does not exist"}


def test_paired_concat_splits_halves_and_lists_bad_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    originals = {}
    for i in range(10):
        color = np.random.default_rng(i).integers(0, 256, (16, 20, 3), dtype=np.uint8)
        sketch = np.random.default_rng(100 + i).integers(0, 256, (16, 20, 3), dtype=np.uint8)
        (src / f"{i:03d}.png").write_bytes(images.encode_png(np.concatenate([color, sketch], axis=1)))
        originals[f"{i:03d}"] = (color, sketch)
    bad = add_bad_files(src)
    manifest = ingest("paired-concat", src, str(tmp_path / "ds"), IngestOptions(seed=3), progress=False)

    assert manifest["kind"] == "paired"
    # the seeded 80/20 split is drawn over the files found (15), before bad ones are dropped
    assert manifest["counts"]["train"] + manifest["counts"]["test"] == 10 and manifest["counts"]["test"] >= 1
    assert sorted(s["source"] for s in manifest["skipped"]) == sorted(bad)
    for s in manifest["skipped"]:
        assert bad[s["source"]] in s["reason"] and "BytesIO" not in s["reason"], s
    rows = shards.read_rows(str(tmp_path / "ds"))
    assert len(rows) == 10
    for row in rows:
        color, sketch = originals[row["id"]]
        np.testing.assert_array_equal(images.decode_rgb(row["color"]), color)
        np.testing.assert_array_equal(images.decode_rgb(row["sketch"]), sketch)
        assert (row["width"], row["height"]) == (20, 16)
    # the manifest is the last thing written and describes every shard on disk
    on_disk = sorted(p.relative_to(tmp_path / "ds").as_posix() for p in (tmp_path / "ds").rglob("*.parquet"))
    assert on_disk == [s["path"] for s in manifest["shards"]]
    assert not list((tmp_path / "ds").rglob("*.tmp"))


def test_paired_concat_color_side_right(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    left = np.zeros((8, 8, 3), np.uint8)
    right = np.full((8, 8, 3), 255, np.uint8)
    (src / "a.png").write_bytes(images.encode_png(np.concatenate([left, right], axis=1)))
    ingest("paired-concat", src, str(tmp_path / "ds"), IngestOptions(color_side="right", test_fraction=0), progress=False)
    (row,) = shards.read_rows(str(tmp_path / "ds"))
    assert images.decode_rgb(row["color"]).min() == 255 and images.decode_rgb(row["sketch"]).max() == 0


def test_paired_dirs_keeps_original_bytes_and_reports_orphans(tmp_path):
    src = tmp_path / "src"
    for split in ("train", "test"):
        for i in range(3):
            (src / "A" / split).mkdir(parents=True, exist_ok=True)
            (src / "B" / split).mkdir(parents=True, exist_ok=True)
            (src / "A" / split / f"{i}.png").write_bytes(png(i))
            (src / "B" / split / f"{i}.jpg").write_bytes(jpeg(50 + i))
    (src / "B" / "train" / "orphan.png").write_bytes(png(7))
    (src / "A" / "train" / "lonely.png").write_bytes(png(8))
    (src / "A" / "train" / "odd.png").write_bytes(png(9, 30, 30))
    (src / "B" / "train" / "odd.png").write_bytes(png(10, 24, 16))
    manifest = ingest("paired-dirs", src, str(tmp_path / "ds"), progress=False)

    assert manifest["counts"] == {"test": 3, "train": 3}
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert "no matching file in A/" in reasons["B/train/orphan.png"]
    assert "no matching file in B/" in reasons["A/train/lonely.png"]
    assert "geometry" in reasons["A/train/odd.png | B/train/odd.png"]
    rows = {r["id"]: r for r in shards.read_rows(str(tmp_path / "ds"))}
    assert rows["train/1"]["sketch"] == png(1)  # A is the sketch side by default; bytes untouched
    assert rows["test/2"]["color"] == jpeg(52)
    assert rows["test/2"]["split"] == "test"


def test_unpaired_takes_split_and_domain_from_folders(tmp_path):
    src = tmp_path / "src"
    sizes = {"trainA": 5, "trainB": 4, "testA": 2, "testB": 1}
    for folder, n in sizes.items():
        (src / folder).mkdir(parents=True)
        for i in range(n):
            (src / folder / f"{i}.png").write_bytes(png(hash(folder) % 1000 + i))
    add_bad_files(src / "trainB")
    manifest = ingest("unpaired", src, str(tmp_path / "ds"), progress=False)
    assert manifest["counts"] == {"test/A": 2, "test/B": 1, "train/A": 5, "train/B": 4}
    assert len(manifest["skipped"]) == 5  # add_bad_files' five
    assert {s["path"].rsplit("/", 1)[0] for s in manifest["shards"]} == {"train/A", "train/B", "test/A", "test/B"}
    for shard in manifest["shards"]:
        table = pq.read_table(tmp_path / "ds" / shard["path"])
        folder = shard["path"].rsplit("/", 1)[0]
        assert set(table["domain"].to_pylist()) == {folder[-1]}
        assert set(table["split"].to_pylist()) == {folder.split("/")[0]}


def test_folder_labels_and_exact_seeded_split(tmp_path):
    src = tmp_path / "faces"
    for label in ("red", "blue"):
        (src / label).mkdir(parents=True)
        for i in range(10):
            (src / label / f"{i}.png").write_bytes(png(i + (100 if label == "red" else 0)))
    m1 = ingest("folder", src, str(tmp_path / "ds1"), IngestOptions(seed=1), progress=False)
    m2 = ingest("folder", src, str(tmp_path / "ds2"), IngestOptions(seed=1), progress=False)
    m3 = ingest("folder", src, str(tmp_path / "ds3"), IngestOptions(seed=2), progress=False)
    assert m1["counts"] == m2["counts"] == {"test": 4, "train": 16} and sum(m3["counts"].values()) == 20
    split_of = lambda uri: {r["id"]: r["split"] for r in shards.read_rows(uri)}
    assert split_of(str(tmp_path / "ds1")) == split_of(str(tmp_path / "ds2"))
    assert split_of(str(tmp_path / "ds1")) != split_of(str(tmp_path / "ds3"))
    labels = {r["id"]: r["label"] for r in shards.read_rows(str(tmp_path / "ds1"))}
    assert labels["red/3"] == "red" and labels["blue/9"] == "blue"


def test_nothing_usable_fails_loudly_and_leaves_no_data_set(tmp_path):
    src = tmp_path / "src"
    add_bad_files(src)
    with pytest.raises(ValueError, match="no usable images"):
        ingest("folder", src, str(tmp_path / "ds"), progress=False)
    assert not (tmp_path / "ds" / shards.MANIFEST).exists()


def test_refuses_to_overwrite_a_data_set(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png(1))
    ingest("folder", src, str(tmp_path / "ds"), progress=False)
    with pytest.raises(FileExistsError):
        ingest("folder", src, str(tmp_path / "ds"), progress=False)


def test_max_side_downscales_large_images(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.png").write_bytes(png(1, 200, 100))
    (src / "small.png").write_bytes(png(2, 20, 10))
    ingest("folder", src, str(tmp_path / "ds"), IngestOptions(max_side=50, test_fraction=0), progress=False)
    rows = {r["id"]: r for r in shards.read_rows(str(tmp_path / "ds"))}
    assert (rows["big"]["width"], rows["big"]["height"]) == (50, 25)
    assert images.decode_rgb(rows["big"]["image"]).shape == (25, 50, 3)
    assert rows["small"]["image"] == png(2, 20, 10)


def test_shard_writer_rolls_shards_by_size_and_abort_leaves_nothing(tmp_path):
    rows = [{"id": f"{i}", "split": "train", "image": png(i, 32, 32), "width": 32, "height": 32, "source": "t"}
            for i in range(12)]
    one = len(rows[0]["image"])
    with shards.ShardWriter(str(tmp_path / "ds"), "folder", shard_bytes=3 * one, row_group_bytes=one) as w:
        for r in rows:
            w.write(r)
    manifest = shards.read_manifest(str(tmp_path / "ds"))
    assert len(manifest["shards"]) >= 3
    assert sum(s["rows"] for s in manifest["shards"]) == 12
    assert [r["image"] for r in shards.read_rows(str(tmp_path / "ds"))] == [r["image"] for r in rows]

    with pytest.raises(RuntimeError):
        with shards.ShardWriter(str(tmp_path / "broken"), "folder", shard_bytes=1 << 30) as w:
            w.write(rows[0])
            raise RuntimeError("crash mid-ingest")
    assert not (tmp_path / "broken" / shards.MANIFEST).exists()
    assert not [p for p in (tmp_path / "broken").rglob("*") if p.is_file()]
    with pytest.raises(storage.StorageError, match="not a ray-ganime data set"):
        shards.read_manifest(str(tmp_path / "broken"))


def test_decode_rgb_applies_the_exif_orientation():
    """A phone's JPEG stored 64 wide x 32 high with Orientation=6 (rotate 90 degrees clockwise to view) decodes
    upright, 32 wide x 64 high, as PIL's ImageOps.exif_transpose shows it; PNG the same way."""
    from PIL import Image

    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :8] = (255, 0, 0)  # a red band on the stored image's left edge: on top once rotated clockwise
    for fmt in ("JPEG", "PNG"):
        exif = Image.Exif()
        exif[0x0112] = 6
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG"
                                                                                  else {}))
        image = images.decode_rgb(buffer.getvalue())
        assert image.shape == (64, 32, 3), fmt
        assert image[:8, :, 0].mean() > 200 and image[-8:, :, 0].mean() < 40, fmt
        plain = io.BytesIO()
        Image.fromarray(stored).save(plain, format=fmt)
        assert images.decode_rgb(plain.getvalue()).shape == (32, 64, 3), fmt  # no tag: as stored


def test_decode_rgb_handles_modes_and_refuses_bombs():
    gray = Image.new("L", (4, 4), 128)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent -> white paper
    for im, expected in ((gray, (128, 128, 128)), (rgba, (255, 255, 255))):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out = images.decode_rgb(buf.getvalue())
        assert out.shape == (4, 4, 3) and tuple(out[0, 0]) == expected
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # tiny file, 400 Mpx when decoded
    with pytest.raises(images.BadImage, match="pixel"):
        images.decode_rgb(bomb.getvalue())


def _tree(src: Path, files: dict[str, int]) -> None:
    """``files``: folder (relative to src) -> how many distinct PNGs to put in it."""
    for folder, n in files.items():
        (src / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (src / folder / f"{i}.png").write_bytes(png(sum(map(ord, folder)) * 100 + i, 24, 16))


def _ids(folder: str, n: int) -> set[str]:
    return {f"{folder}/{i}" for i in range(n)}


@pytest.mark.parametrize("layout, files, counts, val_ids, ignored", [
    # the anime sketch colourisation pairs ship data/train/ and data/val/
    ("paired-concat", {"train": 5, "val": 3, "extras": 2}, {"train": 5, "val": 3}, _ids("val", 3),
     ["extras/", "notes.txt"]),
    ("folder", {"train/cat": 4, "validation/cat": 2, "test/cat": 1, "misc": 1},
     {"train": 4, "val": 2, "test": 1}, _ids("validation/cat", 2), ["misc/", "notes.txt"]),
    ("paired-dirs", {"A/train": 4, "B/train": 4, "A/valid": 3, "B/valid": 3, "C": 1},
     {"train": 4, "val": 3}, _ids("valid", 3), ["C/", "notes.txt"]),
    ("unpaired", {"trainA": 4, "trainB": 3, "valA": 2, "valB": 2, "testA": 1, "A": 5},
     {"train/A": 4, "train/B": 3, "val/A": 2, "val/B": 2, "test/A": 1}, _ids("valA", 2) | _ids("valB", 2),
     ["A/", "notes.txt"]),
])
def test_val_folders_are_kept_and_unread_folders_reported(tmp_path, layout, files, counts, val_ids, ignored):
    src = tmp_path / "data"
    _tree(src, files)
    (src / "notes.txt").write_text("not part of any split")
    manifest = ingest(layout, src, str(tmp_path / "ds"), progress=False)

    assert manifest["counts"] == dict(sorted(counts.items())) and not manifest["skipped"]
    assert {r["id"] for r in shards.read_rows(str(tmp_path / "ds"), split="val")} == val_ids  # every one kept
    assert [e["path"] for e in manifest["ignored"]] == ignored
    assert all(f"layout {layout} reads" in e["reason"] for e in manifest["ignored"])
    assert shards.held_out_split(manifest) == ("test" if "test" in {k.split("/")[0] for k in counts} else "val")


def test_ingest_summary_shows_val_and_what_was_ignored(tmp_path, capsys):
    from ray_ganime.cli import main

    src = tmp_path / "data"
    _tree(src, {"train": 3, "val": 2, "extras": 1})
    assert main(["data", "ingest", "--layout", "paired-concat", str(src), str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "  val        2" in out and "ignored 1 entries" in out and "extras/: not read" in out


def test_held_out_split_prefers_test_then_val():
    counts = lambda **c: {"counts": c}
    assert shards.held_out_split(counts(train=5, val=2, test=1)) == "test"
    assert shards.held_out_split(counts(train=5, val=2)) == "val"
    assert shards.held_out_split({"counts": {"train/A": 3, "val/A": 1, "val/B": 1}}) == "val"
    assert shards.held_out_split(counts(train=5)) is None
    assert shards.held_out_split(counts(train=5, val=2, test=1), prefer=("val", "test")) == "val"
