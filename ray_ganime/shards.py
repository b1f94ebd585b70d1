"""Image data sets as Parquet shards plus a JSON manifest, on any store.

Layout of a data set folder::

    manifest.json                     # written last: its presence means the data set is complete
    train/part-00000.parquet ...      # paired and folder data sets
    train/A/part-00000.parquet ...    # unpaired data sets: one folder per domain, so each streams alone
    val/... test/...                  # held-out splits, where the source has them

One row per example: the encoded image bytes as they came (no re-encode unless a resize was asked),
``id``, ``split``, ``width``/``height``, ``source`` and the per-layout columns below.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_ganime import __version__, storage

MANIFEST = "manifest.json"
FORMAT = "ray-ganime-shards"
SPLITS = ("train", "val", "test")
# Folder names that give a split, as data sets ship them (the anime sketch pairs have train/ and val/).
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
DOMAINS = ("A", "B")

# Which encoded-image columns each kind of data set has, and the extra columns that describe a row.
IMAGE_COLUMNS = {"paired": ("sketch", "color"), "unpaired": ("image",), "folder": ("image",)}
EXTRA_COLUMNS = {"paired": (), "unpaired": (("domain", pa.string()),), "folder": (("label", pa.string()),)}


def schema(kind: str) -> pa.Schema:
    if kind not in IMAGE_COLUMNS:
        raise ValueError(f"unknown data set kind {kind!r}; expected one of {sorted(IMAGE_COLUMNS)}")
    fields = [pa.field("id", pa.string()), pa.field("split", pa.string())]
    fields += [pa.field(name, pa.binary()) for name in IMAGE_COLUMNS[kind]]
    fields += [pa.field(name, typ) for name, typ in EXTRA_COLUMNS[kind]]
    fields += [pa.field("width", pa.int32()), pa.field("height", pa.int32()), pa.field("source", pa.string())]
    return pa.schema(fields)


def assign_splits(ids: Iterable[str], seed: int, test_fraction: float) -> dict[str, str]:
    """A seeded split with an exact test share, independent of the order ids arrive in."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    ordered = sorted(set(ids))
    n_test = int(round(len(ordered) * test_fraction))
    order = np.random.default_rng(seed).permutation(len(ordered))
    test = {ordered[i] for i in order[:n_test]}
    return {i: ("test" if i in test else "train") for i in ordered}


def split_of(folder_name: str) -> str | None:
    """The split a source folder name gives (``Validation`` -> "val"), or None."""
    return SPLIT_NAMES.get(folder_name.lower())


def held_out_split(manifest: dict, prefer: tuple[str, ...] = ("test", "val")) -> str | None:
    """The split kept out of training that evaluation and sample grids use: test where the data set has
    one, else val; None when it has neither."""
    present = {key.split("/", 1)[0] for key, n in manifest["counts"].items() if n}
    return next((s for s in prefer if s in present), None)


def shard_folder(split: str, domain: str | None = None) -> str:
    return f"{split}/{domain}" if domain else split


@dataclass
class _OpenShard:
    folder: str
    index: int = 0
    rows: list[dict] = field(default_factory=list)
    buffered_bytes: int = 0
    writer: pq.ParquetWriter | None = None
    path: str = ""
    shard_rows: int = 0
    shard_bytes: int = 0


