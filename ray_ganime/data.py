"""Shards on any store -> Ray Data -> augmented torch batches for training workers.

Where each stage runs, and why:
- Ray Data tasks (parallel, on any node): decode, resize to ``load_size``, derived views (gray,
  edge-smoothed, normalised line art). These are the expensive, deterministic stages.
- The consumer's collate function (in the training worker): random crop and flip, uint8 -> float in
  [-1, 1]. They are cheap, and keeping them here means uint8 (4x smaller than float32) crosses the
  object store, and the randomness is keyed by (seed, epoch, example ids) alone, so a resumed run
  sees exactly the batches it would have seen.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import cv2
import numpy as np
import ray
from ray.data.collate_fn import NumpyBatchCollateFn

from ray_ganime import images, shards, storage, transforms
from ray_ganime.config import Config, DataConfig

# The columns a task reads, by data set kind.
TASK_COLUMNS = {"paired": ("sketch", "color"), "unpaired": ("image",), "folder": ("image",)}


@ray.remote(num_cpus=0)
class SkipCounter:
    """Counts rows the pipeline had to drop (rows that do not decode), across all Ray Data tasks."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, reasons: list[str]) -> None:
        self.count += len(reasons)
        self.examples.extend(reasons[: max(0, 20 - len(self.examples))])

    def report(self) -> tuple[int, list[str]]:
        return self.count, self.examples


@dataclass(frozen=True)
class DecodeStage:
    """The Ray Data stage: encoded bytes -> uint8 (N, S, S, 3) per image column, plus derived views."""

    columns: tuple[str, ...]
    size: int
    interpolation: str
    views: dict = field(default_factory=dict)
    lineart_target: float = 200.0

    def __call__(self, batch: dict[str, np.ndarray], counter=None) -> dict[str, np.ndarray]:
        cv2.setNumThreads(1)  # one Ray task per CPU already; OpenCV's own threads would oversubscribe
        out: dict[str, list] = {"id": []}
        out.update({c: [] for c in self.columns})
        out.update({f"{c}_{v}": [] for c, vs in self.views.items() for v in vs})
        bad: list[str] = []
        for i, row_id in enumerate(batch["id"]):
            try:
                decoded = {c: transforms.resize(images.decode_rgb(batch[c][i]), self.size, self.interpolation)
                           for c in self.columns}
            except images.BadImage as e:
                bad.append(f"{row_id}: {e}")
                continue
            out["id"].append(row_id)
            for c, image in decoded.items():
                out[c].append(image)
                for view in self.views.get(c, ()):
                    out[f"{c}_{view}"].append(derive(image, view, self.lineart_target))
        if bad and counter is not None:
            counter.add.remote(bad)
        empty = np.zeros((0, self.size, self.size, 3), np.uint8)
        return {k: (np.asarray(v, dtype=object) if k == "id" else (np.stack(v) if v else empty))
                for k, v in out.items()}


def derive(image: np.ndarray, view: str, lineart_target: float) -> np.ndarray:
    if view == "gray":
        return transforms.grayscale(image)
    if view == "smooth":
        return transforms.edge_smooth(image)
    if view == "smooth_gray":
        return transforms.grayscale(transforms.edge_smooth(image))
    if view == "lineart":
        return transforms.normalize_lineart(image, target=lineart_target)
    raise ValueError(f"unknown view {view!r}")


@dataclass(frozen=True)
class Augment(NumpyBatchCollateFn):
    """The collate function: seeded random crop + flip (train only), then float tensors in [-1, 1]."""

    crop_size: int
    flip: bool
    seed: int
    epoch: int
    train: bool

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        ids = [str(i) for i in batch["id"]]
        arrays = {k: v for k, v in batch.items() if k != "id"}
        if self.train:
            # Keyed by the ids in the batch, not by call order: Ray may collate batches in parallel threads.
            rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32("\0".join(ids).encode())])
            arrays = transforms.random_crop_flip_batch(rng, arrays, self.crop_size, self.flip)
        out: dict = {k: transforms.to_tensor(v) for k, v in arrays.items()}
        out["id"] = ids
        return out


