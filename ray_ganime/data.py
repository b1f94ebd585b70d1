"""Shards on any store -> Ray Data -> uint8 torch batches for training workers -> augmented on the device.

Where each stage runs, and why:
- Ray Data tasks (parallel, on any node): decode, resize to ``load_size``, derived views (gray,
  edge-smoothed, normalised line art). These are the expensive, deterministic stages.
- The consumer's collate function (in the training worker, Ray's collate thread): no per-pixel work. It
  wraps Ray's batch as uint8 tensors (pinned when the device is CUDA) and draws each example's crop and
  flip from (seed, epoch, repeat, row id) alone, so a resumed run, another batch grouping or parallel
  collation all see the same windows.
- The device (``Pixels.to``, called by the trainer's ``_to_device``): crop, flip, uint8 -> float in
  [-1, 1] and the memory format. uint8 (4x smaller than float32) crosses the object store and the bus.
  When the device is the CPU itself, the collate thread does this part, overlapping the training step.
  The crop happens here rather than in the Ray Data stage because the pipeline is built once in the
  driver and re-executed each epoch: its tasks cannot know the epoch (or the repeat of a shorter stream)
  that the window must be keyed by.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import cv2
import numpy as np
import ray
from ray.data.collate_fn import NumpyBatchCollateFn

from ray_ganime import images, shards, storage, transforms
from ray_ganime.config import Config, DataConfig
from ray_ganime.skips import SkipCounter

if TYPE_CHECKING:  # torch is imported where it is used: Ray Data's decode workers never need it
    import torch

# The columns a task reads, by data set kind.
TASK_COLUMNS = {"paired": ("sketch", "color"), "unpaired": ("image",), "folder": ("image",)}


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
                    out[f"{c}_{view}"].append(transforms.view(image, view, self.lineart_target))
        if bad and counter is not None:
            # Waited for: a batch is only handed on once its drops are counted, so a report taken after
            # an epoch is exact (fire-and-forget calls from many tasks may land after the epoch ends).
            ray.get(counter.add.remote(bad))
        empty = np.zeros((0, self.size, self.size, 3), np.uint8)
        return {k: (np.asarray(v, dtype=object) if k == "id" else (np.stack(v) if v else empty))
                for k, v in out.items()}


def row_keys(ids) -> np.ndarray:
    """One uint64 per row id (the first 8 bytes of its BLAKE2b): what keys an example's crop and flip."""
    return np.array([int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
                     for i in ids], dtype=np.uint64)


class Pixels:
    """One image entry of a batch as the collate hands it over: uint8 (N, H, W, 3) on the host and, for
    training, each example's crop window and flip (int64 (N, 3): top, left, flip; None: use as is).
    ``to(device)`` makes the float (N, 3, crop, crop) tensor the nets take, on the device."""

    __slots__ = ("pixels", "crop", "size")

    def __init__(self, pixels: torch.Tensor, crop: torch.Tensor | None, size: int):
        self.pixels, self.crop, self.size = pixels, crop, size

    def __len__(self) -> int:
        return len(self.pixels)

    def to(self, device: torch.device | str, channels_last: bool = False) -> torch.Tensor:
        """Copy (non-blocking from pinned memory), crop + flip, then bitwise ``transforms.to_tensor``'s
        values, channels_last memory when asked; every step on ``device``."""
        x = self.pixels.to(device, non_blocking=True)
        if self.crop is not None:
            x = transforms.crop_flip_tensor(x, self.crop, self.size)
        return transforms.to_float(x, channels_last_memory=channels_last)


@dataclass(frozen=True)
class Collate(NumpyBatchCollateFn):
    """The collate function: uint8 ``Pixels`` per image column, with seeded crop + flip params when training."""

    crop_size: int
    flip: bool
    seed: int
    epoch: int
    train: bool
    repeat: int = 0  # the shorter stream's extra passes in an epoch of several streams get crops of their own
    pin_memory: bool = False  # page-locked host memory, for asynchronous copies to a CUDA device
    # The device is this host's CPU: make the float tensors here (what Pixels.to would do in the training
    # thread), so that on a CPU the work overlaps the training step as Ray collates the next batches.
    on_host: bool = False

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        ids = [str(i) for i in batch["id"]]
        out: dict = {"id": ids}
        crop = None
        for name, array in batch.items():
            if name == "id":
                continue
            if crop is None and self.train:
                _, height, width, _ = array.shape
                crop = torch.from_numpy(transforms.keyed_crop_flip_params(
                    row_keys(ids), self.seed, self.epoch, self.repeat, height, width, self.crop_size, self.flip))
            with warnings.catch_warnings():  # Ray's read-only batches: nothing writes into them
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                pixels = torch.from_numpy(array)
            out[name] = Pixels(pixels.pin_memory() if self.pin_memory else pixels, crop, self.crop_size)
        return device_batch(out) if self.on_host else out