class ShardWriter:
    """Streams rows into size-bounded Parquet shards; ``close()`` writes the manifest last.

    Shards are written under a temporary name and renamed when complete (local stores); on S3 an
    object only appears when its upload completes. Either way a crash never leaves a shard or a
    manifest that looks complete but is not.
    """

    def __init__(self, dest: str, kind: str, *, shard_bytes: int = 128 << 20, row_group_bytes: int = 16 << 20,
                 options: storage.StoreOptions | None = None, info: dict[str, Any] | None = None):
        self.dest = storage.join(dest)
        self.kind = kind
        self.schema = schema(kind)
        self.shard_bytes = shard_bytes
        self.row_group_bytes = min(row_group_bytes, shard_bytes)
        self.options = options
        self.info = dict(info or {})
        self.location = storage.resolve(self.dest, options)
        self._open: dict[str, _OpenShard] = {}
        self.shards: list[dict] = []
        self.counts: dict[str, int] = {}
        self.skipped: list[dict] = []
        storage.check_writable(self.dest, options)
        if storage.exists(storage.join(self.dest, MANIFEST), options):
            raise FileExistsError(f"{self.dest} already holds a data set ({MANIFEST}); choose another destination")

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def skip(self, source: str, reason: str) -> None:
        self.skipped.append({"source": source, "reason": reason})

    def write(self, row: dict) -> None:
        split = row["split"]
        if split not in SPLITS:
            raise ValueError(f"row {row.get('id')!r}: split must be one of {SPLITS}, got {split!r}")
        folder = shard_folder(split, row.get("domain") if self.kind == "unpaired" else None)
        shard = self._open.setdefault(folder, _OpenShard(folder))
        shard.rows.append(row)
        shard.buffered_bytes += sum(len(row[c]) for c in IMAGE_COLUMNS[self.kind])
        key = f"{split}/{row['domain']}" if self.kind == "unpaired" else split
        self.counts[key] = self.counts.get(key, 0) + 1
        if shard.buffered_bytes >= self.row_group_bytes:
            self._flush(shard)
        if shard.shard_bytes >= self.shard_bytes:
            self._finish_shard(shard)

    def _flush(self, shard: _OpenShard) -> None:
        if not shard.rows:
            return
        if shard.writer is None:
            shard.path = f"{shard.folder}/part-{shard.index:05d}.parquet"
            target = self.location.child(self._temp_name(shard.path)).path
            self.location.pa_fs.create_dir(self.location.child(shard.folder).path, recursive=True)
            shard.writer = pq.ParquetWriter(target, self.schema, filesystem=self.location.pa_fs,
                                            compression="none")  # PNG/JPEG bytes do not compress further
        columns = {name: [r.get(name) for r in shard.rows] for name in self.schema.names}
        shard.writer.write_table(pa.table(columns, schema=self.schema))
        shard.shard_rows += len(shard.rows)
        shard.shard_bytes += shard.buffered_bytes
        shard.rows, shard.buffered_bytes = [], 0

    def _temp_name(self, path: str) -> str:
        # S3 uploads are atomic by themselves; local files get a hidden temporary name until complete.
        if storage.is_remote(self.dest):
            return path
        folder, _, name = path.rpartition("/")
        return f"{folder}/.{name}.tmp"

    def _finish_shard(self, shard: _OpenShard) -> None:
        self._flush(shard)
        if shard.writer is None:
            return
        shard.writer.close()
        temp = self._temp_name(shard.path)
        if temp != shard.path:
            self.location.pa_fs.move(self.location.child(temp).path, self.location.child(shard.path).path)
        size = self.location.pa_fs.get_file_info(self.location.child(shard.path).path).size
        self.shards.append({"path": shard.path, "rows": shard.shard_rows, "bytes": size})
        shard.writer, shard.index = None, shard.index + 1
        shard.shard_rows = shard.shard_bytes = 0

    def abort(self) -> None:
        for shard in self._open.values():
            if shard.writer is not None:
                shard.writer.close()
                temp = self.location.child(self._temp_name(shard.path))
                if temp.uri != self.location.child(shard.path).uri:
                    storage.remove(temp.uri, options=self.options)
        self._open.clear()

    def close(self) -> dict:
        for shard in self._open.values():
            self._finish_shard(shard)
        self._open.clear()
        total = sum(self.counts.values())
        if total == 0:
            raise ValueError(f"no usable images for {self.dest}: nothing was written "
                             f"({len(self.skipped)} files skipped)")
        manifest = {
            "format": FORMAT,
            "version": 1,
            "kind": self.kind,
            "columns": self.schema.names,
            "image_columns": list(IMAGE_COLUMNS[self.kind]),
            "counts": dict(sorted(self.counts.items())),
            "total": total,
            "shards": sorted(self.shards, key=lambda s: s["path"]),
            "skipped": self.skipped,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tool": f"ray-ganime {__version__}",
            **self.info,
        }
        storage.write_json(storage.join(self.dest, MANIFEST), manifest, self.options)
        return manifest


