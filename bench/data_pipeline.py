"""Ray Data pipeline vs a plain single-process PIL loop over the same shards, side by side.

Both produce the same thing: random 256-crop + flip of 286-resized sketch/colour pairs as float
tensors in [-1, 1], in batches. Prints pairs/s for each and the ratio (target >= 1.5x on 2 cores).

    python bench/data_pipeline.py [--count 600] [--size 256] [--epochs 2]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_ganime import ingest, shards, synth  # noqa: E402
from ray_ganime.config import DataConfig  # noqa: E402


def plain_loop(uri: str, cfg: DataConfig) -> int:
    """What a training script without a data system does: read, decode, resize, crop, flip, stack."""
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
                    tensors = torch.from_numpy(np.stack(batch)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
                    n += tensors.shape[0]
                    batch = []
    return n


def pipeline(uri: str, cfg: DataConfig, epochs: int) -> list[tuple[int, float, float]]:
    """(pairs, seconds, seconds to first batch) per epoch; each epoch re-executes the pipeline."""
    from ray_ganime.data import ShardData

    data = ShardData(uri, cfg)
    ds = data.dataset("train")
    out = []
    for epoch in range(epochs):
        start, first, n = time.perf_counter(), None, 0
        for batch in data.iter_batches(ds, epoch=epoch):
            n += batch["sketch"].shape[0]
            first = first or time.perf_counter() - start
        out.append((n, time.perf_counter() - start, first))
    return out


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

        from ray_ganime.runtime import init_ray

        init_ray()
        epochs = pipeline(uri, cfg, args.epochs)
        # The plain loop right after, on the same machine state, for the same number of warm epochs.
        t = time.perf_counter()
        n_plain = sum(plain_loop(uri, cfg) for _ in range(args.epochs - 1))
        plain = n_plain / (time.perf_counter() - t)

    (n0, s0, f0), warm = epochs[0], epochs[1:]
    ray_rate = sum(n for n, _, _ in warm) / sum(s for _, s, _ in warm)
    print(f"plain PIL loop, 1 process       : {plain:8.1f} pairs/s")
    print(f"Ray Data, first epoch (cold)    : {n0 / s0:8.1f} pairs/s (worker start-up; first batch after {f0:.1f} s)")
    print(f"Ray Data, later epochs          : {ray_rate:8.1f} pairs/s (each epoch restarts the stream: first batch "
          f"after {sum(f for _, _, f in warm) / len(warm):.1f} s)")
    print(f"ratio pipeline / plain (warm)   : {ray_rate / plain:8.2f}x   (target >= 1.5x on 2 cores at 256 px)")


if __name__ == "__main__":
    main()
