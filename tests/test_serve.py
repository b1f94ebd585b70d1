"""The HTTP API, as deployed by `serve deploy serve_config.yaml` on a real cluster (conftest's ``served``).

Outputs are checked against the same package run in this process (``inference.Generator``): the replica
runs with other thread counts, so a pixel may round the other way (|diff| <= 1), never more. Both pick the same
precision (serve.precision auto: bfloat16 on a CPU with AMX, else float32).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import inspect
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import numpy as np
import pytest
from fastapi import HTTPException
from PIL import Image

from servers import haproxy_runs
from serving import answers_small_and_big_images, png_claiming, random_image, reason

from ray_ganime import export, images, inference
from ray_ganime.serve import (APP_NAME, MISS_RELIST_S, Gateway, Generators, application, build_app, local_layout,
                              model_summary, preferred_media)

pytestmark = pytest.mark.timeout(600)


def call(served, path: str, data: bytes | None = None, headers: dict | None = None, token: bool = True,
         method: str | None = None) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one request; HTTP errors are answers, not exceptions."""
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {served.token}"
    request = urllib.request.Request(served.url + path.lstrip("/"), data=data, headers=headers,
                                     method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def generate(served, name: str, image: np.ndarray, query: str = "", **kw) -> tuple[int, dict, bytes]:
    return call(served, f"v1/models/{name}/generate{query}", images.encode_png(image),
                {"Content-Type": "image/png", **kw.pop("headers", {})}, **kw)


@pytest.fixture(scope="module")
def local(served):
    """The packages run in this process, for reference outputs."""
    return {key: inference.Generator.load(str(served.store / "models" / name), "cpu")
            for key, name in served.names.items()}


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


# ------------------------------------------------------------------------------------------- endpoints


def test_healthz_readyz_and_page_answer_without_a_token(served):
    status, _, body = call(served, "healthz", token=False)
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = call(served, "readyz", token=False)
    assert status == 200 and json.loads(body) == {"status": "ready"}
    status, headers, body = call(served, "", token=False)
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<!doctype html" in body.lower()


def test_models_lists_every_package_with_its_metadata(served):
    status, _, body = call(served, "v1/models")
    assert status == 200
    models = {m["name"]: m for m in json.loads(body)["models"]}
    assert set(served.names.values()) <= set(models)  # (other tests may add packages for a while)
    a, noise = models[served.names["image_a"]], models[served.names["noise"]]
    assert a["kind"] == "image-to-image" and a["size_multiple"] == 32 and a["input"]["channels"] == 3
    assert noise["kind"] == "noise" and noise["input"]["latent_dim"] == 16 and noise["native_size"] == 32
    assert a["metrics"]["validation"]["val_ssim"] == pytest.approx(0.51) and a["parameters"] > 0


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (100, 33), (1, 1), (65, 64)])
def test_output_has_the_input_size_for_any_aspect_ratio(served, local, size):
    image = random_image(*size, seed=size[0])
    status, headers, body = generate(served, served.names["image_a"], image)
    assert status == 200, body
    assert headers["content-type"] == "image/png" and headers["x-ganime-model"] == served.names["image_a"]
    steps = dict(step.strip().split(";dur=") for step in headers["server-timing"].split(","))
    assert set(steps) == {"decode", "generate", "forward", "encode"} and float(steps["generate"]) >= float(steps["forward"])
    assert headers["x-ganime-precision"] == local["image_a"].precision  # serve.precision auto, as here
    assert_close(images.decode_rgb(body), local["image_a"].translate([image])[0])


def test_multiplexed_models_in_a_row_each_answer_with_their_own_weights(served, local):
    image = random_image(48, 40, seed=7)
    outputs = {}
    for key in ("image_a", "image_b", "image_a"):
        status, headers, body = generate(served, served.names[key], image)
        assert status == 200 and headers["x-ganime-model"] == served.names[key]
        outputs[key] = images.decode_rgb(body)
        assert_close(outputs[key], local[key].translate([image])[0])
    assert np.abs(outputs["image_a"].astype(int) - outputs["image_b"].astype(int)).mean() > 5