def read_manifest(uri: str, options: storage.StoreOptions | None = None) -> dict:
    path = storage.join(uri, MANIFEST)
    if not storage.exists(path, options):
        raise storage.StorageError(f"{storage.join(uri)}: not a ray-ganime data set (no {MANIFEST}); "
                                   f"create one with `ganime data ingest` or `ganime data synth`")
    manifest = storage.read_json(path, options)
    if manifest.get("format") != FORMAT:
        raise storage.StorageError(f"{path}: unknown manifest format {manifest.get('format')!r}")
    return manifest


def shard_paths(uri: str, manifest: dict, split: str, domain: str | None = None) -> list[str]:
    """Full URIs of the shards of one split (and domain), as the manifest lists them."""
    folder = shard_folder(split, domain)
    return [storage.join(uri, s["path"]) for s in manifest["shards"] if s["path"].rsplit("/", 1)[0] == folder]


def read_rows(uri: str, split: str | None = None, limit: int | None = None,
              options: storage.StoreOptions | None = None, domain: str | None = None) -> list[dict]:
    """Rows as Python dicts, without Ray (inspection, tests, small tools); ``domain``: one of an unpaired
    data set's (needs ``split``)."""
    manifest = read_manifest(uri, options)
    location = storage.resolve(uri, options)
    prefix = shard_folder(split, domain) + "/" if split is not None else ""
    rows: list[dict] = []
    for shard in manifest["shards"]:
        if not shard["path"].startswith(prefix):
            continue
        try:
            parquet = pq.ParquetFile(location.child(shard["path"]).path, filesystem=location.pa_fs)
            for batch in parquet.iter_batches(batch_size=64):
                rows.extend(batch.to_pylist())
                if limit is not None and len(rows) >= limit:
                    return rows[:limit]
        except (pa.ArrowException, OSError) as e:
            raise storage.translate_error(location.child(shard["path"]).uri, e, options) from e
    return rows


def check_shards(uri: str, manifest: dict, split: str, domain: str | None = None,
                 options: storage.StoreOptions | None = None) -> None:
    """Raise, naming the shard, if a shard of one split (and domain) is missing or not the size the manifest
    records: Ray Data fails on such a file in a read task, with an error that names no file. One listing."""
    folder = shard_folder(split, domain)
    location = storage.resolve(uri, options)
    selector = pafs.FileSelector(location.child(folder).path, allow_not_found=True)
    try:
        sizes = {info.path: info.size for info in location.pa_fs.get_file_info(selector)}
    except OSError as e:
        raise storage.translate_error(location.child(folder).uri, e, options) from e
    for listed in manifest["shards"]:
        if listed["path"].rsplit("/", 1)[0] != folder:
            continue
        shard = location.child(listed["path"])
        size = sizes.get(shard.path)
        if size is None:
            raise storage.StorageError(f"{shard.uri}: shard listed in {MANIFEST} is missing; re-create the data set")
        if size != listed["bytes"]:
            raise storage.StorageError(f"{shard.uri}: shard is {size} bytes but {MANIFEST} records {listed['bytes']} "
                                       f"(truncated or replaced); re-create the data set")


def describe(manifest: dict) -> str:
    """A short human summary of a manifest (counts, shards, skipped files)."""
    lines = [f"kind: {manifest['kind']}   examples: {manifest['total']}   shards: {len(manifest['shards'])} "
             f"({sum(s['bytes'] for s in manifest['shards']) / 1e6:.1f} MB)"]
    for key, n in manifest["counts"].items():
        lines.append(f"  {key:<10} {n}")
    ignored = manifest.get("ignored") or []
    if ignored:
        lines.append(f"ignored {len(ignored)} entries of the source folder:")
        lines += [f"  {s['path']}: {s['reason']}" for s in ignored]
    if manifest["skipped"]:
        lines.append(f"skipped {len(manifest['skipped'])} files:")
        lines += [f"  {s['source']}: {s['reason']}" for s in manifest["skipped"][:20]]
        if len(manifest["skipped"]) > 20:
            lines.append(f"  ... and {len(manifest['skipped']) - 20} more (see manifest.json)")
    return "\n".join(lines)


def manifest_json(manifest: dict) -> str:
    return json.dumps(manifest, indent=2)
