"""The Serve application under faults, in this process (tests/serving.py's LocalGateway: the Gateway's FastAPI app
over a real store, without Ray): broken packages beside good ones, decoding within a budget, the token before
everything else, an unreachable store. The same app deployed for real: tests/test_serve.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving import NAMES, LocalGateway, make_packages, png_claiming, random_image, reason

from ray_ganime import export, images, transforms
from ray_ganime.cli import main as ganime
from ray_ganime.serve import scrub

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ------------------------------------------------------------------------------------------ broken packages


def _broken_copy(store: Path, name: str, change) -> None:
    """A copy of package image_a as ``name``, with ``change`` applied to its model.json (a dict, or the text)."""
    shutil.copytree(store / "models" / NAMES["image_a"], store / "models" / name)
    manifest = store / "models" / name / export.MANIFEST
    meta = json.loads(manifest.read_text())
    changed = change(meta)
    manifest.write_text(changed if isinstance(changed, str) else json.dumps(meta))


def _network(meta: dict, **args) -> None:
    """Changes the U-Net's arguments and says its parameter count honestly: only the other checks may refuse it."""
    import torch

    from ray_ganime.nets import build_generator, count_parameters

    meta["network"]["args"].update(args)
    with torch.device("meta"):
        meta["weights"]["parameters"] = count_parameters(build_generator("UNetGenerator", meta["network"]["args"]))