def test_a_concurrent_burst_is_batched_and_every_answer_is_its_own(served, local):
    name = served.names["image_b"]
    inputs = [random_image(32, 32, seed=100 + i) for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda image: generate(served, name, image), inputs))
    expected = local["image_b"].translate(inputs)
    for (status, _, body), want in zip(answers, expected):
        assert status == 200, body
        assert_close(images.decode_rgb(body), want)
    batch_sizes = [int(headers["x-ganime-batch-size"]) for _, headers, _ in answers]
    assert max(batch_sizes) > 1, batch_sizes  # some requests shared a forward pass
    assert all(1 <= b <= 8 for b in batch_sizes)  # serve.max_batch_size in serve_config.yaml
    assert len({body for _, _, body in answers}) == len(inputs)  # distinct outputs for distinct inputs


def test_multipart_upload_jpeg_answer_and_max_side(served, local):
    name, image = served.names["image_a"], random_image(30, 45, seed=3)
    boundary = uuid.uuid4().hex
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + images.encode_png(image) + f"\r\n--{boundary}--\r\n".encode()
    status, _, body = call(served, f"v1/models/{name}/generate", form,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, body
    assert_close(images.decode_rgb(body), local["image_a"].translate([image])[0])

    status, headers, body = generate(served, name, image, headers={"Accept": "image/jpeg, image/png;q=0.5"})
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert images.decode_rgb(body).shape == image.shape
    status, headers, body = generate(served, name, image, headers={"Accept": "image/webp, image/png;q=0.5"})
    assert status == 200 and headers["content-type"] == "image/webp" and body[8:12] == b"WEBP"
    assert images.decode_rgb(body).shape == image.shape
    # ?format= wins over Accept; PNG answers are lossless.
    status, headers, body = generate(served, name, image, "?format=png", headers={"Accept": "image/webp"})
    assert status == 200 and headers["content-type"] == "image/png"
    assert_close(images.decode_rgb(body), local["image_a"].translate([image])[0])

    big = random_image(200, 300, seed=4)
    status, _, body = generate(served, name, big, "?max_side=64")
    assert status == 200 and images.decode_rgb(body).shape == (43, 64, 3)


def test_noise_models_draw_a_seeded_grid(served, local):
    name = served.names["noise"]
    first = call(served, f"v1/models/{name}/generate?seed=5&n=5", b"")
    again = call(served, f"v1/models/{name}/generate?seed=5&n=5", b"")
    other = call(served, f"v1/models/{name}/generate?seed=6&n=5", b"")
    truncated = call(served, f"v1/models/{name}/generate?seed=5&n=5&truncation=0.5", b"")
    assert all(status == 200 for status, _, _ in (first, again, other, truncated))
    grid = images.decode_rgb(first[2])
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2, 3)  # 5 images of 32 px in rows of 3, 2 px apart
    assert first[2] == again[2] and first[2] != other[2] and first[2] != truncated[2]
    assert_close(grid, local["noise"].sample(5, 5))


# ------------------------------------------------------------------------------------------- bad input


