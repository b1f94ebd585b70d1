"""Ray Serve: every model package in the store behind one HTTP API, and a page to try them on.

    GET  /                            the page: pick a model, drop an image (or pick a seed), download the result
    GET  /healthz                     {"status": "ok"}
    GET  /v1/models                   the store's packages: kind, sizes, metrics (each FID with its backbone id)
    POST /v1/models/{name}/generate   image-to-image: the image as the body or a multipart file, optional
                                      ?max_side=; answers PNG (JPEG when Accept prefers it) of the input's size.
                                      noise: ?seed=&n=&truncation=; answers a PNG grid of n images.

Two deployments, so that each scales on what it needs (``serve.colocate`` makes it one: ``ganime serve``'s default):

* ``Gateway``: the FastAPI ingress. Auth, limits, decoding and encoding; CPU only and stateless.
* ``Generators``: loads packages by name (``@serve.multiplexed``: an LRU of ``serve.models_per_replica`` per
  replica, and Serve routes a model's requests to replicas that hold it) and runs the requests for one model
  that queue together as one forward pass (``batching.Batcher``), in ``serve.precision`` (``inference``). One
  replica per GPU where there are GPUs.

Bad input is never a 500: 400 (empty or undecodable body), 401 (bearer token, when $GANIME_SERVE_TOKEN or
``serve.token_env`` is set on the replicas), 404 (unknown model), 406 (Accept names neither PNG nor JPEG),
413 (bytes, pixels, decompression bombs), 415 (not an image media type), 422 (bad parameters), each with a
JSON ``{"error", "reason"}``.

``serve deploy serve_config.yaml`` deploys it on a cluster; ``ganime serve`` runs the same app locally.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures of the class-based views
# that serve.ingress builds, and cannot resolve string annotations there (Request would become a query field).
import asyncio
import contextlib
import os
import secrets
import signal
import time
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser

from ray_ganime import __version__, export, images, inference, transforms
from ray_ganime.batching import Batcher
from ray_ganime.config import Config, from_tree

__all__ = ["APP_NAME", "Gateway", "Generators", "build_app", "run_local"]

APP_NAME = "ganime"
# Bodies taken as the image itself; anything else but multipart/form-data is a 415.
RAW_IMAGE_TYPES = ("application/octet-stream",)
FORM_FIELDS = ("image", "file")  # multipart field names looked for first (else the first file part)
IMAGE_MEDIA = {"png": "image/png", "jpeg": "image/jpeg"}
MISS_RELIST_S = 1.0  # an unknown model name re-lists the store at most this often

app = FastAPI(title="ray-ganime", version=__version__,
              description="Anime GAN generators from a ray-ganime model store. See GET /v1/models.")


def _error(status: int, reason: str, headers: dict | None = None) -> JSONResponse:
    from http import HTTPStatus

    return JSONResponse({"error": HTTPStatus(status).phrase, "reason": reason}, status_code=status, headers=headers)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    reasons = [f"{'.'.join(str(p) for p in e['loc'] if p not in ('query', 'path'))}: {e['msg']}" for e in exc.errors()]
    return _error(422, "; ".join(reasons))


@app.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    # Not the client's fault (a corrupt package, a replica that died): still JSON, and says what broke.
    # A replica's exception arrives wrapped in a RayTaskError whose message is a traceback: use its cause.
    cause = getattr(exc, "cause", None) or exc
    return _error(500, f"{type(cause).__name__}: {cause}".splitlines()[0][:500])


def preferred_media(accept: str | None) -> str:
    """``image/png`` or ``image/jpeg`` by the Accept header's q-values (PNG on ties and without a header);
    406 when it accepts neither."""
    if not accept:
        return IMAGE_MEDIA["png"]
    quality: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = q

    def q_of(media: str) -> float:
        for key in (media, media.split("/")[0] + "/*", "*/*"):
            if key in quality:
                return quality[key]
        return 0.0

    png, jpeg = q_of(IMAGE_MEDIA["png"]), q_of(IMAGE_MEDIA["jpeg"])
    if max(png, jpeg) <= 0:
        raise HTTPException(406, f"this API answers image/png or image/jpeg, not {accept}")
    return IMAGE_MEDIA["jpeg"] if jpeg > png else IMAGE_MEDIA["png"]


def model_summary(name: str, meta: dict) -> dict[str, Any]:
    """What GET /v1/models says of a package: enough to call it and to compare it, not its training config."""
    return {"name": name, "kind": meta["kind"], "recipe": meta.get("recipe"),
            "native_size": meta.get("native_size"), "size_multiple": meta.get("size_multiple"),
            "input": meta.get("input"), "output": meta.get("output"),
            "parameters": meta.get("weights", {}).get("parameters"), "metrics": meta.get("metrics", {}),
            "created": meta.get("created"), "onnx": bool(meta.get("onnx"))}


class Timing(dict):
    """Milliseconds per step of a request, for the standard Server-Timing header (browsers' dev tools show it):
    decode and encode in the gateway, generate = the round trip to Generators (queueing and batching included),
    forward = the network's own forward pass (for the whole batch)."""

    @contextlib.contextmanager
    def __call__(self, step: str):
        started = time.perf_counter()
        yield
        self[step] = (time.perf_counter() - started) * 1e3

    def header(self) -> str:
        return ", ".join(f"{step};dur={ms:.1f}" for step, ms in self.items())


class Run(NamedTuple):
    """How a Generators replica ran a request: requests in its batch, the batch's forward pass in ms, and the
    precision (X-Ganime-Batch-Size, Server-Timing forward and X-Ganime-Precision on the response)."""

    batch: int
    forward_ms: float
    precision: str


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
class Generators:
    """Model packages by name, batched. The Gateway calls it through a handle with ``multiplexed_model_id=<name>``
    (Serve routes the call to a replica that holds the model), or in its own replica when ``serve.colocate``."""

    def __init__(self, config: dict) -> None:
        cfg: Config = from_tree(config)
        self.store, limits = cfg.store, cfg.serve
        if limits.torch_threads:
            import torch

            torch.set_num_threads(limits.torch_threads)
        self.device, self.precision = limits.device, limits.precision

        async def load_generator(name: str) -> "inference.Generator":
            uri = export.package_uri(self.store.uri, name)
            return await asyncio.to_thread(inference.Generator.load, uri, self.device, self.store.options(),
                                           self.precision)

        # Decorated here rather than on the class: the LRU size comes from the config.
        self.get_generator = serve.multiplexed(max_num_models_per_replica=limits.models_per_replica)(load_generator)
        self.batcher = Batcher(self._translate_batch, limits.max_batch_size, limits.batch_wait_timeout_s)

    async def translate(self, name: str, image: np.ndarray) -> tuple[np.ndarray, Run]:
        return await self.batcher(name, image)

    async def _translate_batch(self, name: str, batch: list[np.ndarray]) -> list[tuple[np.ndarray, Run]]:
        generator = await self.get_generator(name)
        started = time.perf_counter()
        # Off the event loop: requests keep queueing (into the next batch) while this one runs.
        outputs = await asyncio.to_thread(generator.translate, batch)
        run = Run(len(batch), (time.perf_counter() - started) * 1e3, generator.precision)
        return [(out, run) for out in outputs]

    async def sample(self, name: str, seed: int, n: int, truncation: float | None) -> tuple[np.ndarray, Run]:
        generator = await self.get_generator(name)
        started = time.perf_counter()
        grid = await asyncio.to_thread(generator.sample, seed, n, truncation)
        return grid, Run(1, (time.perf_counter() - started) * 1e3, generator.precision)


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Gateway:
    """HTTP in front of ``Generators``: auth, limits, image decoding and encoding. ``generators``: the Generators
    deployment's handle, or None to run them in this replica (``serve.colocate``)."""

    def __init__(self, generators: DeploymentHandle | None, config: dict) -> None:
        cfg: Config = from_tree(config)
        self.generators, self.store, self.limits = generators, cfg.store, cfg.serve
        self.local = Generators.func_or_class(config) if generators is None else None
        # Read on the replica, from its own environment: the token never travels in a config or a handle.
        self.token = os.environ.get(self.limits.token_env) or None
        self.page = resources.files("ray_ganime").joinpath("web", "index.html").read_bytes()
        self._listing: tuple[float, dict[str, dict]] = (-float("inf"), {})

    # ---- helpers
    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.token.encode()):
            raise HTTPException(401, "this server needs `Authorization: Bearer <token>`",
                                headers={"WWW-Authenticate": "Bearer"})

    async def _packages(self, fresh: bool = False) -> dict[str, dict]:
        """Package name (its folder) -> model.json, listed at most every ``serve.models_cache_s``."""
        listed_at, packages = self._listing
        if fresh or time.monotonic() - listed_at > self.limits.models_cache_s:
            found = await asyncio.to_thread(export.list_packages, self.store.uri, self.store.options())
            packages = {m["uri"].rstrip("/").rsplit("/", 1)[-1]: m for m in found}
            self._listing = (time.monotonic(), packages)
        return packages

    async def _package(self, name: str) -> dict:
        packages = await self._packages()
        # Exported since the last listing? Look again, but at most once per MISS_RELIST_S: a stream of
        # requests for a name that does not exist must not become a stream of store listings (S3 LISTs).
        if name not in packages and time.monotonic() - self._listing[0] >= MISS_RELIST_S:
            packages = await self._packages(fresh=True)
        if name not in packages:
            raise HTTPException(404, f"no model {name!r} in this server's store (GET /v1/models lists them)")
        return packages[name]

    async def _body(self, request: Request) -> bytes:
        """The request body, refused with 413 as soon as it passes ``serve.max_request_bytes``."""
        limit = self.limits.max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"body of {int(declared)} bytes is over this server's limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"body is over this server's limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _image_bytes(self, request: Request) -> bytes:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "multipart/form-data":
            body = await self._body(request)

            async def stream():
                yield body

            try:
                form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16,
                                             max_part_size=self.limits.max_request_bytes).parse()
            except Exception as e:  # the parser's errors for malformed forms and too many parts
                raise HTTPException(400, f"bad multipart body: {e}") from None
            files = [form.get(k) for k in FORM_FIELDS] + [v for _, v in form.multi_items()]
            upload = next((f for f in files if isinstance(f, UploadFile)), None)
            if upload is None:
                raise HTTPException(400, f"multipart body has no file part (name it one of {FORM_FIELDS})")
            part_media = (upload.content_type or "").split(";")[0].strip().lower()
            if part_media and not (part_media.startswith("image/") or part_media in RAW_IMAGE_TYPES):
                raise HTTPException(415, f"the uploaded file is {part_media}, not an image")
            return await upload.read()
        if media.startswith("image/") or media in RAW_IMAGE_TYPES:
            return await self._body(request)
        raise HTTPException(415, f"send the image as the body (Content-Type image/png, image/jpeg, ...) or as "
                                 f"multipart/form-data, not {media or 'a body without Content-Type'}")

    def _decode(self, data: bytes, max_side: int | None) -> np.ndarray:
        if not data:
            raise HTTPException(400, "empty body: send an image")
        try:
            image = images.decode_rgb(data)
        except images.TooLarge as e:
            raise HTTPException(413, str(e)) from None
        except images.BadImage as e:
            raise HTTPException(400, str(e)) from None
        image = transforms.fit_max_side(image, max_side)
        height, width = image.shape[:2]
        if height * width > self.limits.max_pixels:
            raise HTTPException(413, f"{width}x{height} is over this server's limit of {self.limits.max_pixels} "
                                     f"pixels; pass ?max_side= to shrink it first")
        return image

    def _generators(self, method: str, name: str, *args):
        """``Generators.<method>(name, *args)``: in this replica when colocated, else over Ray to a replica that
        holds model ``name``."""
        if self.local is not None:
            return getattr(self.local, method)(name, *args)
        return getattr(self.generators.options(multiplexed_model_id=name), method).remote(name, *args)

    @staticmethod
    def _encode(image: np.ndarray, media: str) -> bytes:
        return images.encode_jpeg(image) if media == IMAGE_MEDIA["jpeg"] else images.encode_png(image, 1)

    # ---- routes
    @app.get("/", include_in_schema=False)
    def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        packages = await self._packages()
        return {"models": [model_summary(name, meta) for name, meta in sorted(packages.items())]}

    @app.post("/v1/models/{name}/generate")
    async def generate(self, name: str, request: Request,
                       max_side: int | None = Query(None, ge=8, le=8192, description="image models: shrink first"),
                       seed: int = Query(0, ge=0, le=2**31 - 1, description="noise models"),
                       n: int = Query(1, ge=1, description="noise models: images in the grid"),
                       truncation: float | None = Query(None, gt=0, le=10, description="noise models")) -> Response:
        self._authorize(request)
        media = preferred_media(request.headers.get("accept"))
        meta = await self._package(name)
        headers = {"X-Ganime-Model": name}
        timing = Timing()
        try:
            if meta["kind"] == export.NOISE:
                if n > self.limits.max_images:
                    raise HTTPException(422, f"n: at most {self.limits.max_images} images per request, got {n}")
                with timing("generate"):
                    output, run = await self._generators("sample", name, seed, n, truncation)
            elif meta["kind"] == export.IMAGE_TO_IMAGE:
                data = await self._image_bytes(request)
                with timing("decode"):
                    image = await asyncio.to_thread(self._decode, data, max_side)
                with timing("generate"):
                    output, run = await self._generators("translate", name, image)
                headers["X-Ganime-Batch-Size"] = str(run.batch)
            else:
                raise HTTPException(501, f"{name} is a {meta['kind']!r} model, which this server cannot run")
        except FileNotFoundError:  # removed from the store since it was listed (Ray re-raises it as such)
            self._listing = (-float("inf"), {})
            raise HTTPException(404, f"model {name!r} is no longer in this server's store") from None
        timing["forward"] = run.forward_ms
        headers["X-Ganime-Precision"] = run.precision
        with timing("encode"):
            data = await asyncio.to_thread(self._encode, output, media)
        return Response(data, media_type=media, headers={**headers, "Server-Timing": timing.header()})


