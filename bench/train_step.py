"""Ray Train step vs a plain single-process PyTorch loop: steady-state images/s, same nets, same batch.

    python bench/train_step.py [--recipe pix2pix] [--size 64] [--batch 16] [--ngf 32] [--steps 30] [--epochs 3]
    python bench/train_step.py --recipe cyclegan --size 64 --batch 4 --ngf 16 --blocks 6 --steps 20

--recipe picks the recipe (default pix2pix, so earlier runs stay comparable); its nets are sized by --ngf
(ngf = ndf) and, for cyclegan, --blocks ResNet blocks. --gpu runs both sides on CUDA (each timed step then
ends with a device synchronisation on both sides, so queued work is counted where it runs).

Plain loop: ``recipe.train_step`` on ``recipe.example_batch`` random batches of the same shape, in this process,
timed over --steps steps (or --plain-seconds) after --warmup steps, with 1 torch thread (what the Ray
worker gets: Ray sets OMP_NUM_THREADS = max(1, floor(cpus_per_worker))) and with torch's default (one
per core); run before and after the Ray side and the better of the two taken (other load on the
machine only ever slows a measurement down, so the ratio errs against Ray).

Ray side: ``train.fit(cfg)`` (the real engine: Ray Train V2, 1 worker, Ray Data decoding a synthetic
data set of the recipe's kind at load_size, crop/flip collate in the worker; for cyclegan an unpaired set,
streamed as two datasets, one per domain, zipped in the worker), --epochs epochs of --steps steps.
- steady: per-step timestamps taken inside the worker (``train_step`` entry and exit), steps
  --skip.. of every epoch after the first; time runs from the entry of the first counted step to the
  exit of the last, so it includes waiting for batches, collate, host->device and the loop's own work,
  but not each epoch's data start-up (Ray Data re-executes the pipeline every epoch).
- engine: ``images_per_s`` from the run's metrics.jsonl (epochs after the first) = images /
  epoch_time_s, which does include each epoch's data start-up (shown per epoch as "start-up").
The timestamps come from wrapping the recipe's ``train_step`` in the worker; the engine is unchanged.

Wall-clock rates on a shared machine swing with other people's load (measured here: 2-core box, load
average 4 to 23 within one run). So CPU time is measured too: process CPU seconds per image of the
plain process and of the Ray Train worker process (its step thread plus the collate / prefetch and
Ray core threads in it; Ray Data's decode tasks run in other processes and are not in it). At one
torch thread on both sides that ratio barely depends on other load: it is the overhead of the
Ray Train worker itself. Both ratios are printed; the target is >= 0.9. The worker's CPU is also split
into the training thread's inside ``train_step`` (the nets: comparable with the plain loop's) and the
rest of the process (collate, the Ray Data iterators and their zip, Ray's threads), which tells a slower
step from overhead around it.

Interleaved (the headline ratio): even CPU time per image drifts by 10-20% between minutes on a shared
box, more than the engine's overhead, so a baseline taken before and after the run cannot settle a 0.9
target. The worker therefore also runs the plain loop itself after every epoch (--interleave-steps steps,
outside the epoch's timing): a recipe of its own, built and warmed up as the plain loop's, stepped on
copies of the engine's first four batches, with the RNG states restored after it, so the training run is
unchanged. Each counted epoch is compared with the plain rounds right before and after it; the median
over epochs of engine/plain (wall, and CPU time of the worker process) is printed, target >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray_ganime  # noqa: E402,F401  (before ray: sets the auth mode)
from ray_ganime import train  # noqa: E402
from ray_ganime.config import Config, load_config  # noqa: E402
from ray_ganime.demo import ensure_synthetic  # noqa: E402
from ray_ganime.recipes import recipe_class  # noqa: E402


def make_cfg(args, store: str, data_uri: str | None = None, run_name: str | None = None) -> Config:
    overrides = [f"store.uri={store}", f"recipe={args.recipe}", f"model.ngf={args.ngf}", f"model.ndf={args.ngf}",
                 *([f"model.n_blocks={args.blocks}"] if args.recipe == "cyclegan" else []),
                 f"data.load_size={round(args.size * 286 / 256)}", f"data.crop_size={args.size}",
                 f"data.batch_size={args.batch}", f"data.shuffle_buffer={4 * args.batch}",
                 f"train.epochs={args.epochs}", f"train.max_steps_per_epoch={args.steps}",
                 f"train.cpus_per_worker={args.cpus_per_worker}", "train.num_workers=1",
                 f"train.use_gpu={str(args.gpu).lower()}",  # the plain loop runs where the worker does
                 f"train.checkpoint_every={args.epochs}", f"train.sample_every={args.epochs}"]
    if data_uri:
        overrides.append(f"data.uri={data_uri}")
    if run_name:
        overrides.append(f"train.run_name={run_name}")
    return load_config(None, overrides)


def load() -> float:
    return os.getloadavg()[0]


# ------------------------------------------------------------------------------------ plain PyTorch


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work: CUDA steps return before they run, and the timing must not."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(cfg: Config, steps: int, warmup: int, threads: int, max_seconds: float, device: str) -> dict:
    """train_step alone on random batches (no data loading, already on ``device``) with ``threads`` torch
    threads, after warm-up; stops early after ``max_seconds`` (at least 3 timed steps)."""
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        recipe = recipe_class(cfg.recipe)(cfg, device)
        b = cfg.data.batch_size
        batches = [recipe.example_batch(b, cfg.data.crop_size, seed=i) for i in range(4)]
        for i in range(warmup):
            recipe.train_step(batches[i % len(batches)])
        synchronize(recipe.device)
        wall, cpu, done = time.perf_counter(), time.process_time(), 0
        while done < steps and (done < 3 or time.perf_counter() - wall < max_seconds):
            recipe.train_step(batches[done % len(batches)])
            synchronize(recipe.device)  # as the Ray side's timed steps do
            done += 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return {"rate": done * b / wall, "cpu_ms": 1000 * cpu / (done * b), "steps": done, "load": load()}
    finally:
        torch.set_num_threads(default)


def plain_round(cfg: Config, args, thread_counts: list[int], label: str) -> dict[int, dict]:
    out = {}
    for n in thread_counts:
        r = out[n] = plain_loop(cfg, args.steps, args.warmup, n, args.plain_seconds, "cuda" if args.gpu else "cpu")
        print(f"plain loop ({label}), {n} torch thread(s): {r['rate']:6.1f} images/s, {r['cpu_ms']:6.1f} CPU ms/image "
              f"({r['steps']} steps; load average {r['load']:.1f})", flush=True)
    return out


# ------------------------------------------------------------------------------------ Ray Train


def timed_train_loop(out_path: str, worker_threads: int | None = None, plain_steps: int = 0):
    """The engine's train_loop with every train_step (wall and process CPU time at entry and exit,
    images) and every epoch start (``ShardData.train_batches``: once per epoch, however many streams
    the recipe zips) recorded on rank 0, written to ``out_path`` at the end.

    With ``plain_steps``, rank 0 also runs the plain loop after every epoch (after the epoch's timing ends,
    in ``end_epoch``): a second recipe built as the plain side builds it, stepped on the engine's first four
    batches (already collated and on the device) in the same process, its RNG use fenced off so the engine's run is unchanged. Engine epochs and plain rounds
    alternate, so both see the same machine at nearly the same time: on a shared box that pairing, not
    a baseline taken minutes apart in another process, is what tells the engine's cost from other load.

    Defined in __main__, so Ray pickles it by value; in the worker it wraps the classes of the freshly
    imported engine and then runs the unchanged ``ray_ganime.train.train_loop``.
    """

    def loop(loop_config: dict) -> None:
        import json
        import os
        import random
        import time

        import numpy as np
        import ray.train
        import torch

        from ray_ganime.config import Config

        from ray_ganime import train as engine
        from ray_ganime.data import ShardData
        from ray_ganime.recipes import recipe_class

        if worker_threads:
            torch.set_num_threads(worker_threads)
        log = {"omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(),
               "torch_interop_threads": torch.get_num_interop_threads(), "cpu_count": os.cpu_count(),
               "affinity": len(os.sched_getaffinity(0)), "epochs": []}
        cls = recipe_class(loop_config["cfg"]["recipe"])
        step, train_batches = cls.train_step, ShardData.train_batches

        seen = []

        def timed_step(self, batch):
            entry, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
            if len(seen) < 4:  # copies: the plain rounds train on them
                seen.append({k: (v.clone() if hasattr(v, "clone") else v) for k, v in batch.items()})
            out = step(self, batch)
            synchronize(self.device)
            log["epochs"][-1]["steps"].append((entry, time.perf_counter(), cpu, time.process_time(), len(batch["id"]),
                                               time.thread_time() - own))
            return out

        def timed_train_batches(self, sources, streams, epoch):
            log["epochs"].append({"epoch": epoch, "start": time.perf_counter(), "steps": []})
            return train_batches(self, sources, streams, epoch)

        end_epoch, plain = cls.end_epoch, {}

        def plain_round(self):
            end_epoch(self)
            if not plain_steps or ray.train.get_context().get_world_rank() != 0:
                return
            states = np.random.get_state(), random.getstate()
            try:
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    if not plain:
                        cfg = Config.model_validate(loop_config["cfg"])
                        torch.manual_seed(0)
                        plain["recipe"] = cls(cfg, self.device)
                        plain["batches"] = seen  # the engine's own first batches: same nets, same batches
                        for b in plain["batches"][:2]:  # warm-up, as the plain loop's
                            step(plain["recipe"], b)
                    synchronize(self.device)
                    wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
                    for i in range(plain_steps):
                        step(plain["recipe"], plain["batches"][i % 4])
                        synchronize(self.device)
                    n = plain_steps * len(plain["batches"][0]["id"])
                    log["plain"].append({"epoch": self.epoch, "rate": n / (time.perf_counter() - wall),
                                         "cpu_ms": 1000 * (time.process_time() - cpu) / n,
                                         "step_cpu_ms": 1000 * (time.thread_time() - own) / n})
            finally:
                np.random.set_state(states[0])
                random.setstate(states[1])

        log["plain"] = []
        cls.train_step, ShardData.train_batches, cls.end_epoch = timed_step, timed_train_batches, plain_round
        try:
            engine.train_loop(loop_config)
        finally:
            cls.train_step, ShardData.train_batches, cls.end_epoch = step, train_batches, end_epoch
            if ray.train.get_context().get_world_rank() == 0:
                with open(out_path, "w") as f:
                    json.dump(log, f)

    return loop


def ray_side(cfg: Config, timing_path: str, skip: int, worker_threads: int | None, plain_steps: int) -> dict:
    import ray

    train.train_loop = timed_train_loop(timing_path, worker_threads, plain_steps)  # fit() looks the loop up at call time
    load_before, started = load(), time.perf_counter()
    out = train.fit(cfg)
    wall = time.perf_counter() - started
    ray.shutdown()  # the plain loop after it runs without Ray's processes around
    log = json.loads(Path(timing_path).read_text())
    metrics = [json.loads(line) for line in (Path(out["run"]) / "metrics.jsonl").read_text().splitlines() if line]

    images = seconds = in_step = cpu = step_cpu = 0.0
    per_epoch = []
    for i, e in enumerate(log["epochs"]):
        steps = e["steps"]
        counted = steps[skip:]
        n = sum(s[4] for s in counted)
        span = counted[-1][1] - counted[0][0] if len(counted) > 1 else float("nan")
        per_epoch.append({"epoch": e["epoch"] + 1, "steps": len(steps), "steady": n / span,
                          "startup_s": steps[0][0] - e["start"] if steps else float("nan"),
                          "cpu_ms": 1000 * (counted[-1][3] - counted[0][2]) / n if counted else float("nan"),
                          "step_cpu_ms": 1000 * sum(s[5] for s in counted) / n if counted else float("nan")})
        if i > 0 and len(counted) > 1:
            images, seconds = images + n, seconds + span
            in_step += sum(s[1] - s[0] for s in counted)
            cpu += counted[-1][3] - counted[0][2]
            step_cpu += sum(s[5] for s in counted)
    later = metrics[1:]
    return {"steady": images / seconds, "in_step": in_step / seconds, "cpu_ms": 1000 * cpu / images,
            "step_cpu_ms": 1000 * step_cpu / images,
            "per_epoch": per_epoch, "metrics": metrics, "wall": wall, "load": (load_before, load()),
            "engine": sum(m["images_per_s"] * m["epoch_time_s"] for m in later) / sum(m["epoch_time_s"] for m in later),
            "plain": log["plain"], "threads": {k: v for k, v in log.items() if k not in ("epochs", "plain")}}


def interleaved(per_epoch: list[dict], plain: list[dict]) -> list[dict]:
    """Each counted engine epoch (2..) against the plain rounds run right before and after it in the worker."""
    out = []
    for i, e in enumerate(per_epoch[1:], start=1):
        around = [r for r in plain if r["epoch"] in (i - 1, i)]
        if len(around) < 2:
            continue
        mean = {k: statistics.fmean(r[k] for r in around) for k in ("rate", "cpu_ms", "step_cpu_ms")}
        out.append({"epoch": e["epoch"], "engine": e, "plain": mean, "wall": e["steady"] / mean["rate"],
                    "cpu": mean["cpu_ms"] / e["cpu_ms"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=["pix2pix", "cyclegan"], default="pix2pix")
    ap.add_argument("--size", type=int, default=64, help="crop size (load size = size * 286/256)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ngf", type=int, default=32, help="ngf = ndf")
    ap.add_argument("--blocks", type=int, default=6, help="cyclegan: ResNet blocks per generator")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (plain), steps per epoch (Ray)")
    ap.add_argument("--epochs", type=int, default=3, help="Ray epochs; the first (cold start) is not counted")
    ap.add_argument("--warmup", type=int, default=2, help="plain loop: untimed steps first")
    ap.add_argument("--plain-seconds", type=float, default=20.0,
                    help="plain loop: stop timing after this long (at least 3 steps)")
    ap.add_argument("--skip", type=int, default=2, help="Ray: first steps of each epoch not counted as steady")
    ap.add_argument("--cpus-per-worker", type=float, default=0.5, help="train.cpus_per_worker")
    ap.add_argument("--gpu", action="store_true", help="both sides on CUDA (train.use_gpu=true); default CPU")
    ap.add_argument("--worker-threads", type=int,
                    help="torch.set_num_threads in the Ray worker (default: what Ray's OMP_NUM_THREADS gives)")
    ap.add_argument("--interleave-steps", type=int,
                    help="steps of the plain loop the Ray worker runs after every epoch (default --steps; 0: none)")
    ap.add_argument("--store", help="store to keep the synthetic data set in (default: a temporary one)")
    args = ap.parse_args()
    if args.epochs < 2 or args.steps < args.skip + 2:
        ap.error("need --epochs >= 2 and --steps >= --skip + 2")

    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        store = args.store or tmp
        kind = recipe_class(args.recipe).task
        # Enough training rows that no stream starts a second pass within an epoch: 80% is the train split,
        # and an unpaired set's rows alternate between its two domains.
        per_stream = max(64, round(args.steps * args.batch / 0.8) + 2 * args.batch)
        count = per_stream * (2 if kind == "unpaired" else 1)
        t = time.perf_counter()
        data_uri = ensure_synthetic(f"synthetic-{kind}-{count}x{args.size}", kind, count, args.size,
                                    make_cfg(args, store))
        print(f"data set: {count} {kind} examples at {args.size} px ({time.perf_counter() - t:.1f} s)", flush=True)
        cfg = make_cfg(args, store, data_uri, f"bench-{os.getpid()}-{int(time.time())}")

        threads = sorted({1, args.worker_threads or 1, torch.get_num_threads()})
        before = plain_round(cfg, args, threads, "before")
        interleave = args.steps if args.interleave_steps is None else args.interleave_steps
        ray_out = ray_side(cfg, str(Path(tmp) / "timing.json"), args.skip, args.worker_threads, interleave)
        after = plain_round(cfg, args, threads, "after")

    plain = {n: max(before[n]["rate"], after[n]["rate"]) for n in threads}
    plain_cpu = {n: min(before[n]["cpu_ms"], after[n]["cpu_ms"]) for n in threads}
    best = max(plain, key=plain.get)
    th = ray_out["threads"]
    same = th["torch_threads"] if th["torch_threads"] in plain else 1
    nets = f"ngf=ndf={args.ngf}" + (f", {args.blocks} blocks" if args.recipe == "cyclegan" else "")
    print(f"\n{args.recipe} {args.size} px, {nets}, batch {args.batch}, CPU; Ray: 1 worker, cpus_per_worker "
          f"{args.cpus_per_worker}, {args.epochs} epochs x {args.steps} steps (fit {ray_out['wall']:.0f} s, load "
          f"average {ray_out['load'][0]:.1f} -> {ray_out['load'][1]:.1f} on {os.cpu_count()} CPUs)")
    print(f"Ray worker: OMP_NUM_THREADS={th['omp_num_threads']}, torch threads {th['torch_threads']} "
          f"(interop {th['torch_interop_threads']}), CPUs visible {th['affinity']}/{th['cpu_count']}")
    print(f"{'epoch':>5} {'steps':>5} {'start-up s':>10} {'steady img/s':>12} {'engine img/s':>12} {'CPU ms/img':>10}")
    for e, m in zip(ray_out["per_epoch"], ray_out["metrics"]):
        print(f"{e['epoch']:>5} {e['steps']:>5} {e['startup_s']:>10.2f} {e['steady']:>12.1f} "
              f"{m['images_per_s']:>12.1f} {e['cpu_ms']:>10.1f}")
    print()
    for n in threads:
        print(f"plain PyTorch loop, {n} thread(s), best of 2  : {plain[n]:7.1f} images/s, {plain_cpu[n]:6.1f} CPU ms/image")
    print(f"Ray Train, steady state (epochs 2..)        : {ray_out['steady']:7.1f} images/s, "
          f"{ray_out['cpu_ms']:6.1f} CPU ms/image (worker process; {ray_out['in_step']:.0%} of wall time in train_step)")
    print(f"Ray Train, engine's images_per_s (2..)      : {ray_out['engine']:7.1f} images/s (includes each epoch's "
          f"data start-up)")
    print(f"RATIO wall, Ray steady / best plain ({best} thr.) : {ray_out['steady'] / plain[best]:7.2f}   (target >= 0.9; "
          f"with per-epoch start-up {ray_out['engine'] / plain[best]:.2f}; at {same} thread(s) "
          f"{ray_out['steady'] / plain[same]:.2f})")
    print(f"RATIO CPU, plain / Ray worker, {same} thread(s)  : {plain_cpu[same] / ray_out['cpu_ms']:7.2f}   "
          f"(CPU time per image; not skewed by other load)")
    # Where the worker's CPU goes: the training thread inside train_step (the nets: what the plain loop
    # measures) vs everything else in the process (collate, Ray Data iterators, Ray's own threads).
    print(f"  worker CPU ms/image: {ray_out['step_cpu_ms']:.1f} in train_step on the training thread (plain "
          f"{plain_cpu[same]:.1f}), {ray_out['cpu_ms'] - ray_out['step_cpu_ms']:.1f} elsewhere in the process")

    pairs = interleaved(ray_out["per_epoch"], ray_out["plain"])
    if pairs:
        print(f"\ninterleaved in the Ray worker: each epoch against the plain loop ({interleave} steps on the engine's "
              f"first batches, a recipe of its own) run right before and after it in the same process")
        print(f"{'epoch':>5} {'engine img/s':>12} {'plain img/s':>11} {'engine CPU ms/img':>17} {'plain CPU ms/img':>16} "
              f"{'(in train_step)':>15}")
        for r in pairs:
            print(f"{r['epoch']:>5} {r['engine']['steady']:>12.1f} {r['plain']['rate']:>11.1f} {r['engine']['cpu_ms']:>17.1f} "
                  f"{r['plain']['cpu_ms']:>16.1f} {r['engine']['step_cpu_ms']:>6.1f} / {r['plain']['step_cpu_ms']:<6.1f}")
        wall, cpu = (statistics.median(r[k] for r in pairs) for k in ("wall", "cpu"))
        print(f"RATIO interleaved, engine / plain (median of {len(pairs)} epochs): wall {wall:.2f}, CPU {cpu:.2f}   "
              f"(target >= 0.9)")


if __name__ == "__main__":
    main()