def post_declaring(served, path: str, length: int) -> tuple[int, dict, bytes]:
    """A POST whose Content-Length says ``length`` bytes, of which only the first 64 KiB are sent before the
    answer is read: a server that checks the declared length refuses it without waiting for the rest."""
    url = urllib.parse.urlsplit(served.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        connection.putrequest("POST", "/" + path)
        for name, value in (("Content-Type", "image/png"), ("Content-Length", str(length)),
                            ("Authorization", f"Bearer {served.token}")):
            connection.putheader(name, value)
        connection.endheaders()
        connection.send(b"\0" * 65536)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_every_bad_request_gets_its_4xx_with_a_reason_and_the_server_goes_on(served, local):
    a, noise = served.names["image_a"], served.names["noise"]
    png = images.encode_png(random_image(16, 16))
    path = f"v1/models/{a}/generate"
    truncated = png[: len(png) // 2]
    flat = io.BytesIO()
    Image.new("RGB", (2100, 2100), (255, 255, 255)).save(flat, "PNG")  # 4.4 Mpx, a few KB
    cases = [
        (401, call(served, path, png, {"Content-Type": "image/png"}, token=False), "Bearer"),
        (401, call(served, "v1/models", headers={"Authorization": "Bearer wrong"}, token=False), "Bearer"),
        (401, call(served, path + "?max_side=abc", png, {"Content-Type": "image/png"}, token=False), "Bearer"),
        (401, call(served, "openapi.json", token=False), "Bearer"),
        (404, call(served, "no/such/route"), "/no/such/route"),
        (405, call(served, path), "POST"),
        (404, call(served, "v1/models/no-such-model/generate", png, {"Content-Type": "image/png"}), "no-such-model"),
        (400, call(served, path, b"", {"Content-Type": "image/png"}), "empty"),
        (400, call(served, path, b"this is not an image", {"Content-Type": "image/png"}), "not an image"),
        (400, call(served, path, truncated, {"Content-Type": "image/png"}), "truncated"),
        (413, post_declaring(served, path, 16 * 2**20 + 1), "limit"),
        (413, call(served, path, flat.getvalue(), {"Content-Type": "image/png"}), "max_side"),
        (413, call(served, path, png_claiming(100_000, 100_000), {"Content-Type": "image/png"}), "pixels"),
        (415, call(served, path, b"hello", {"Content-Type": "text/plain"}), "text/plain"),
        (415, call(served, path, png, {"Content-Type": "application/x-www-form-urlencoded"}), "Content-Type"),
        (406, call(served, path, png, {"Content-Type": "image/png", "Accept": "application/json"}), "image/png"),
        (406, call(served, path, png, {"Content-Type": "image/png", "Accept": "image/avif"}), "image/webp"),
        (422, call(served, path + "?format=gif", png, {"Content-Type": "image/png"}), "format"),
        (422, call(served, path + "?max_side=abc", png, {"Content-Type": "image/png"}), "max_side"),
        (422, call(served, path + "?max_side=2", png, {"Content-Type": "image/png"}), "max_side"),
        (422, call(served, f"v1/models/{noise}/generate?n=0", b""), "n"),
        (422, call(served, f"v1/models/{noise}/generate?n=65", b""), "64"),
        (422, call(served, f"v1/models/{noise}/generate?seed=-1", b""), "seed"),
        (422, call(served, f"v1/models/{noise}/generate?truncation=0", b""), "truncation"),
    ]
    for expected, (status, headers, body), word in cases:
        assert status == expected, (expected, status, body[:300])
        assert headers["content-type"] == "application/json" and word in reason(body), (expected, body[:300])
    assert cases[0][1][1]["www-authenticate"] == "Bearer"
    status, _, body = call(served, "openapi.json")
    assert status == 200 and "/v1/models/{name}/generate" in json.loads(body)["paths"]
    # Still serving, and correctly.
    assert call(served, "healthz", token=False)[0] == 200
    image = random_image(20, 24, seed=9)
    status, _, body = generate(served, a, image)
    assert status == 200 and images.decode_rgb(body).shape == image.shape


@pytest.fixture
def extra_package(served):
    """Writes one more package into the served store (by name and seed); removed after the test."""
    import shutil

    from serving import seeded_net, unet_spec

    written = []

    def write(prefix: str, seed: int) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        export.write_package(seeded_net(unet_spec(), seed), unet_spec(), name, str(served.store), recipe="pix2pix")
        written.append(served.store / "models" / name)
        return name

    yield write
    for folder in written:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_package_exported_while_serving_is_found_without_a_restart(served, extra_package):
    name = extra_package("late", 9)
    deadline = time.monotonic() + 3 * MISS_RELIST_S  # the listing may have been refreshed just now
    while (answer := generate(served, name, random_image(16, 16)))[0] == 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    status, _, body = answer
    assert status == 200 and images.decode_rgb(body).shape == (16, 16, 3)


# ------------------------------------------------------------------------------------------- units


def test_preferred_media_follows_accept_q_values():
    assert preferred_media(None) == "image/png"
    assert preferred_media("*/*") == "image/png"
    assert preferred_media("image/jpeg") == "image/jpeg"
    assert preferred_media("image/png;q=0.4, image/jpeg;q=0.9") == "image/jpeg"
    assert preferred_media("image/*, image/png;q=0") == "image/jpeg"
    assert preferred_media("image/webp") == "image/webp"
    assert preferred_media("image/avif, image/webp, */*;q=0.8") == "image/webp"  # a browser's <img> Accept
    assert preferred_media("image/webp;q=0.9, image/jpeg;q=0.9") == "image/jpeg"  # ties: PNG, JPEG, WebP
    assert preferred_media("image/*;q=0.5, image/webp;q=0.6") == "image/webp"
    for refused in ("text/html", "image/avif", "image/*;q=0", "image/webp;q=0"):
        with pytest.raises(HTTPException) as e:
            preferred_media(refused)
        assert e.value.status_code == 406 and "image/webp" in e.value.detail


def ray_free_gateway(tree: dict):
    """A Gateway built in this process without Ray or Serve (its class under Serve's ingress wrapper)."""
    gateway_class = Gateway.func_or_class.__mro__[1]
    gateway = gateway_class.__new__(gateway_class)
    gateway_class.__init__(gateway, None, tree)
    return gateway


def test_answers_are_encoded_in_the_codec_pool_at_the_configured_level(tmp_path, monkeypatch):
    import asyncio
    import threading

    y, x = np.mgrid[0:128, 0:192]
    image = np.stack([x * 255 // 191, y * 255 // 127, (x // 32 + y // 32) % 2 * 200], -1).astype(np.uint8)
    image[40:90, 60:150] = (250, 240, 10)  # gradients and flat cels: compressible, and lossy codecs keep it close
    threads: list[str] = []
    real_encode = images.encode_png_fast
    monkeypatch.setattr(images, "encode_png_fast",
                        lambda *a: threads.append(threading.current_thread().name) or real_encode(*a))
    sizes = {}
    for level in (0, 1, 9):
        gateway = ray_free_gateway({"store": {"uri": str(tmp_path)},
                                    "serve": {"png_compress_level": level, "codec_threads": 3}})
        assert gateway.codec._max_workers == 3
        png = asyncio.run(gateway.encode(image, "image/png"))
        assert np.array_equal(images.decode_rgb(png), image)  # lossless at every level, through OpenCV ...
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), image)  # ... and through PIL
        sizes[level] = len(png)
        jpeg, webp = (asyncio.run(gateway.encode(image, media)) for media in ("image/jpeg", "image/webp"))
        assert jpeg[:2] == b"\xff\xd8" and webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
        for lossy in (jpeg, webp):
            assert np.abs(images.decode_rgb(lossy).astype(int) - image).mean() < 8
        gateway.codec.shutdown()
    assert sizes[0] > sizes[1] > sizes[9]
    assert len(threads) == 3 and all(name.startswith("ganime-codec") for name in threads)


def test_fast_png_round_trips_bit_exact_and_opencv_decodes_like_pil():
    rng = np.random.default_rng(0)
    for shape in ((1, 1, 3), (1, 9, 3), (7, 1, 3), (33, 50, 3), (20, 31)):
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        for level in range(10):
            png = images.encode_png_fast(array, level)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), array), (shape, level)
    with pytest.raises(ValueError, match="0-9"):
        images.encode_png_fast(array, 10)
    with pytest.raises(ValueError, match="uint8"):
        images.encode_png_fast(array.astype(np.float32))
    # decode_rgb takes OpenCV for 8-bit RGB and gray PNGs: the same pixels as PIL's, gamma chunk or not.
    color = random_image(40, 56, seed=2)
    for array, options in ((color, {}), (color, {"gamma": 0.45}), (color[..., 0], {})):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG", **options)
        expected = np.asarray(Image.fromarray(array).convert("RGB"))
        assert np.array_equal(images.decode_rgb(buffer.getvalue()), expected)