def device_batch(batch: dict, device: torch.device | str = "cpu", channels_last: bool = False) -> dict:
    """A collated batch with every ``Pixels`` entry made a float tensor on ``device`` (other entries as they are)."""
    return {k: v.to(device, channels_last) if isinstance(v, Pixels) else v for k, v in batch.items()}


class ShardData:
    """One data set on a store, opened for streaming: ``dataset(split)`` for Ray, ``collate`` for workers."""

    def __init__(self, uri: str, data: DataConfig, options: storage.StoreOptions | None = None,
                 device: torch.device | str | None = None):
        """``device``: where the batches go. CUDA: collated into page-locked memory, which the copy needs to run
        asynchronously (elsewhere pinning would only cost a copy). CPU: collated as float tensors. None
        (default): uint8 ``Pixels`` that ``device_batch`` makes float on any device."""
        self.uri = storage.join(uri)
        kind = None if device is None else str(device).split(":")[0]
        self.pin_memory, self.on_host = kind == "cuda", kind == "cpu"
        self.cfg = data
        self.options = options
        self.location = storage.resolve(self.uri, options)
        self.manifest = shards.read_manifest(self.uri, options)
        self.kind = self.manifest["kind"]
        self.columns = TASK_COLUMNS[self.kind]
        keys = [*self.columns, *(shards.DOMAINS if self.kind == "unpaired" else ())]
        unknown = set(data.views) - set(keys)
        if unknown:
            raise ValueError(f"data.views names columns {sorted(unknown)} that a {self.kind} data set lacks "
                             f"(it has {keys})")
        self._counter = None

    @classmethod
    def from_config(cls, cfg: Config) -> "ShardData":
        return cls(cfg.dataset_uri(), cfg.data, cfg.store.options())

    def count(self, split: str, domain: str | None = None) -> int:
        """Examples in a split (of one domain; of all domains when None)."""
        counts = self.manifest["counts"]
        if domain or self.kind != "unpaired":
            return int(counts.get(shards.shard_folder(split, domain), 0))
        return sum(int(n) for key, n in counts.items() if key.split("/", 1)[0] == split)

    def locate(self, name: str) -> tuple[str | None, str]:
        """(domain, decoded column) of a batch name: ``sketch`` -> (None, "sketch"); an unpaired data set's
        ``A`` -> ("A", "image") and ``A_lineart`` -> ("A", "image_lineart")."""
        base, _, view = name.partition("_")
        if self.kind == "unpaired":
            if base not in shards.DOMAINS:
                raise ValueError(f"{name!r}: an unpaired data set's batch names are domains {shards.DOMAINS} "
                                 f"(with a view suffix, e.g. A_lineart)")
            domain, column = base, "image"
        else:
            if base not in self.columns:
                raise ValueError(f"{name!r}: a {self.kind} data set has columns {list(self.columns)}")
            domain, column = None, base
        if view and view not in self.views(domain).get(column, ()):
            raise ValueError(f"{name!r} needs data.views {{{domain or column}: [{view}]}}")
        return domain, f"{column}_{view}" if view else column

    def views(self, domain: str | None = None) -> dict[str, list[str]]:
        """column -> the views its decode stage derives, for one domain of an unpaired set (``data.views``
        of the column, then of the domain)."""
        views = {c: list(self.cfg.views.get(c, ())) for c in self.columns}
        for v in self.cfg.views.get(domain, ()) if domain else ():
            if v not in views["image"]:
                views["image"].append(v)
        return {c: vs for c, vs in views.items() if vs}

    def decode_stage(self, size: int, domain: str | None = None) -> DecodeStage:
        return DecodeStage(self.columns, size, self.cfg.interpolation, self.views(domain), self.cfg.lineart_target)

    def decoded(self, split: str, names: list[str], n: int) -> dict[str, np.ndarray]:
        """The first ``n`` examples of a split for each batch name, decoded at crop_size without jitter, with
        their views (uint8, N x S x S x 3). Without Ray: small fixed sets (validation, sample grids)."""
        out, by_domain = {}, {}
        for name in names:
            domain, column = self.locate(name)
            by_domain.setdefault(domain, []).append((name, column))
        for domain, wanted in by_domain.items():
            stage = self.decode_stage(self.cfg.crop_size, domain)
            rows = shards.read_rows(self.uri, split=split, limit=n, options=self.options, domain=domain)
            decoded = stage({c: np.array([r[c] for r in rows], dtype=object) for c in ("id", *self.columns)})
            out.update({name: decoded[column] for name, column in wanted})
        return out

    def stream_datasets(self, streams: dict[str, str | None]) -> dict[str, ray.data.Dataset]:
        """One streaming training dataset per stream a recipe declares (stream -> domain), named by the stream."""
        return {stream: self.dataset("train", domain=domain) for stream, domain in streams.items()}

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
        size = self.cfg.load_size if train else self.cfg.crop_size
        stage = self.decode_stage(size, domain)
        ds = ds.map_batches(stage, batch_size=self.cfg.map_batch_size, batch_format="numpy",
                            fn_kwargs={"counter": self.skip_counter()}, num_cpus=self.cfg.task_cpus)
        ds.context.execution_options.preserve_order = self.cfg.deterministic
        if train and self.decoded_mb(split, domain, size) <= self.cfg.cache_mb:
            # In the file order every epoch reads anyway (the shuffle's seed is not re-drawn per execution).
            ds = ds.materialize()
        return ds

    def decoded_mb(self, split: str, domain: str | None, size: int) -> float:
        """MB of a split's rows decoded at ``size``: every image column and its views, uint8 RGB."""
        images = len(self.columns) + sum(len(views) for views in self.views(domain).values())
        return self.count(split, domain) * images * size * size * 3 / 2**20

    def collate(self, epoch: int, train: bool = True, repeat: int = 0) -> Collate:
        return Collate(self.cfg.crop_size, self.cfg.flip and train, self.cfg.seed, epoch, train, repeat,
                       self.pin_memory, self.on_host)

    def iter_batches(self, source: ray.data.Dataset | ray.data.DataIterator, epoch: int = 0, train: bool = True,
                     batch_size: int | None = None, drop_last: bool | None = None, repeat: int = 0) -> Iterable[dict]:
        """Collated batches (``Collate``: uint8 ``Pixels``, made float on the device by ``device_batch``) for one
        epoch from a dataset or a Ray Train shard (``get_dataset_shard``)."""
        shuffle = self.cfg.shuffle_buffer if train and self.cfg.shuffle_buffer else None
        return source.iter_torch_batches(
            batch_size=batch_size or self.cfg.batch_size,
            collate_fn=self.collate(epoch, train, repeat),
            local_shuffle_buffer_size=shuffle,
            local_shuffle_seed=epoch_seed(self.cfg.seed, epoch, repeat) if shuffle else None,
            drop_last=train if drop_last is None else drop_last,
            prefetch_batches=2,
        )

    def train_batches(self, sources: dict[str, ray.data.DataIterator], streams: dict[str, str | None],
                      epoch: int) -> Iterator[dict]:
        """One epoch of training batches from the recipe's streams (``sources``: stream -> Ray Train shard).
        One stream: its batches as they are. Several: zipped into one batch whose entries carry the stream's
        name (``A``, ``A_lineart``, ``id_A``; ``id`` is the first stream's), an epoch being the longest
        stream's pass while the shorter ones start over (CycleGAN's epoch is max(|A|, |B|))."""
        if len(streams) == 1:
            yield from self.iter_batches(next(iter(sources.values())), epoch=epoch)
            return
        names = list(streams)
        passes = [lambda repeat, s=s: self.iter_batches(sources[s], epoch=epoch, repeat=repeat) for s in names]
        for i, parts in enumerate(zip_streams(passes)):
            batch: dict = {"id": parts[0]["id"]}
            for stream, part in zip(names, parts):
                for key, value in part.items():
                    if key == "id":
                        batch[f"id_{stream}"] = value
                    else:  # "image" -> "A", "image_lineart" -> "A_lineart"
                        batch[stream + key.removeprefix("image")] = value
            yield batch


def epoch_seed(seed: int, epoch: int, repeat: int = 0) -> int:
    return int(np.random.SeedSequence([seed, epoch] + ([repeat] if repeat else [])).generate_state(1)[0])


def zip_streams(passes: list[Callable[[int], Iterable[dict]]]) -> Iterator[list[dict]]:
    """Zips several batch streams for one epoch: ``passes[k](repeat)`` is stream k's ``repeat``-th pass
    (0 first). The epoch ends when every stream has finished a pass; until then a finished stream starts its
    next pass (so an epoch is the longest stream's pass)."""
    repeats = [0] * len(passes)
    iterators = [iter(p(0)) for p in passes]
    finished = [False] * len(passes)
    while True:
        out = []
        for k, make in enumerate(passes):
            try:
                out.append(next(iterators[k]))
            except StopIteration:
                finished[k] = True
                if all(finished):
                    return
                repeats[k] += 1
                iterators[k] = iter(make(repeats[k]))
                try:
                    out.append(next(iterators[k]))
                except StopIteration:
                    raise ValueError(f"stream {k} has no batches (fewer examples than data.batch_size?)") from None
        yield out
