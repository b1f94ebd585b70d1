"""Local image folders (and the built-in synthetic generator) -> Parquet shards on any store.

Layouts:
  paired-concat  every file is colour | sketch side by side (the anime sketch colourisation pair set)
  paired-dirs    A/ and B/ with matching file names (optionally A/train, A/val, A/test, ...)
  unpaired       trainA/ trainB/ (valA/ valB/) testA/ testB/ (CycleGAN); or A/ B/ with a seeded split
  folder         one folder of images, sub-folders become labels; train/ val/ test/ on top give the split

Split folders may also be named valid/ or validation/ (stored as split "val"). A file that is empty,
truncated, corrupt or not an image is skipped and listed in the manifest; a top-level entry the layout
reads nothing from is listed there as ignored; ingest fails only when nothing usable is found.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from ray_ganime import images, shards, storage, transforms

LAYOUTS = ("paired-concat", "paired-dirs", "unpaired", "folder")
KIND_OF_LAYOUT = {"paired-concat": "paired", "paired-dirs": "paired", "unpaired": "unpaired", "folder": "folder"}


@dataclass
class IngestOptions:
    test_fraction: float = 0.2  # used where the folder layout gives no split
    seed: int = 0
    color_side: str = "left"  # paired-concat: which half is the colour image
    a_is: str = "sketch"  # paired-dirs: what A/ holds (B/ holds the other)
    max_side: int | None = None  # downscale larger images (re-encoded as PNG); None keeps the original bytes
    shard_mb: int = 128
    workers: int = min(8, os.cpu_count() or 1)


@dataclass
class Candidate:
    """One example to be: its id, its source file(s), and what the layout says about it."""

    id: str
    sources: tuple[Path, ...]
    split: str | None = None
    extra: dict = field(default_factory=dict)


def _image_files(folder: Path) -> list[Path]:
    """Files under ``folder``, and links to files that are gone (so that they are listed as skipped, with why)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() or (p.is_symlink() and not p.exists()))


