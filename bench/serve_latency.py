"""Serve endpoint vs a direct in-process generator call: latency and throughput, batching on and off.

    python bench/serve_latency.py [--size 256] [--requests 24] [--ngf 64]

One run, one machine, side by side:
  direct        decode PNG -> inference.Generator.translate -> encode PNG in this process (what a replica
                runs, minus Serve and HTTP), called from 1 or 16 threads
  serve         POST /v1/models/<name>/generate over HTTP (keep-alive connections) to the app on a local
                Ray, as two deployments (Gateway -> Generators, what a cluster runs) and as one
                (serve.colocate, what `ganime serve` runs), each with serve.max_batch_size 1 (batching off)
                and 16 (on)
at concurrency 1 and 16: p50 / p99 latency and requests/s. The model is the Pix2Pix U-Net at --size px
(seeded random weights: speed does not depend on them). Both sides use the same torch thread count,
by default 1: what a Generators replica of serve_config.yaml gets (num_cpus 1; Ray sets its threads).
Serve runs in its high-throughput mode as `ganime serve` starts it (--ingress proxy: Serve's default proxy).

Targets (printed as measured): p50 overhead of Serve at concurrency 1 <= 10 ms at 256 px; batching >= 1.5x
the throughput of no batching at concurrency 16 on CPU. The overhead is measured with direct and Serve taking
turns, request by request, as the median of (Serve - direct) latency, each less its own forward pass: on a
shared box the forward alone drifts by tens of ms, more than what is measured. The batch, fwd ms/img, codec
ms (decode + encode) and hop ms columns come from the responses' X-Ganime-Batch-Size and Server-Timing headers
(hop: Server-Timing generate minus forward, the Gateway -> Generators round trip with any batch wait). Also
printed: GET /healthz p50 (HTTP -> proxy -> Gateway and back), the forward pass alone in process at 1 vs
16 images per call, which bounds what any batching can gain here, and the codec alone in process, step by step
on the same images in turns: the Gateway's decode and PNG encode vs PIL's decode and PIL's PNG at level 1 (the
Gateway's encoder before serve.png_compress_level), target >= 2x; JPEG and WebP beside them.
Figures measured with it: the README's Benchmarks and Serving sections.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import ray_ganime  # noqa: E402,F401  (before ray: sets the auth mode)
from ray_ganime import export, images, inference  # noqa: E402
from ray_ganime.config import ServeConfig, load_config  # noqa: E402
from ray_ganime.recipes import recipe_class  # noqa: E402
from ray_ganime.runtime import init_ray, use_serve_high_throughput  # noqa: E402

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


def summarize(answers: list[tuple[float, dict]], wall: float) -> dict:
    """p50 / p99 of the (ms, response headers) answers and requests/s over ``wall`` s; for Serve also the mean
    batch size, the forward pass's ms per image and the hop (from the response headers)."""
    latencies = [ms for ms, _ in answers]
    out = {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "rps": len(answers) / wall}
    timed_steps = [steps(h) for _, h in answers if "server-timing" in h]
    if timed_steps:
        batches = [int(h.get("x-ganime-batch-size", 1)) for _, h in answers]
        out.update(batch=statistics.mean(batches),
                   forward_per_image=statistics.mean(s["forward"] / b for s, b in zip(timed_steps, batches)),
                   codec=statistics.median(s["decode"] + s["encode"] for s in timed_steps))
    if answers and "x-ganime-batch-size" in answers[0][1]:
        # gateway -> Generators and back, batch wait and queueing included
        out["hop"] = statistics.median(s["generate"] - s["forward"] for s in timed_steps)
    return out


def timed(call, body: bytes | None) -> tuple[float, dict]:
    started = time.perf_counter()
    headers = call(body)
    return (time.perf_counter() - started) * 1e3, headers


def measure(call, bodies: list[bytes], concurrency: int) -> dict:
    """``summarize`` of every call, ``concurrency`` at a time."""
    call(bodies[0])  # warm-up: loads the model, fills caches
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda body: timed(call, body), bodies))
    return summarize(answers, time.perf_counter() - started)


def steps(headers: dict) -> dict[str, float]:
    """Server-Timing's ms per step (direct calls time themselves the same way)."""
    return {k: float(v) for k, v in (p.strip().split(";dur=") for p in headers["server-timing"].split(","))}


