"""A training stream's cost per epoch on a small data set: Ray Data's Parquet DataSourceV2 vs V1, side by side.

Each epoch re-executes the training stream (the data set is too big for ``data.cache_mb`` here, as for any real
one). V2 lists the shards and starts a pool of footer-reading actors at every execution; V1 reads the footers
once, when the dataset is made. ``runtime.init_ray`` picks V1. Both read the same shards on the same Ray, in
alternating rounds; reported: wall time per epoch (to the last batch) and the whole machine's CPU seconds per
epoch (from /proc/stat: the Ray workers and system processes included), and V2 / V1 ratios.

    python bench/data_epoch.py [--count 48] [--size 32] [--epochs 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_ganime.config import load_config  # noqa: E402
from ray_ganime.data import ShardData  # noqa: E402
from ray_ganime.demo import ensure_synthetic  # noqa: E402
from ray_ganime.runtime import init_ray  # noqa: E402


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot."""
    fields = list(map(int, open("/proc/stat").readline().split()[1:]))
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def epochs(data: ShardData, use_v2: bool, n: int) -> tuple[float, float]:
    """Wall and machine CPU seconds per epoch over ``n`` epochs after a first, untimed one."""
    import ray

    ray.data.DataContext.get_current().use_datasource_v2 = use_v2
    ds = data.dataset("train")  # the flag counts when the dataset is made
    for epoch in range(n + 1):
        if epoch == 1:
            cpu, wall = machine_cpu_s(), time.perf_counter()
        rows = sum(len(b["id"]) for b in data.iter_batches(ds, epoch=epoch))
        assert rows > 0
    return (time.perf_counter() - wall) / n, (machine_cpu_s() - cpu) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=48)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    init_ray(num_cpus=2)
    store = tempfile.mkdtemp(prefix="bench-data-epoch-")
    cfg = load_config(None, [f"store.uri={store}", f"data.uri=bench-{args.count}x{args.size}",
                             f"data.load_size={args.size + 4}", f"data.crop_size={args.size}", "data.batch_size=4",
                             "data.shuffle_buffer=16", "data.task_cpus=0.5", "data.cache_mb=0"])
    ensure_synthetic(f"bench-{args.count}x{args.size}", "paired", args.count, args.size, cfg)
    data = ShardData.from_config(cfg)
    results = {True: [], False: []}
    for _ in range(args.rounds):
        for v2 in (True, False):
            results[v2].append(epochs(data, v2, args.epochs))
    best = {v2: (min(r[0] for r in rs), min(r[1] for r in rs)) for v2, rs in results.items()}
    for v2, (wall, cpu) in best.items():
        print(f"DataSourceV{2 if v2 else 1}: {wall:.2f} s per epoch, {cpu:.2f} machine CPU s per epoch")
    print(f"V2 / V1: wall {best[True][0] / best[False][0]:.1f}x, CPU {best[True][1] / best[False][1]:.1f}x "
          f"({args.count} rows, {args.size} px, best of {args.rounds} rounds of {args.epochs} epochs)")


if __name__ == "__main__":
    main()