BROKEN = {  # name: (what is wrong with its model.json, a word its reason must hold)
    "no-kind": (lambda m: m.pop("kind"), "kind"),
    "unknown-class": (lambda m: m["network"].update({"class": "StyleGAN9"}), "StyleGAN9"),
    "too-large": (lambda m: _network(m, ngf=160), "max_parameters"),  # 104 M parameters
    "lying-count": (lambda m: m["weights"].update(parameters=12), "weights.parameters"),
    "gray-output": (lambda m: (_network(m, out_channels=1), m["output"].update(channels=1)), "RGB"),
    "not-json": (lambda m: '{"format": "ray-ganime-model", ', "JSON"),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("faults") / "store"
    make_packages(str(store))
    for name, (change, _) in BROKEN.items():
        _broken_copy(store, name, change)
    return store


@pytest.fixture(scope="module")
def gateway(store):
    local = LocalGateway({"store": {"uri": str(store)}, "serve": {"max_parameters": 50_000_000}},
                         {"GANIME_SERVE_TOKEN": TOKEN})
    yield local
    local.close()


def test_broken_packages_are_reported_apart_and_never_break_the_listing(gateway, store):
    started = time.monotonic()
    status, headers, body = gateway.request("GET", "/v1/models", headers=AUTH)
    assert status == 200, body
    assert time.monotonic() - started < 10  # a 340 M parameter network is counted, not built
    listing = json.loads(body)
    assert {m["name"] for m in listing["models"]} == set(NAMES.values())
    broken = {b["name"]: b["reason"] for b in listing["broken"]}
    assert set(broken) == set(BROKEN)
    for name, (_, word) in BROKEN.items():
        assert word in broken[name], (name, broken[name])
    assert str(store) not in body.decode() and "/tmp" not in body.decode()


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_calling_a_broken_package_is_a_json_500_that_names_no_path(gateway, store, name):
    status, headers, body = gateway.request("POST", f"/v1/models/{name}/generate", images.encode_png(random_image(8, 8)),
                                            {"Content-Type": "image/png", **AUTH})
    assert status == 500 and headers["content-type"] == "application/json"
    text = reason(body)
    assert text.startswith(f"model {name!r} cannot be served: ") and BROKEN[name][1] in text
    assert str(store) not in text and "/tmp" not in text


def test_ganime_models_lists_broken_packages_as_broken(store, capsys):
    assert ganime(["models", "--store", str(store), "--set", "serve.max_parameters=50000000"]) in (0, None)
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(lines) == set(NAMES.values()) | set(BROKEN)
    for name in BROKEN:
        assert "BROKEN:" in lines[name], lines[name]
    assert "BROKEN" not in lines[NAMES["image_a"]]


@pytest.mark.parametrize("change, word", [
    (lambda m: m["network"]["args"].update(num_downs=5000), "layers"),  # would take seconds to build
    (lambda m: m.update(native_size=10**6), "native_size"),
    (lambda m: m["input"].update(channels=1000), "input.channels"),
    (lambda m: m["network"]["args"].update(num_downs=7), "divisible"),  # 2**7 does not fit the 32 px it claims
    (lambda m: m["output"].update(channels=4), "maps"),  # the network's output has 3
    (lambda m: m["network"]["args"].update(ngf=10**9), "UNetGenerator"),
])
def test_a_manifest_is_checked_without_allocating_its_network(store, change, word):
    meta = json.loads((store / "models" / NAMES["image_a"] / export.MANIFEST).read_text())
    change(meta)
    with pytest.raises(export.PackageError, match=word):
        export.check_manifest(meta)


# ------------------------------------------------------------------------------------------ decoding


def test_an_image_over_the_decode_budget_is_refused_from_its_header(gateway):
    path = f"/v1/models/{NAMES['image_a']}/generate"
    for query, hint in (("?max_side=64", "smaller"), ("", "max_side")):
        started = time.monotonic()
        status, headers, body = gateway.request("POST", path + query, png_claiming(8190, 8190),
                                                {"Content-Type": "image/png", **AUTH})
        assert status == 413 and hint in reason(body) and "8190x8190" in reason(body), body
        assert time.monotonic() - started < 5  # nothing decoded (the old path decoded 67 Mpx first)


def test_a_big_jpeg_with_max_side_decodes_at_a_fraction_of_its_size(store):
    local = LocalGateway({"store": {"uri": str(store)}, "serve": {"max_decode_pixels": 1_000_000}})
    try:
        gradient = np.asarray(Image.linear_gradient("L").resize((3000, 2000)))
        photo = np.stack([gradient, gradient[::-1], 255 - gradient], -1)
        jpeg = images.encode_jpeg(photo, 90)  # 6 Mpx: six times the budget, an eighth of it after draft()
        image = local.loop.run_until_complete(local.gateway._decode(jpeg, 256))
        assert image.shape == (171, 256, 3)
        reference = transforms.fit_max_side(images.decode_rgb(jpeg), 256)
        assert np.abs(image.astype(int) - reference.astype(int)).mean() < 2
        with pytest.raises(Exception, match="1000000 pixels") as refused:
            local.loop.run_until_complete(local.gateway._decode(jpeg, 2048))  # 1/1 scale: over the budget
        assert refused.value.status_code == 413
    finally:
        local.close()


MEMORY_SCRIPT = textwrap.dedent("""
    import asyncio, io, json, sys
    from PIL import Image
    from serving import LocalGateway

    def status(key):
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

    concurrent = int(sys.argv[1])
    local = LocalGateway({"store": {"uri": "/unused"}, "serve": {"max_concurrent_decodes": concurrent}})
    def png(side, mode):
        out = io.BytesIO()
        Image.linear_gradient("L").resize((side, side)).convert(mode).save(out, "PNG", compress_level=1)
        return out.getvalue()
    big, bomb = png(3000, "RGB"), png(8190, "L")  # 9 Mpx within the budget; 67 Mpx over it (a few hundred KB)
    local.loop.run_until_complete(local.gateway._decode(png(64, "RGB"), 64))  # libraries warm

    async def burst():
        calls = [local.gateway._decode(data, 64) for data in [big, bomb] * 6]
        return await asyncio.gather(*calls, return_exceptions=True)

    open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
    before = status("VmRSS:")
    answers = local.loop.run_until_complete(burst())
    print(json.dumps({"growth": status("VmHWM:") - before, "pixels": 3000 * 3000,
                      "answers": [getattr(a, "status_code", None) or list(a.shape) for a in answers]}))
""")


def test_a_replica_decoding_many_big_images_stays_within_its_memory_bound(tmp_path):
    """12 uploads at once (6 of 9 Mpx, 6 of 67 Mpx that are a few hundred KB as PNG): the bombs are refused from
    their headers, at most serve.max_concurrent_decodes (2) decodes run at a time, each holding at most 16 bytes
    per pixel (README). Without the budget and the bound, this peaks at several GB."""
    script = tmp_path / "decode_burst.py"
    script.write_text(MEMORY_SCRIPT)
    run = subprocess.run([sys.executable, str(script), "2"], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={"PYTHONPATH": str(Path(__file__).parent), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["answers"] == [[64, 64, 3], 413] * 6
    bound = 2 * result["pixels"] * 16 + 64 * 2**20  # + the allocator's and the decoding threads' own
    assert result["growth"] < bound, (result["growth"] / 2**20, bound / 2**20)  # unbounded: 3.2 GB


# ------------------------------------------------------------------------------------------ HTTP


def test_the_token_comes_before_routing_and_validation_and_fastapi_errors_are_json(gateway):
    generate = f"/v1/models/{NAMES['image_a']}/generate"
    for method, path in (("GET", "/v1/models"), ("POST", generate + "?max_side=abc"), ("GET", "/no/such/route"),
                         ("GET", generate), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json")):
        status, headers, body = gateway.request(method, path)
        assert status == 401 and headers["www-authenticate"] == "Bearer" and "Bearer" in reason(body), (path, body)
    for path in ("/", "/healthz", "/readyz"):  # open: the page asks for the token itself; probes carry none
        assert gateway.request("GET", path)[0] == 200, path

    status, _, body = gateway.request("POST", generate + "?max_side=abc", b"x", {"Content-Type": "image/png", **AUTH})
    assert status == 422 and "max_side" in reason(body)
    status, headers, body = gateway.request("GET", "/no/such/route", headers=AUTH)
    assert status == 404 and headers["content-type"] == "application/json" and "/no/such/route" in reason(body)
    status, headers, body = gateway.request("GET", generate, headers=AUTH)
    assert status == 405 and headers["allow"] == "POST" and "POST" in reason(body)
    status, headers, body = gateway.request("GET", "/openapi.json", headers=AUTH)
    assert status == 200 and "/v1/models/{name}/generate" in json.loads(body)["paths"]
    status, headers, _ = gateway.request("GET", "/docs", headers=AUTH)
    assert status == 200 and headers["content-type"].startswith("text/html")


def test_an_unreachable_store_is_a_quick_503_and_the_replica_is_not_ready(monkeypatch):
    from servers import free_ports

    port, = free_ports(1)  # nothing listens there
    for key, value in {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "GANIME_S3_MAX_ATTEMPTS": "2"}.items():
        monkeypatch.setenv(key, value)
    local = LocalGateway({"store": {"uri": "s3://closed-store/ganime"}})
    try:
        for method, path in (("GET", "/readyz"), ("GET", "/v1/models"), ("POST", "/v1/models/any/generate")):
            started = time.monotonic()
            status, headers, body = local.request(method, path, b"", {"Content-Type": "image/png"})
            assert status == 503 and headers["retry-after"] == "5", (path, status, body)
            assert "model store" in reason(body) and str(port) not in reason(body) and "closed-store" not in reason(body)
            assert time.monotonic() - started < 10, path
        assert local.request("GET", "/healthz")[0] == 200  # alive, just not ready
    finally:
        local.close()


def test_scrub_takes_every_path_and_uri_out_of_a_text():
    text = ("/srv/ganime/store/models/a/generator.safetensors: sha256 0f does not match; s3://bucket/x/y.json "
            "and ~/store/m/model.json, file:///tmp/a/b, 1/8 scale, image/png, models/a/model.json")
    assert scrub(text) == ("<path>: sha256 0f does not match; <path> and <path>, <path>, 1/8 scale, image/png, "
                           "models/a/model.json")