def measure_alternating(direct, served, bodies: list[bytes]) -> tuple[dict, dict, float]:
    """One request at a time, ``direct`` and ``served`` taking turns on each body, so that both see the same
    machine (a shared 2-core box drifts by tens of ms over minutes). Their ``summarize``, and what Serve adds:
    the median over the bodies of (Serve - direct) latency, each less its own forward pass. The forward
    itself varies by +-20 ms from call to call here, more than what is measured."""
    direct(bodies[0]), served(bodies[0])
    pairs = [(timed(direct, body), timed(served, body)) for body in bodies]
    added = statistics.median((s - steps(sh)["forward"]) - (d - steps(dh)["forward"]) for (d, dh), (s, sh) in pairs)
    sides = [[d for d, _ in pairs], [s for _, s in pairs]]
    direct_row, served_row = (summarize(side, sum(ms for ms, _ in side) / 1e3) for side in sides)
    return direct_row, served_row, added


def codec_alone(outputs: list[np.ndarray], bodies: list[bytes], repeats: int = 3) -> dict[str, float]:
    """ms per image of each codec step in this process, one thread, side by side on the same images: the
    uploads' decode (``images.decode_rgb``, OpenCV for plain PNGs, vs PIL alone) and the answers' encode (the
    Gateway's PNG vs PIL's at level 1, what it used before; JPEG and WebP at the served quality)."""
    limits = ServeConfig()
    level = limits.png_compress_level

    def pil_decode(body: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(body)) as im:
            return np.asarray(im.convert("RGB"))

    steps = {"decode PIL": (pil_decode, bodies), "decode": (images.decode_rgb, bodies),
             "PNG PIL level 1": (lambda out: images.encode_png(out, 1), outputs),
             f"PNG level {level}": (lambda out: images.encode_png_fast(out, level), outputs),
             "JPEG": (lambda out: images.encode_jpeg(out, limits.jpeg_quality), outputs),
             "WebP": (lambda out: images.encode_webp(out, limits.webp_quality), outputs)}
    totals = dict.fromkeys(steps, 0.0)
    for _ in range(repeats):  # in turns, so that a drift on a shared box hits every step alike
        for name, (step, items) in steps.items():
            started = time.perf_counter()
            for item in items:
                step(item)
            totals[name] += (time.perf_counter() - started) * 1e3 / len(items)
    return {name: total / repeats for name, total in totals.items()}


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
        for attempt in (1, 2):  # a keep-alive connection the server closed (idle while redeploying): once more
            if not hasattr(self.local, "connection"):
                self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            connection = self.local.connection
            try:
                if body is None:
                    connection.request("GET", "/healthz")
                else:
                    connection.request("POST", f"/v1/models/{NAME}/generate", body, {"Content-Type": "image/png"})
                response = connection.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                connection.close()
                del self.local.connection
                if attempt == 2:
                    raise
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
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="serve.precision on both sides (default auto, as shipped: bfloat16 on AMX CPUs and CUDA)")
    parser.add_argument("--ingress", default="haproxy", choices=("haproxy", "proxy"),
                        help="haproxy (default, what `ganime serve` runs): Ray Serve's high-throughput mode "
                             "(runtime.SERVE_HIGH_THROUGHPUT); proxy: Serve's default Python proxy")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="serve.device on both sides (auto: CUDA where there is a GPU)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    if args.ingress == "haproxy":
        use_serve_high_throughput()
    from ray import serve

    from ray_ganime.serve import APP_NAME, Timing, build_app

    threads = args.threads
    torch.set_num_threads(threads)
    store = tempfile.mkdtemp(prefix="ganime-bench-serve-")
    write_model(store, args.size, args.ngf)
    rng = np.random.default_rng(0)
    bodies = [images.encode_png(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
              for _ in range(2 * args.requests)]

    generator = inference.Generator.load(str(Path(store) / "models" / NAME), args.device, precision=args.precision)

    def direct(body: bytes) -> dict:
        timing = Timing()
        with timing("decode"):
            image = images.decode_rgb(body)
        with timing("forward"):  # the span Server-Timing's forward covers in a replica
            output = generator.translate([image])[0]
        with timing("encode"):  # as the Gateway encodes a PNG answer
            images.encode_png_fast(output, ServeConfig().png_compress_level)
        return {"server-timing": timing.header()}

    one, batched = batching_ceiling(generator, bodies, 16)
    codec = codec_alone(generator.translate([images.decode_rgb(b) for b in bodies[:8]]), bodies[:8])

    init_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    client = Client(args.port)
    results, added = {}, {}
    layouts = {"two deployments": False, "one deployment": True}  # serve.colocate
    for layout, colocate in layouts.items():
        for batching, batch in (("off", 1), ("on", 16)):
            label = f"{layout}, batching {batching}"
            tree = {"store": {"uri": store}, "serve": {"max_batch_size": batch, "torch_threads": threads,
                                                       "precision": args.precision, "colocate": colocate,
                                                       "device": args.device}}
            serve.run(build_app(tree), name=APP_NAME, route_prefix="/")
            # c=1: direct and Serve take turns, request by request; the direct row is the first of these runs
            direct_row, results[(label, 1)], added[label] = measure_alternating(direct, client,
                                                                                 bodies[:args.requests])
            results.setdefault(("direct", 1), direct_row)
            if ("direct", 16) not in results:  # sharing the box with an idle Serve, like the rows after it
                results[("direct", 16)] = measure(direct, bodies[:2 * args.requests], 16)
            results[(label, 16)] = measure(client, bodies[:2 * args.requests], 16)
        if not colocate:
            healthz = measure(client, [None] * args.requests, 1)["p50"]  # client -> proxy -> Gateway and back
    serve.shutdown()
    results = dict(sorted(results.items(), key=lambda item: item[0][0] != "direct"))  # direct rows first

    print(f"\nPix2Pix U-Net ngf {args.ngf} at {args.size} px on {generator.device.type}, {generator.precision}, "
          f"{threads} torch threads, "
          f"ingress {args.ingress}, {args.requests} / {2 * args.requests} requests at concurrency 1 / 16")
    print(f"{'':<32}{'c':>3}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>9}{'batch':>7}{'fwd ms/img':>12}{'codec ms':>10}"
          f"{'hop ms':>8}")
    for (label, concurrency), r in results.items():
        hop = f"{r['hop']:>8.1f}" if "hop" in r else ""
        print(f"{label:<32}{concurrency:>3}{r['p50']:>10.1f}{r['p99']:>10.1f}{r['rps']:>9.2f}{r['batch']:>7.1f}"
              f"{r['forward_per_image']:>12.1f}{r['codec']:>10.1f}{hop}")
    print("\nServe p50 overhead at c=1 (median over the same bodies, taking turns, of Serve - direct, each less its "
          "forward pass; batching on includes the batch wait), target <= 10 ms; batching at c=16, target >= 1.5x:")
    for layout in layouts:
        off, on = added[f"{layout}, batching off"], added[f"{layout}, batching on"]
        speedup = results[(f"{layout}, batching on", 16)]["rps"] / results[(f"{layout}, batching off", 16)]["rps"]
        print(f"  {layout:<16} overhead {off:+.1f} ms (batching on {on:+.1f} ms): {'met' if off <= 10 else 'MISSED'};"
              f"  batching {speedup:.2f}x of no batching: {'met' if speedup >= 1.5 else 'MISSED'}")
    hop = results[("two deployments, batching off", 1)]["hop"]
    print(f"  two deployments: GET /healthz p50 {healthz:.1f} ms (HTTP to the proxy and on to the Gateway) "
          f"+ Gateway -> Generators {hop:.1f} ms")
    print(f"forward pass alone, in process: {one:.1f} ms/img one at a time, {batched:.1f} ms/img 16 per call: "
          f"batching can gain at most {one / batched:.2f}x on this machine for this model")
    print(f"one deployment, batching on at c=16 vs direct calls from 16 threads: "
          f"{results[('one deployment, batching on', 16)]['rps'] / results[('direct', 16)]['rps']:.2f}x")
    png_new = f"PNG level {ServeConfig().png_compress_level}"
    print(f"codec alone, ms per {args.size} px image in one thread (inputs: the bodies; answers: the network's "
          f"outputs): "
          + ", ".join(f"{name} {ms:.2f}" for name, ms in codec.items()))
    before, after = codec["decode PIL"] + codec["PNG PIL level 1"], codec["decode"] + codec[png_new]
    print(f"  PNG in and out: {after:.2f} ms vs {before:.2f} ms with PIL alone at level 1 (the encoder before): "
          f"{before / after:.2f}x, target >= 2x: {'met' if before >= 2 * after else 'MISSED'}")


if __name__ == "__main__":
    main()