def test_ganime_serve_sizes_replicas_to_the_machine():
    gib = 2**30
    two_cores = local_layout(True, {"CPU": 2, "memory": 8 * gib})
    assert two_cores == {"replicas": 2, "num_cpus": 1.0}  # as before: one CPU each
    assert local_layout(True, {"CPU": 2, "memory": gib // 2}) == {"replicas": 1, "num_cpus": 2.0}
    assert local_layout(True, {"CPU": 16, "GPU": 1, "memory": 100 * gib}) == {"replicas": 4, "num_cpus": 4.0,
                                                                                "num_gpus": 0.25}
    assert local_layout(True, {"CPU": 16, "memory": 100 * gib}, replicas=8)["num_cpus"] == 2.0
    assert local_layout(False, {"CPU": 16, "GPU": 2, "memory": 100 * gib}) == {"replicas": 4, "generator_replicas": 2,
                                                                                 "num_gpus": 1}
    assert local_layout(False, {"CPU": 2, "memory": 8 * gib}) == {"replicas": 2, "num_cpus": 1.5}
    # What the layout asks of Ray fits the machine.
    app = application({"store": {"uri": "/unused"}, "serve": {"colocate": False}},
                      **local_layout(False, {"CPU": 16, "GPU": 2, "memory": 100 * gib}))._bound_deployment
    generators = app.init_args[0]._bound_deployment if hasattr(app.init_args[0], "_bound_deployment") \
        else app.init_args[0]
    assert app.num_replicas == 4 and generators.ray_actor_options["num_gpus"] == 1


def test_unknown_model_names_relist_the_store_at_most_once_a_second(tmp_path, monkeypatch):
    import asyncio

    from serving import make_packages

    names = make_packages(str(tmp_path))
    listings = []
    real_scan = export.scan_packages
    monkeypatch.setattr(export, "scan_packages", lambda *a: listings.append(1) or real_scan(*a))
    gateway = ray_free_gateway({"store": {"uri": str(tmp_path)}})

    async def ask(name: str) -> int:
        try:
            await gateway._package(name)
            return 200
        except HTTPException as e:
            return e.status_code

    async def burst() -> list[int]:
        return [await ask(names["image_a"])] + [await ask(f"missing-{i}") for i in range(50)]

    statuses = asyncio.run(burst())
    assert statuses == [200] + [404] * 50 and len(listings) == 1  # 50 misses within a second: no new listing
    time.sleep(MISS_RELIST_S)
    assert asyncio.run(ask("missing")) == 404 and len(listings) == 2


def test_colocate_makes_one_deployment_that_has_the_generators_resources():
    # Application._bound_deployment: Serve has no public way to look into an application before it runs.
    split, one = (build_app({"store": {"uri": "/unused"}, "serve": {"colocate": colocate}})._bound_deployment
                  for colocate in (False, True))
    assert split.name == one.name == "Gateway"
    assert len(inspect.signature(build_app).parameters) == 1  # `serve deploy` refuses builders of more or fewer
    assert split.init_args[0] is not None and split.ray_actor_options == {"num_cpus": 0.25}
    assert one.init_args[0] is None and one.ray_actor_options == Generators.ray_actor_options


def test_model_summary_leaves_the_training_config_out(tmp_path):
    from serving import make_packages

    names = make_packages(str(tmp_path))
    meta = export.package_meta(str(tmp_path / "models" / names["image_a"]))
    meta["metrics"]["evaluation"] = {"fid": 12.5, "report": "/srv/ganime/runs/x/eval/metrics.json",
                                     "checkpoint": "s3://bucket/runs/x/checkpoint_epoch_0005",
                                     "fid_backbone": {"name": "pt_inception", "path": "/root/.cache/w.pth"}}
    summary = model_summary(names["image_a"], meta)
    assert "training" not in summary and summary["kind"] == "image-to-image"
    assert summary["metrics"]["evaluation"] == {"fid": 12.5, "fid_backbone": {"name": "pt_inception"}}


# ------------------------------------------------------------------------------------------- ganime serve


def test_ganime_serve_runs_the_same_app_locally(ganime_server):
    """`ganime serve` (the session's) on its own local Ray, in Serve's high-throughput mode: loopback, no token
    when none is set, one deployment unless told otherwise, every package of its store listed and served.
    tests/test_faults_server.py stops it with signals and serves in two deployments."""
    assert f"at {ganime_server.url}  (one deployment, 2 replicas;" in ganime_server.log.read_text()
    models = ganime_server.models(set(ganime_server.names.values()))
    assert set(models) == {p.name for p in (ganime_server.store / "models").iterdir()}
    assert haproxy_runs(ganime_server.proc.pid)  # high-throughput mode (conftest's cluster runs Serve's default proxy)
    answers_small_and_big_images(ganime_server.url, ganime_server.names["image_a"])


def listed(served, name: str, timeout_s: float = 20) -> dict:
    """GET /v1/models once it mentions ``name`` (its listing is cached for serve.models_cache_s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, _, body = call(served, "v1/models")
        assert status == 200, body
        listing = json.loads(body)
        if name in {m["name"] for m in listing["models"] + listing["broken"]} or time.monotonic() > deadline:
            return listing
        time.sleep(0.5)


def test_a_package_whose_weights_fail_their_check_is_a_json_500_without_paths(served, extra_package):
    name = extra_package("corrupt", 11)
    weights = served.store / "models" / name / export.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    status, headers, body = generate(served, name, random_image(16, 16))
    assert status == 500 and headers["content-type"] == "application/json" and "sha256" in reason(body)
    assert str(served.store) not in body.decode() and reason(body).startswith(f"model {name!r} cannot be served")
    listing = listed(served, name)  # reported as broken from now on, without loading it again
    assert {"name": name, "reason": reason(body).split(": ", 1)[1]} in listing["broken"]
    assert call(served, "healthz", token=False)[0] == 200


def test_a_broken_package_beside_good_ones_is_reported_and_the_rest_are_served(served, extra_package):
    name = extra_package("no-kind", 12)
    manifest = served.store / "models" / name / export.MANIFEST
    meta = json.loads(manifest.read_text())
    del meta["kind"]
    manifest.write_text(json.dumps(meta))
    listing = listed(served, name)
    assert set(served.names.values()) <= {m["name"] for m in listing["models"]}
    [broken] = [b for b in listing["broken"] if b["name"] == name]
    assert "kind" in broken["reason"] and str(served.store) not in broken["reason"]
    status, headers, body = generate(served, name, random_image(16, 16))
    assert status == 500 and headers["content-type"] == "application/json" and "kind" in reason(body)
    assert generate(served, served.names["image_a"], random_image(16, 16))[0] == 200


def _replica_pids(served, deployment: str) -> list[int]:
    """Processes of this cluster's replicas of ``deployment`` (other clusters may run the same app)."""
    from pathlib import Path

    pids = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            title = (process / "cmdline").read_bytes()
            mine = f"GANIME_STORE={served.store}".encode() in (process / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if mine and f"ServeReplica:{APP_NAME}:{deployment}".encode() in title:
            pids.append(int(process.name))
    return pids


def test_a_killed_generators_replica_costs_no_answer_that_is_not_json(served):
    """Last in this module: Serve restarts the replica; what was in flight is retried once on the new one, or
    answered 503 + Retry-After. Four clients keep asking until 200s come back, and a few seconds more."""
    import os
    import signal
    import threading

    [pid] = _replica_pids(served, "Generators")
    name, answers, stop = served.names["image_b"], [], threading.Event()

    def client(seed: int) -> None:
        while not stop.is_set():
            answers.append((time.monotonic(), *generate(served, name, random_image(24, 24, seed))))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for seed in range(4):
            pool.submit(client, seed)
        time.sleep(1)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = killed_at + 90
        while time.monotonic() < deadline and not any(t > killed_at + 1 and s == 200 for t, s, _, _ in answers):
            time.sleep(0.2)
        time.sleep(2)
        stop.set()
    statuses = [status for _, status, _, _ in answers]
    assert any(t > killed_at + 1 and s == 200 for t, s, _, _ in answers), statuses  # serving again
    for _, status, headers, body in answers:
        assert status in (200, 503), (status, body[:300])
        if status == 503:
            assert headers["content-type"] == "application/json" and headers["retry-after"] and reason(body)
    assert statuses.count(503) <= 4, statuses  # at most what was in flight when it died
