"""Serve endpoint vs a direct in-process generator call: latency and throughput, batching on and off.

    python bench/serve_latency.py [--size 256] [--requests 24] [--ngf 64]

One run, one machine, side by side:
  direct        decode PNG -> inference.Generator.translate -> encode PNG in this process (what a replica
                runs, minus Serve and HTTP), called from 1 or 16 threads
  serve         POST /v1/models/<name>/generate over HTTP (keep-alive connections) to the app on a local
                Ray, with serve.max_batch_size 1 (batching off) and 16 (on)
at concurrency 1 and 16: p50 / p99 latency and requests/s. The model is the Pix2Pix U-Net at --size px
(seeded random weights: speed does not depend on them). Both sides use the same torch thread count,
by default 1: what a Generators replica of serve_config.yaml gets (num_cpus 1; Ray sets its threads).

Targets (printed as measured): p50 overhead of Serve at concurrency 1 (serve, batching off, minus direct)
<= 10 ms at 256 px; batching >= 1.5x the throughput of no batching at concurrency 16 on CPU. The batch,
fwd ms/img and hop ms columns come from the responses' X-Ganime-Batch-Size and Server-Timing headers
(hop: Server-Timing generate minus forward, the Gateway -> Generators round trip with any batch wait).
Also printed, from the same run: GET /healthz p50 (HTTP -> proxy -> Gateway and back), and the forward
pass alone in process at 1 vs 16 images per call, which bounds what any batching can gain here.

Measured on a 2-core box with no GPU (client, Serve proxy, both deployments and Ray's own processes on the
same 2 cores), defaults: both targets missed, and the batching one cannot be met on this CPU.
    c=1: direct p50 221 ms, serve 250 ms: +28.6 ms, of which /healthz 7.9 ms and the Gateway -> Generators
    hop 10.0 ms; the rest is decode/encode and the forward slowed by Ray's own processes on the same
    cores. Two Ray hops at ~8-10 ms each on this box leave no room for <= 10 ms. With --threads 2 (both cores to torch): +27 to +42 ms across runs, the forward's second
    thread competing with the proxy and Gateway. Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct ingress,
    gRPC between deployments, user code on the replica's own loop) measured within the noise (+27 ms).
    c=16: batching on 4.66 req/s vs off 4.71 (0.99x; 1.03x to 1.30x across runs and thread counts), mean
    batch 2.2. The forward pass alone costs 169 ms/img one at a time and 155 ms/img 16 per call: on this
    CPU batching can gain at most 1.09x for this model, so >= 1.5x would need a GPU replica (or a model
    whose batch-1 forward leaves the CPU idle). Still to do: the same run on a GPU (none lent so far).
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
    served = [h for _, h in answers if "x-ganime-batch-size" in h]
    if served:
        batches = [int(h["x-ganime-batch-size"]) for h in served]
        steps = [{k: float(v) for k, v in (p.strip().split(";dur=") for p in h["server-timing"].split(","))}
                 for h in served]
        out.update(batch=statistics.mean(batches),
                   forward_per_image=statistics.mean(s["forward"] / b for s, b in zip(steps, batches)),
                   # gateway -> Generators and back, batch wait and queueing included
                   hop=statistics.median(s["generate"] - s["forward"] for s in steps))
    return out


def batching_ceiling(generator, bodies: list[bytes], batch: int, repeats: int = 3) -> tuple[float, float]:
    """ms per image of the forward pass alone, one image per call vs ``batch`` images per call: what any
    batching, in any server, can gain on this machine for this model."""
    frames = [images.decode_rgb(b) for b in bodies[:batch]]
    generator.translate(frames[:1])  # warm-up

    def per_image(size: int) -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            for i in range(0, batch, size):
                generator.translate(frames[i:i + size])
        return (time.perf_counter() - started) * 1e3 / (repeats * batch)

    return per_image(1), per_image(batch)


class Client:
    """One keep-alive HTTP connection per thread."""

    def __init__(self, port: int) -> None:
        import threading

        self.port, self.local = port, threading.local()

    def __call__(self, body: bytes | None) -> dict[str, str]:
        """POST ``body`` to the model, or GET /healthz when ``body`` is None."""
        if not hasattr(self.local, "connection"):
            self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        connection = self.local.connection
        if body is None:
            connection.request("GET", "/healthz")
        else:
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
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on both sides (default 1: what a Generators replica of serve_config.yaml "
                             "gets, num_cpus 1)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    threads = args.threads
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
    one, batched = batching_ceiling(generator, bodies, 16)

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
    healthz = measure(client, [None] * args.requests, 1)["p50"]  # client -> proxy -> Gateway and back
    serve.shutdown()

    print(f"\nPix2Pix U-Net ngf {args.ngf} at {args.size} px, {threads} torch threads, "
          f"{args.requests} / {2 * args.requests} requests at concurrency 1 / 16")
    print(f"{'':<22}{'c':>3}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>9}{'batch':>7}{'fwd ms/img':>12}{'hop ms':>8}")
    for (label, concurrency), r in results.items():
        extra = f"{r['batch']:>7.1f}{r['forward_per_image']:>12.1f}{r['hop']:>8.1f}" if "batch" in r else ""
        print(f"{label:<22}{concurrency:>3}{r['p50']:>10.1f}{r['p99']:>10.1f}{r['rps']:>9.2f}{extra}")
    overhead = results[("serve, batching off", 1)]["p50"] - results[("direct", 1)]["p50"]
    overhead_on = results[("serve, batching on", 1)]["p50"] - results[("direct", 1)]["p50"]
    speedup = results[("serve, batching on", 16)]["rps"] / results[("serve, batching off", 16)]["rps"]
    print(f"\nServe p50 overhead at c=1: {overhead:+.1f} ms (batching off), {overhead_on:+.1f} ms (batching on,"
          f" includes the batch wait)   target <= 10 ms: {'met' if overhead <= 10 else 'MISSED'}")
    hop = results[("serve, batching off", 1)]["hop"]
    print(f"  of which Serve's two hops: GET /healthz p50 {healthz:.1f} ms (HTTP to the proxy and on to the Gateway) "
          f"+ Gateway -> Generators {hop:.1f} ms")
    print(f"batching throughput at c=16: {speedup:.2f}x of no batching   target >= 1.5x: "
          f"{'met' if speedup >= 1.5 else 'MISSED'}")
    print(f"forward pass alone, in process: {one:.1f} ms/img one at a time, {batched:.1f} ms/img 16 per call: "
          f"batching can gain at most {one / batched:.2f}x on this machine for this model")
    print(f"direct c=16 vs serve batching on c=16: {results[('serve, batching on', 16)]['rps'] / results[('direct', 16)]['rps']:.2f}x")


if __name__ == "__main__":
    main()