def _rel_id(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _split_folders(root: Path) -> dict[Path, str]:
    """The folders directly under ``root`` that give a split (train/, val/ or valid/ ..., test/), with it."""
    return {p: split for p in sorted(root.iterdir()) if p.is_dir() and (split := shards.split_of(p.name))}


def _unpaired_folders(src: Path) -> dict[Path, tuple[str | None, str]]:
    """trainA/ valB/ ... -> (split, domain); without any, A/ and B/ -> (None, domain)."""
    found = {p: (split, p.name[-1]) for p in sorted(src.iterdir())
             if p.is_dir() and p.name[-1:] in shards.DOMAINS and (split := shards.split_of(p.name[:-1]))}
    return found or {src / d: (None, d) for d in shards.DOMAINS if (src / d).is_dir()}


def ignored_entries(layout: str, src: Path) -> list[dict]:
    """The top-level entries of ``src`` that ``layout`` reads nothing from, each with why: never dropped silently."""
    if layout == "paired-dirs":
        read, expected = {src / "A", src / "B"}, "A/ and B/"
    elif layout == "unpaired":
        read, expected = set(_unpaired_folders(src)), "trainA/ trainB/ (valA/ valB/ testA/ testB/), or A/ B/"
    else:
        read, expected = set(_split_folders(src)), "the split folders train/, val/ (valid/, validation/), test/"
        if not read:
            return []  # no split folders: every file under src is read
    return [{"path": p.name + "/" * p.is_dir(), "reason": f"not read: layout {layout} reads {expected}"}
            for p in sorted(src.iterdir()) if p not in read]


def candidates(layout: str, src: Path, opts: IngestOptions) -> list[Candidate]:
    if layout == "paired-concat":
        roots = _split_folders(src) or {src: None}
        return [Candidate(_rel_id(p, src), (p,), split) for root, split in roots.items() for p in _image_files(root)]
    if layout == "paired-dirs":
        a_root, b_root = src / "A", src / "B"
        for d in (a_root, b_root):
            if not d.is_dir():
                raise FileNotFoundError(f"{src}: layout paired-dirs needs folders A/ and B/ (missing {d.name}/)")
        b_by_stem = {p.relative_to(b_root).with_suffix("").as_posix(): p for p in _image_files(b_root)}
        out = []
        for a in _image_files(a_root):
            key = a.relative_to(a_root).with_suffix("").as_posix()
            split = shards.split_of(key.split("/", 1)[0]) if "/" in key else None
            b = b_by_stem.pop(key, None)
            out.append(Candidate(key, (a, b) if b else (a,), split))
        out += [Candidate(key, (b,), None, {"orphan": True}) for key, b in sorted(b_by_stem.items())]
        return out
    if layout == "unpaired":
        folders = _unpaired_folders(src)
        if {d for _, d in folders.values()} != set(shards.DOMAINS):
            raise FileNotFoundError(f"{src}: layout unpaired needs trainA/ trainB/ (valA/ valB/ testA/ testB/) "
                                    f"or A/ B/ folders")
        return [Candidate(_rel_id(p, src), (p,), split, {"domain": d})
                for root, (split, d) in folders.items() for p in _image_files(root)]
    if layout == "folder":
        roots = _split_folders(src) or {src: None}
        out = []
        for root, split in roots.items():
            for p in _image_files(root):
                parts = p.relative_to(root).parts
                out.append(Candidate(_rel_id(p, src), (p,), split, {"label": parts[0] if len(parts) > 1 else None}))
        return out
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def _fit(data: bytes, max_side: int | None) -> tuple[bytes, int, int]:
    """Validate by decoding fully; keep the original bytes unless a resize was asked for."""
    image = images.decode_rgb(data)
    small = transforms.fit_max_side(image, max_side)
    if small is not image:
        return images.encode_png(small), small.shape[1], small.shape[0]
    return data, image.shape[1], image.shape[0]


def _process(layout: str, c: Candidate, opts: IngestOptions) -> dict:
    """Candidate -> shard row (without split); raises BadImage / ValueError with the reason to skip."""
    if c.extra.get("orphan"):
        raise ValueError("no matching file in A/")
    for p in c.sources:
        if p.is_symlink() and not p.exists():
            raise ValueError(f"a symbolic link to a file that does not exist ({os.readlink(p)})")
    if layout == "paired-concat":
        image = images.decode_rgb(c.sources[0].read_bytes())
        h, w = image.shape[:2]
        if w < 2 * 4 or w % 2:
            raise ValueError(f"width {w} cannot be split into two equal halves")
        left, right = image[:, : w // 2], image[:, w // 2:]
        color, sketch = (left, right) if opts.color_side == "left" else (right, left)
        color, sketch = transforms.fit_max_side(color, opts.max_side), transforms.fit_max_side(sketch, opts.max_side)
        # Halves of one file must be re-encoded; PNG keeps them lossless (line art stays crisp).
        return {"id": c.id, "sketch": images.encode_png(sketch), "color": images.encode_png(color),
                "width": sketch.shape[1], "height": sketch.shape[0], "source": str(c.sources[0])}
    if layout == "paired-dirs":
        if len(c.sources) < 2:
            raise ValueError("no matching file in B/")
        (a, wa, ha), (b, wb, hb) = (_fit(p.read_bytes(), opts.max_side) for p in c.sources)
        if (wa, ha) != (wb, hb):
            raise ValueError(f"A is {wa}x{ha} but B is {wb}x{hb}; a pair must have one geometry")
        sketch, color = (a, b) if opts.a_is == "sketch" else (b, a)
        return {"id": c.id, "sketch": sketch, "color": color, "width": wa, "height": ha,
                "source": f"{c.sources[0]} | {c.sources[1]}"}
    data, w, h = _fit(c.sources[0].read_bytes(), opts.max_side)
    return {"id": c.id, "image": data, "width": w, "height": h, "source": str(c.sources[0]), **c.extra}


def ingest(layout: str, src: str | Path, dest: str, opts: IngestOptions | None = None,
           store_options: storage.StoreOptions | None = None, progress: bool = True) -> dict:
    """Read a local folder in one of LAYOUTS and write a shard data set to ``dest`` (any store)."""
    opts = opts or IngestOptions()
    src = Path(src).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: source folder does not exist")
    items = candidates(layout, src, opts)
    if not items:
        raise ValueError(f"{src}: no files found for layout {layout}")
    splits = _complete_splits(items, opts)
    info = {"source": str(src), "ingest": {"layout": layout, **{k: v for k, v in vars(opts).items() if k != "workers"}},
            "ignored": ignored_entries(layout, src)}
    with shards.ShardWriter(dest, KIND_OF_LAYOUT[layout], shard_bytes=opts.shard_mb << 20,
                            options=store_options, info=info) as writer:
        def work(c: Candidate):
            try:
                return c, _process(layout, c, opts), None
            except (images.BadImage, ValueError, OSError) as e:
                return c, None, str(e)

        # Decoding releases the GIL, so threads are enough to keep several cores busy.
        with ThreadPoolExecutor(max(1, opts.workers)) as pool:
            for c, row, error in tqdm(pool.map(work, items), total=len(items), desc=f"ingest {src.name}",
                                      unit="img", disable=not progress):
                if error is not None:
                    writer.skip(" | ".join(str(p.relative_to(src)) for p in c.sources), error)
                else:
                    writer.write({**row, "split": splits[c.id]})
        return writer.close()


def _complete_splits(items: list[Candidate], opts: IngestOptions) -> dict[str, str]:
    """The folder layout's split where it gives one, a seeded split for the rest."""
    unsplit = [c.id for c in items if c.split is None]
    seeded = shards.assign_splits(unsplit, opts.seed, opts.test_fraction) if unsplit else {}
    return {c.id: c.split or seeded[c.id] for c in items}


def write_examples(rows: Iterator[dict], count: int, kind: str, dest: str, *, seed: int, test_fraction: float,
                   shard_mb: int = 128, store_options: storage.StoreOptions | None = None,
                   info: dict | None = None, progress: bool = True) -> dict:
    """Generated rows (e.g. ray_ganime.synth.examples) -> shards, with the same seeded split as ingest."""
    ids = [f"synth-{i:06d}" for i in range(count)]
    splits = shards.assign_splits(ids, seed, test_fraction)
    with shards.ShardWriter(dest, kind, shard_bytes=shard_mb << 20, options=store_options, info=info) as writer:
        for row in tqdm(rows, total=count, desc="synth", unit="img", disable=not progress):
            writer.write({"source": "synthetic", **row, "split": splits[row["id"]]})
        return writer.close()
