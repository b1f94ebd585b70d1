"""Ray Data pipeline vs a plain single-process loop over the same shards: pairs/s, and pairs/s PER CPU USED.

Both produce what the trainer gets from the host, a device-ready batch: for Ray Data, the collate's output
(uint8 tensors at load_size plus per-example crop/flip parameters; crop, flip and the float conversion
happen on the device, in train._to_device); for the plain loop, what a training script without a data
system hands its device: PIL decode, resize to load_size, crop + flip, stacked into a uint8 tensor.

"CPU used" is measured, not assumed: the CPU time (user + system, from /proc) of this process and of
every process it started (the local Ray head: raylet, GCS, Ray workers) over the timed epochs, so it
counts the Ray system processes and the consumer's own threads too (an upper bound on what the data
work itself took). The plain loop's CPU is this process's own CPU time. The scaling target: Ray's rate
per CPU >= 0.7x the plain loop's rate per CPU, which can be checked on 2 cores as well as on 16.

    python bench/data_pipeline.py [--count 2000] [--size 256] [--epochs 3]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_ganime import ingest, runtime, shards, synth  # noqa: E402
from ray_ganime.config import DataConfig  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """user + system CPU seconds of each live process (children already reaped are not counted)."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15 of stat)
    return out


def tree_cpu() -> dict[int, float]:
    return cpu_seconds([os.getpid(), *runtime.descendants()])


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots; a process started in between counts from zero."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def plain_loop(uri: str, cfg: DataConfig) -> int:
    """What a training script without a data system does: read, decode, resize, crop, flip, stack (uint8)."""
    manifest = shards.read_manifest(uri)
    rng = np.random.default_rng(cfg.seed)
    n, batch = 0, []
    for shard in manifest["shards"]:
        if not shard["path"].startswith("train/"):
            continue
        for record in pq.ParquetFile(Path(uri) / shard["path"]).iter_batches(batch_size=64):
            for row in record.to_pylist():
                top, left = rng.integers(0, cfg.load_size - cfg.crop_size + 1, 2)
                flip = rng.random() < 0.5
                pair = []
                for col in ("sketch", "color"):
                    im = Image.open(io.BytesIO(row[col])).convert("RGB").resize((cfg.load_size,) * 2, Image.BICUBIC)
                    arr = np.asarray(im)[top:top + cfg.crop_size, left:left + cfg.crop_size]
                    pair.append(arr[:, ::-1] if flip else arr)
                batch.append(pair)
                if len(batch) == cfg.batch_size:
                    tensors = torch.from_numpy(np.stack(batch))  # (N, 2, H, W, 3) uint8, as the device takes it
                    n += tensors.shape[0]
                    batch = []
    return n


def _rows(value) -> int:
    return value.shape[0] if isinstance(value, torch.Tensor) else len(value.pixels)


def pipeline(uri: str, cfg: DataConfig, epochs: int) -> tuple[float, list[tuple[int, float, float, float]]]:
    """(seconds to open the training stream: the decode itself when data.cache_mb holds it, and per epoch:
    pairs, seconds, seconds to first batch, CPU seconds of this process tree); without the cache each epoch
    re-executes the pipeline."""
    from ray_ganime.data import ShardData

    data = ShardData(uri, cfg)
    start = time.perf_counter()
    ds = data.dataset("train")
    opened, out = time.perf_counter() - start, []
    for epoch in range(epochs):
        cpu0 = tree_cpu()
        start, first, n = time.perf_counter(), None, 0
        for batch in data.iter_batches(ds, epoch=epoch):
            n += _rows(batch["sketch"])
            first = first or time.perf_counter() - start
        out.append((n, time.perf_counter() - start, first, cpu_delta(cpu0, tree_cpu())))
    return opened, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000, help="pairs; the real set has 17,769")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3, help="the first one (cold start) is reported apart")
    args = ap.parse_args()
    cfg = DataConfig(load_size=round(args.size * 286 / 256), crop_size=args.size, batch_size=32, shuffle_buffer=64)

    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "pairs")
        t = time.perf_counter()
        ingest.write_examples(synth.examples("paired", args.count, args.size, seed=0), args.count, "paired", uri,
                              seed=0, test_fraction=0.2, progress=False)
        print(f"synthesised {args.count} pairs at {args.size}px in {time.perf_counter() - t:.1f} s")

        runtime.make_stoppable()  # Ray's workers stay descendants of this process, so their CPU time is found
        runtime.init_ray()
        _, epochs = pipeline(uri, cfg.model_copy(update={"cache_mb": 0}), args.epochs)
        # The plain loop right after, on the same machine state, for the same number of warm epochs.
        t, cpu = time.perf_counter(), time.process_time()
        n_plain = sum(plain_loop(uri, cfg) for _ in range(args.epochs - 1))
        plain_s, plain_cpu = time.perf_counter() - t, time.process_time() - cpu
        # A training set small enough for data.cache_mb: decoded once, each epoch reads the object store.
        decode_s, cached = pipeline(uri, cfg.model_copy(update={"cache_mb": 1e6}), args.epochs)

    (n0, s0, f0, _), warm = epochs[0], epochs[1:]
    n_warm, s_warm, c_warm = (sum(e[i] for e in warm) for i in (0, 1, 3))
    ray_rate, plain = n_warm / s_warm, n_plain / plain_s
    ray_per_cpu, plain_per_cpu = n_warm / c_warm, n_plain / plain_cpu
    print(f"cores: {os.cpu_count()}; CPU used = CPU time of this process and all it started (Ray head + workers)")
    print(f"plain loop, 1 process           : {plain:8.1f} pairs/s   {plain_per_cpu:8.1f} pairs/s per CPU "
          f"({plain_cpu / plain_s:.2f} CPUs busy)")
    print(f"Ray Data, first epoch (cold)    : {n0 / s0:8.1f} pairs/s   (worker start-up; first batch after {f0:.1f} s)")
    print(f"Ray Data, later epochs          : {ray_rate:8.1f} pairs/s   {ray_per_cpu:8.1f} pairs/s per CPU "
          f"({c_warm / s_warm:.2f} CPUs busy; each epoch restarts the stream: first batch after "
          f"{sum(e[2] for e in warm) / len(warm):.2f} s)")
    print(f"ratio pipeline / plain (warm)   : {ray_rate / plain:8.2f}x")
    print(f"ratio per CPU used              : {ray_per_cpu / plain_per_cpu:8.2f}x   (target >= 0.7x)")
    cached_rate = sum(e[0] for e in cached) / sum(e[1] for e in cached)
    print(f"Ray Data, decoded once (cache)  : {cached_rate:8.1f} pairs/s per epoch after a {decode_s:.1f} s decode "
          f"= {cached_rate / ray_rate:.1f}x the streamed epochs; {args.epochs} epochs in "
          f"{(decode_s + sum(e[1] for e in cached)) / (s0 + s_warm):.2f}x the streamed time")
    runtime.stop_own_ray()


if __name__ == "__main__":
    main()
