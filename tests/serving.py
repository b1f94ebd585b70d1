"""Model packages for the serving tests: tiny, seeded, real networks.

``make_packages(store)`` writes three packages into ``store`` and returns their names:
    image_a, image_b   Pix2Pix U-Nets (ngf 8, 32 px native, size multiple 32) with different seeded weights
    noise              a DCGAN generator (latent 16, ngf 8, 32 px)
Weights are seeded random init (no training): serving must reproduce them exactly, whatever they compute.
"""

from __future__ import annotations

import json
import struct
import urllib.request
import zlib

import numpy as np
import torch

from ray_ganime import export, images

IMAGE = {"layout": "NCHW", "dtype": "float32", "value_range": [-1.0, 1.0]}
NAMES = {"image_a": "sketch2color-a", "image_b": "sketch2color-b", "noise": "faces-dcgan"}


def unet_spec(ngf: int = 8, num_downs: int = 5) -> dict:
    return {"class": "UNetGenerator",
            "args": {"in_channels": 3, "out_channels": 3, "ngf": ngf, "num_downs": num_downs, "norm": "batch",
                     "dropout": 0.5},
            "kind": export.IMAGE_TO_IMAGE, "input": {"channels": 3, "column": "sketch", **IMAGE},
            "output": {"channels": 3, "column": "color", **IMAGE},
            "native_size": 2 ** num_downs, "size_multiple": 2 ** num_downs}


def dcgan_spec(latent_dim: int = 16, ngf: int = 8, size: int = 32) -> dict:
    return {"class": "DCGANGenerator", "args": {"latent_dim": latent_dim, "ngf": ngf, "out_channels": 3, "size": size},
            "kind": export.NOISE, "input": {"latent_dim": latent_dim, "distribution": "normal"},
            "output": {"channels": 3, **IMAGE}, "native_size": size, "size_multiple": size}


def seeded_net(spec: dict, seed: int) -> torch.nn.Module:
    from ray_ganime.nets import build_generator, init_weights

    torch.manual_seed(seed)
    # A wider init than training's N(0, 0.02): outputs that vary with the input and between seeds; any wider
    # and tanh saturates, so the outputs become near-binary and a rounding anywhere flips a pixel 0 <-> 255.
    net = init_weights(build_generator(spec["class"], spec["args"]), gain=0.1).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode differs from train mode
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def make_packages(store: str) -> dict[str, str]:
    for key, spec, seed, recipe in (("image_a", unet_spec(), 1, "pix2pix"), ("image_b", unet_spec(), 2, "pix2pix"),
                                    ("noise", dcgan_spec(), 3, "dcgan")):
        export.write_package(seeded_net(spec, seed), spec, NAMES[key], store, recipe=recipe,
                             metrics={"validation": {"val_ssim": 0.5 + seed / 100}}, overwrite=True)
    return dict(NAMES)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Seeded uniform-noise uint8 RGB (height, width, 3): every pixel matters to the generator's output."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def answers_small_and_big_images(url: str, name: str) -> None:
    """A server at ``url`` answers ``name`` for a small odd-sized image and a big one, each at its own size."""
    # 4.5 MB of pixels: over the 4 MiB that gRPC between two deployments allows unless told otherwise
    for height, width, timeout in ((21, 34, 60), (1000, 1500, 120)):
        request = urllib.request.Request(f"{url}v1/models/{name}/generate",
                                         data=images.encode_png(random_image(height, width)),
                                         headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            assert images.decode_rgb(response.read()).shape == (height, width, 3)


def reason(body: bytes) -> str:
    """The reason of a JSON error answer, checked to have exactly the API's {"error", "reason"} shape."""
    payload = json.loads(body)
    assert set(payload) == {"error", "reason"} and payload["reason"], payload
    return payload["reason"]


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's calling card), with almost no data:
    only a decoder would find out."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------ a Gateway in this process


async def asgi_request(app, method: str, path: str, body: bytes = b"",
                       headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one HTTP request sent straight into an ASGI app."""
    import asyncio

    path, _, query = path.partition("?")
    fields = {"host": "testserver", "content-length": str(len(body)), **(headers or {})}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query.encode(),
             "headers": [(k.lower().encode(), str(v).encode()) for k, v in fields.items()],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    started, chunks, done = {}, [], asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await done.wait()  # the client stays connected until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                done.set()

    try:
        await app(scope, receive, send)
    except Exception:  # Starlette re-raises a server error after answering it (for the server's log)
        if not done.is_set():
            raise
    return started["status"], {k.decode().lower(): v.decode() for k, v in started["headers"]}, b"".join(chunks)


class LocalGateway:
    """A Gateway replica's app in this process without Ray (``serve.colocate``: the generators run here too), on
    an event loop of its own. Serve gives the routes and the token gate their Gateway through the replica
    context; ``request`` makes this Gateway that context while the request runs: the one part of a replica
    that is not Serve's own here."""

    def __init__(self, config: dict, env: dict | None = None) -> None:
        import asyncio
        import os
        from unittest import mock

        from ray_ganime.serve import Gateway

        class Replica(Gateway.func_or_class):  # serve.ingress's subclass: its async __init__ also builds the app
            def __del__(self) -> None:  # Serve awaits the ASGI shutdown in its own __del__; nothing to shut here
                pass

        self.loop = asyncio.new_event_loop()
        self.gateway = Replica.__new__(Replica)
        with mock.patch.dict(os.environ, env or {}):  # the replica reads its token from its environment
            self.loop.run_until_complete(Replica.__init__(self.gateway, None, {**config, "serve": {
                **config.get("serve", {}), "colocate": True}}))

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None,
                ) -> tuple[int, dict, bytes]:
        import types
        from unittest import mock

        context = types.SimpleNamespace(servable_object=self.gateway)
        with mock.patch("ray.serve.get_replica_context", lambda: context):
            return self.loop.run_until_complete(asgi_request(self.gateway.app, method, path, body, headers))

    def close(self) -> None:
        import asyncio

        for task in asyncio.all_tasks(self.loop):  # the batcher's worker, when something was generated
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