def build_app(args: dict | None = None) -> serve.Application:
    """The application: serve_config.yaml's ``import_path: ray_ganime.serve:build_app``. ``args`` is a ray-ganime
    config tree; only its ``store`` and ``serve`` sections matter (the store defaults to $GANIME_STORE, as
    everywhere)."""
    config = from_tree(dict(args or {})).model_dump(mode="json", include={"store", "serve"})
    if config["serve"]["colocate"]:  # one deployment: the Gateway also holds the networks, and their resources
        return Gateway.options(ray_actor_options=Generators.ray_actor_options).bind(None, config)
    return Gateway.bind(Generators.bind(config), config)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_local(tree: dict, blocking: bool = True) -> str:
    """``ganime serve``: the app on a local Ray (or $RAY_ADDRESS), HTTP on serve.host:serve.port. Returns the URL."""
    from ray_ganime.runtime import init_ray

    cfg = from_tree(tree)
    own_ray = init_ray()
    colocate = own_ray if cfg.serve.colocate is None else cfg.serve.colocate  # one box: one deployment
    tree = {**tree, "serve": {**tree.get("serve", {}), "colocate": colocate}}
    url = f"http://{cfg.serve.host}:{cfg.serve.port}/"
    if blocking:  # SIGTERM (service managers, containers, `kill`) stops it the way Ctrl-C does
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        serve.run(build_app(tree), name=APP_NAME, route_prefix="/", blocking=False)
        layout = "one deployment" if colocate else "two deployments"
        print(f"serving the models in {cfg.store.uri} at {url}  ({layout}; Ctrl-C stops)", flush=True)
        while blocking:
            time.sleep(3600)
    except KeyboardInterrupt:
        # On our own Ray, exiting stops everything at once; Serve's graceful drain can take a minute.
        if not own_ray:
            serve.delete(APP_NAME)
    return url
