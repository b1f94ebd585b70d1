"""Serve endpoint vs a direct in-process generator call: latency and throughput, batching on and off.

    python bench/serve_latency.py [--size 256] [--requests 24] [--ngf 64]

One run, one machine, side by side:
  direct        decode PNG -> inference.Generator.translate -> encode PNG in this process (what a replica
                runs, minus Serve and HTTP), called from 1 or 16 threads
  serve         POST /v1/models/<name>/generate over HTTP (keep-alive connections) to the app on a local
                Ray, with serve.max_batch_size 1 (batching off) and 16 (on)
at concurrency 1 and 16: p50 / p99 latency and requests/s. The model is the Pix2Pix U-Net at --size px
(seeded random weights: speed does not depend on them). Both sides use the same torch thread count.

Targets (printed as measured): p50 overhead of Serve at concurrency 1 (serve, batching off, minus direct)
<= 10 ms at 256 px; batching >= 1.5x the throughput of no batching at concurrency 16 on CPU. The batch and
fwd ms/img columns come from the responses' X-Ganime-Batch-Size and Server-Timing headers.

Measured on a 2-core box with no GPU (client, Serve proxy, both deployments and Ray's own processes on the
same 2 cores), defaults: both targets missed.
    direct c=1 p50 172 ms; serve c=1 p50 199 ms: overhead +28 ms (+9 to +35 ms across runs; with
    --threads 1, which leaves a core to the proxy and gateway, +9 ms). /healthz alone (proxy -> gateway)
    takes ~8 ms here, the gateway -> Generators hop ~10 ms more.
    c=16: batching on 6.4 req/s vs off 5.1 req/s = 1.26x (1.13x to 1.26x across runs), mean batch 2.1.
Why: on CPU this U-Net's forward pass costs about the same per image at any batch size (220 ms/img at 1
thread for batch 1 and batch 14); what batching buys here is only better use of the second thread, and
that core is shared with HTTP and (de)coding. Serve also forms the next batch as soon as its first request
waits batch_wait_timeout_s, not when the running batch ends, so under load batches stay small (a
wait sized to the running batch gave batches of 14 and less throughput). On a GPU replica batching is
where the throughput is; that run is still to be made.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ray_ganime  # noqa: E402,F401  (before ray: sets the auth mode)
from ray_ganime import export, images, inference  # noqa: E402
from ray_ganime.config import load_config  # noqa: E402
from ray_ganime.recipes import recipe_class  # noqa: E402

NAME = "bench-pix2pix"


def write_model(store: str, size: int, ngf: int) -> None:
    """The Pix2Pix recipe's generator at ``size`` px, freshly initialised, as a package."""
    cfg = load_config(None, [f"model.ngf={ngf}", f"data.load_size={size}", f"data.crop_size={size}"])
    torch.manual_seed(0)
    recipe = recipe_class("pix2pix")(cfg, "cpu")
    export.write_package(recipe.generator().eval(), recipe.generator_spec(), NAME, store, recipe="pix2pix",
                         overwrite=True)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(call, bodies: list[bytes], concurrency: int) -> dict:
    """Latencies (ms) of every call and requests/s over the whole burst, ``concurrency`` at a time; for
    Serve also the mean batch size and the forward pass's ms per image (from the response headers)."""
    call(bodies[0])  # warm-up: loads the model, fills caches

    def timed(body: bytes) -> tuple[float, dict]:
        started = time.perf_counter()
        headers = call(body)
        return (time.perf_counter() - started) * 1e3, headers

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(timed, bodies))
    wall = time.perf_counter() - started
    latencies = [ms for ms, _ in answers]
    out = {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "rps": len(bodies) / wall}
    served = [h for _, h in answers if h]
    if served:
        batches = [int(h["x-ganime-batch-size"]) for h in served]
        forward = [float(dict(p.strip().split(";dur=") for p in h["server-timing"].split(","))["forward"]) / b
                   for h, b in zip(served, batches)]
        out.update(batch=statistics.mean(batches), forward_per_image=statistics.mean(forward))
    return out


class Client:
    """One keep-alive HTTP connection per thread."""

    def __init__(self, port: int) -> None:
        import threading

        self.port, self.local = port, threading.local()

    def __call__(self, body: bytes) -> dict[str, str]:
        if not hasattr(self.local, "connection"):
            self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        connection = self.local.connection
        connection.request("POST", f"/v1/models/{NAME}/generate", body, {"Content-Type": "image/png"})
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        return {k.lower(): v for k, v in response.getheaders()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--requests", type=int, default=24, help="per measurement at concurrency 1 (x2 at 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: CPUs)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    import os

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    store = tempfile.mkdtemp(prefix="ganime-bench-serve-")
    write_model(store, args.size, args.ngf)
    rng = np.random.default_rng(0)
    bodies = [images.encode_png(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
              for _ in range(2 * args.requests)]

    generator = inference.Generator.load(str(Path(store) / "models" / NAME), "cpu")

    def direct(body: bytes) -> dict:
        images.encode_png(generator.translate([images.decode_rgb(body)])[0], 1)
        return {}

    results = {}
    for concurrency, n in ((1, args.requests), (16, 2 * args.requests)):
        results[("direct", concurrency)] = measure(direct, bodies[:n], concurrency)

    from ray import serve

    from ray_ganime.serve import APP_NAME, build_app
    from ray_ganime.runtime import init_ray

    init_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    client = Client(args.port)
    for label, batch in (("serve, batching off", 1), ("serve, batching on", 16)):
        tree = {"store": {"uri": store}, "serve": {"max_batch_size": batch, "torch_threads": threads}}
        serve.run(build_app(tree), name=APP_NAME, route_prefix="/")
        for concurrency, n in ((1, args.requests), (16, 2 * args.requests)):
            results[(label, concurrency)] = measure(client, bodies[:n], concurrency)
    serve.shutdown()

    print(f"\nPix2Pix U-Net ngf {args.ngf} at {args.size} px, {threads} torch threads, "
          f"{args.requests} / {2 * args.requests} requests at concurrency 1 / 16")
    print(f"{'':<22}{'c':>3}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>9}{'batch':>7}{'fwd ms/img':>12}")
    for (label, concurrency), r in results.items():
        extra = f"{r['batch']:>7.1f}{r['forward_per_image']:>12.1f}" if "batch" in r else ""
        print(f"{label:<22}{concurrency:>3}{r['p50']:>10.1f}{r['p99']:>10.1f}{r['rps']:>9.2f}{extra}")
    overhead = results[("serve, batching off", 1)]["p50"] - results[("direct", 1)]["p50"]
    overhead_on = results[("serve, batching on", 1)]["p50"] - results[("direct", 1)]["p50"]
    speedup = results[("serve, batching on", 16)]["rps"] / results[("serve, batching off", 16)]["rps"]
    print(f"\nServe p50 overhead at c=1: {overhead:+.1f} ms (batching off), {overhead_on:+.1f} ms (batching on,"
          f" includes the batch wait)   target <= 10 ms: {'met' if overhead <= 10 else 'MISSED'}")
    print(f"batching throughput at c=16: {speedup:.2f}x of no batching   target >= 1.5x: "
          f"{'met' if speedup >= 1.5 else 'MISSED'}")
    print(f"direct c=16 vs serve batching on c=16: {results[('serve, batching on', 16)]['rps'] / results[('direct', 16)]['rps']:.2f}x")


if __name__ == "__main__":
    main()