class ShardData:
    """One data set on a store, opened for streaming: ``dataset(split)`` for Ray, ``collate`` for workers."""

    def __init__(self, uri: str, data: DataConfig, options: storage.StoreOptions | None = None):
        self.uri = storage.join(uri)
        self.cfg = data
        self.options = options
        self.location = storage.resolve(self.uri, options)
        self.manifest = shards.read_manifest(self.uri, options)
        self.kind = self.manifest["kind"]
        self.columns = TASK_COLUMNS[self.kind]
        unknown = set(data.views) - set(self.columns)
        if unknown:
            raise ValueError(f"data.views names columns {sorted(unknown)} that a {self.kind} data set lacks "
                             f"(it has {list(self.columns)})")
        self._counter = None

    @classmethod
    def from_config(cls, cfg: Config) -> "ShardData":
        return cls(cfg.dataset_uri(), cfg.data, cfg.store.options())

    def count(self, split: str, domain: str | None = None) -> int:
        key = f"{split}/{domain}" if domain else split
        return int(self.manifest["counts"].get(key, 0))

    def held_out_split(self, split: str | None = None) -> str:
        """``split`` if given, else the held-out split (test, else val: shards.held_out_split)."""
        chosen = split or shards.held_out_split(self.manifest)
        if chosen is None:
            raise ValueError(f"{self.uri}: no held-out split (no test/ or val/ examples); name one with eval.split")
        return chosen

    def skip_counter(self):
        if self._counter is None:
            self._counter = SkipCounter.remote()
        return self._counter

    def skipped(self) -> tuple[int, list[str]]:
        """Rows dropped so far because they did not decode (and a few of the reasons)."""
        return ray.get(self._counter.report.remote()) if self._counter is not None else (0, [])

    def dataset(self, split: str, train: bool = True, domain: str | None = None) -> ray.data.Dataset:
        """A streaming dataset of decoded uint8 images at load_size (train) or crop_size (eval)."""
        if self.kind == "unpaired" and domain is None:
            raise ValueError("an unpaired data set streams one domain at a time: pass domain='A' or 'B'")
        paths = [storage.resolve(p, self.options).path for p in shards.shard_paths(self.uri, self.manifest, split, domain)]
        if not paths:
            raise ValueError(f"{self.uri}: no shards for split {split!r}" + (f" domain {domain}" if domain else ""))
        shards.check_shards(self.uri, self.manifest, split, domain, self.options)
        # Shard order is shuffled (seeded, the same every epoch) as files are listed, which keeps the read
        # streaming; per-epoch variety comes from the reseeded local shuffle buffer, so a resumed run
        # sees exactly the batches of an uninterrupted one.
        shuffle = ray.data.FileShuffleConfig(seed=self.cfg.seed, reseed_after_execution=False) if train else None
        ds = ray.data.read_parquet(paths, filesystem=self.location.pa_fs, columns=["id", *self.columns],
                                   shuffle=shuffle, num_cpus=self.cfg.task_cpus)
        # Small shard sets arrive as one block; smaller blocks let the decode stage use every core.
        ds = ds.repartition(target_num_rows_per_block=self.cfg.map_batch_size * 4)
        stage = DecodeStage(self.columns, self.cfg.load_size if train else self.cfg.crop_size,
                            self.cfg.interpolation, dict(self.cfg.views), self.cfg.lineart_target)
        ds = ds.map_batches(stage, batch_size=self.cfg.map_batch_size, batch_format="numpy",
                            fn_kwargs={"counter": self.skip_counter()}, num_cpus=self.cfg.task_cpus)
        ds.context.execution_options.preserve_order = self.cfg.deterministic
        return ds

    def collate(self, epoch: int, train: bool = True) -> Augment:
        return Augment(self.cfg.crop_size, self.cfg.flip and train, self.cfg.seed, epoch, train)

    def iter_batches(self, source: ray.data.Dataset | ray.data.DataIterator, epoch: int = 0, train: bool = True,
                     batch_size: int | None = None, drop_last: bool | None = None) -> Iterable[dict]:
        """Torch batches for one epoch from a dataset or a Ray Train shard (``get_dataset_shard``)."""
        shuffle = self.cfg.shuffle_buffer if train and self.cfg.shuffle_buffer else None
        return source.iter_torch_batches(
            batch_size=batch_size or self.cfg.batch_size,
            collate_fn=self.collate(epoch, train),
            local_shuffle_buffer_size=shuffle,
            local_shuffle_seed=epoch_seed(self.cfg.seed, epoch) if shuffle else None,
            drop_last=train if drop_last is None else drop_last,
            prefetch_batches=2,
        )


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def zip_domains(batches_a: Iterable[dict], batches_b: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
    """Pairs the batches of two independently shuffled domains for unpaired training. An epoch is the
    longer domain's pass; the shorter one restarts (CycleGAN's epoch length is max(|A|, |B|))."""
    sources = (batches_a, batches_b)
    iterators = [iter(s) for s in sources]
    finished = [False, False]
    while True:
        pair = []
        for k in (0, 1):
            try:
                pair.append(next(iterators[k]))
            except StopIteration:
                finished[k] = True
                if all(finished):
                    return
                iterators[k] = iter(sources[k])
                pair.append(next(iterators[k]))
        yield pair[0], pair[1]
