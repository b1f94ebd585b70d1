"""Ray Serve: every model package in the store behind one HTTP API, and a page to try them on.

    GET  /                            the page: pick a model, drop an image (or pick a seed), download the result
    GET  /healthz                     {"status": "ok"}: the replica runs (liveness)
    GET  /readyz                      {"status": "ready"} when the store answers a listing, else 503 (readiness)
    GET  /v1/models                   the store's packages: kind, sizes, metrics (each FID with its backbone id),
                                      and "broken": [{"name", "reason"}] for packages that cannot be served
    POST /v1/models/{name}/generate   image-to-image: the image as the body or a multipart file, optional
                                      ?max_side=; answers PNG of the input's size (JPEG or WebP when Accept
                                      prefers it, or ?format=png|jpeg|webp: the parameter wins).
                                      noise: ?seed=&n=&truncation=; answers a PNG grid of n images (same rule).

Two deployments, so that each scales on what it needs (``serve.colocate`` makes it one: ``ganime serve``'s default):

* ``Gateway``: the FastAPI ingress. Auth, limits, decoding and encoding (in a thread pool of
  ``serve.codec_threads``, off the event loop); CPU only and stateless.
* ``Generators``: loads packages by name (``@serve.multiplexed``: an LRU of ``serve.models_per_replica`` per
  replica, and Serve routes a model's requests to replicas that hold it) and runs the requests for one model
  that queue together as one forward pass (``batching.Batcher``), in ``serve.precision`` (``inference``). One
  replica per GPU where there are GPUs.

Bad input is never a 500: 400 (empty or undecodable body), 401 (bearer token, when $GANIME_SERVE_TOKEN or
``serve.token_env`` is set on the replicas: checked first, on every path but /, /healthz and /readyz), 404
(unknown model or path), 405 (method), 406 (Accept names none of PNG, JPEG, WebP), 413 (bytes, pixels, decode
budget, decompression bombs), 415 (not an image media type), 422 (bad parameters). What the server cannot do:
500 (a package that cannot be served: the reason says why, the operator must re-export it), 503 with
Retry-After (the store cannot be listed or read, the Generators replica is gone or overloaded). Every error is
a JSON ``{"error", "reason"}`` whose reason names no server path.

``serve deploy serve_config.yaml`` deploys it on a cluster; ``ganime serve`` runs the same app locally.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures of the class-based views
# that serve.ingress builds, and cannot resolve string annotations there (Request would become a query field).
import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import secrets
import signal
import time
from http import HTTPStatus
from importlib import resources
from typing import Any, Literal, NamedTuple

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
import ray
from ray import serve
from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from ray_ganime import __version__, export, images, inference, storage, transforms
from ray_ganime.batching import Batcher
from ray_ganime.config import Config, from_tree

__all__ = ["APP_NAME", "Gateway", "Generators", "build_app", "run_local"]

APP_NAME = "ganime"
# Bodies taken as the image itself; anything else but multipart/form-data is a 415.
RAW_IMAGE_TYPES = ("application/octet-stream",)
FORM_FIELDS = ("image", "file")  # multipart field names looked for first (else the first file part)
IMAGE_MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}  # by preference on equal q
MISS_RELIST_S = 1.0  # an unknown model name (or a store that failed) re-lists the store at most this often
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz"})  # no token needed, even when one is set
RETRY_AFTER = {"Retry-After": "5"}  # seconds; a replica restarts (or the store comes back) in about that
STORE_UNAVAILABLE = "the model store cannot be read right now; try again later"
# The Generators replica that had the request is gone (retried once: generation is pure) ...
REPLICA_GONE = (RayActorError, ReplicaUnavailableError, WorkerCrashedError, NodeDiedError)
# ... or none can take it now: each a 503.
UNAVAILABLE = (*REPLICA_GONE, BackPressureError, DeploymentUnavailableError)
# Absolute paths and URIs in an error text: a store's layout (and a bucket's name) is its operator's business.
_PATHS = re.compile(r"(?<![\w.])(?:[A-Za-z][\w+.-]*://[^\s'\"]*[^\s'\",;:.)]|~?/(?:[^\s/'\"]+/)+[^\s/'\":,;)]*)")

logger = logging.getLogger("ray.serve")

app = FastAPI(title="ray-ganime", version=__version__,
              description="Anime GAN generators from a ray-ganime model store. See GET /v1/models.")


def _error(status: int, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": HTTPStatus(status).phrase, "reason": reason}, status_code=status, headers=headers)


def scrub(text: str) -> str:
    """``text`` with every absolute path or URI replaced by ``<path>``."""
    return _PATHS.sub("<path>", text)


def _cause(exc: BaseException) -> BaseException:
    """What was raised in a replica: Ray re-raises it wrapped in a RayTaskError whose message is a traceback."""
    return getattr(exc, "cause", None) or exc


@app.exception_handler(StarletteHTTPException)  # ours (fastapi's subclass) and the router's own 404 and 405
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    reason, path = str(exc.detail), request.url.path[:200]
    if exc.status_code == 404 and reason == HTTPStatus.NOT_FOUND.phrase:
        reason = f"nothing at {path}: the API is GET /v1/models and POST /v1/models/{{name}}/generate"
    elif exc.status_code == 405 and reason == HTTPStatus.METHOD_NOT_ALLOWED.phrase:
        reason = f"{request.method} is not allowed on {path} (allowed: {(exc.headers or {}).get('Allow', '?')})"
    return _error(exc.status_code, reason, getattr(exc, "headers", None))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    reasons = [f"{'.'.join(str(p) for p in e['loc'] if p not in ('query', 'path'))}: {e['msg']}" for e in exc.errors()]
    return _error(422, "; ".join(reasons))


@app.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    # Not the client's fault (a bug, a replica that died): still JSON, and says what broke, without paths.
    cause = _cause(exc)
    if isinstance(cause, UNAVAILABLE):
        return _error(503, "the server cannot take this request right now; try again later", RETRY_AFTER)
    if isinstance(cause, storage.StorageError):
        logger.warning("model store: %s", cause)
        return _error(503, STORE_UNAVAILABLE, RETRY_AFTER)
    return _error(500, scrub(f"{type(cause).__name__}: {cause}".splitlines()[0][:500]))


class _TokenGate:
    """ASGI middleware: 401 for a request without the bearer token before anything else looks at it (routing,
    404/405, parameter validation), on every path but OPEN_PATHS; /docs, /redoc and /openapi.json included.
    The token is the Gateway replica's (read from its own environment)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and (scope["path"].removeprefix(scope.get("root_path", "")) or "/") not in OPEN_PATHS:
            refusal = serve.get_replica_context().servable_object.refusal(Headers(scope=scope))
            if refusal is not None:
                return await refusal(scope, receive, send)
        await self.app(scope, receive, send)


app.add_middleware(_TokenGate)


def preferred_media(accept: str | None) -> str:
    """``image/png``, ``image/jpeg`` or ``image/webp`` by the Accept header's q-values (on ties the first of
    IMAGE_MEDIA: PNG, also without a header); 406 when it accepts none of them."""
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

    best = max(IMAGE_MEDIA.values(), key=q_of)  # max keeps the first of equals
    if q_of(best) <= 0:
        raise HTTPException(406, f"this API answers {', '.join(IMAGE_MEDIA.values())}, not {accept[:200]}")
    return best


def model_summary(name: str, meta: dict) -> dict[str, Any]:
    """What GET /v1/models says of a package: enough to call it and to compare it, not its training config."""
    return {"name": name, "kind": meta["kind"], "recipe": meta.get("recipe"),
            "native_size": meta.get("native_size"), "size_multiple": meta.get("size_multiple"),
            "input": meta.get("input"), "output": meta.get("output"),
            "parameters": meta.get("weights", {}).get("parameters"), "metrics": _without_paths(meta.get("metrics", {})),
            "created": meta.get("created"), "onnx": bool(meta.get("onnx")), "source": export.package_source(meta)}


def _without_paths(value: Any) -> Any:
    """``value`` without the strings that hold a path or URI (an evaluation's report and checkpoint, its FID
    weights' file): where the training side keeps its files is not the API's business."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if not (isinstance(v, str) and scrub(v) != v)}
    return value


def codec_threads(configured: int | None = None) -> int:
    """``serve.codec_threads``, else one per CPU core this process may run on."""
    if configured:
        return configured
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity (macOS)
        return os.cpu_count() or 1


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
                                           self.precision, limits.max_parameters)

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


class Packages(NamedTuple):
    """What the Gateway knows of the store: servable packages (name -> model.json) and broken ones (name ->
    why it cannot be served, a reason without paths)."""

    models: dict[str, dict]
    broken: dict[str, str]


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
        self._listing: tuple[float, Packages | None] = (-float("inf"), None)  # (when, what; None: listing failed)
        self._listing_lock = asyncio.Lock()
        self._decoding = asyncio.Semaphore(self.limits.max_concurrent_decodes)
        # Decoding and encoding: PIL, OpenCV and zlib release the GIL, so these threads use the replica's cores
        # while the event loop goes on with HTTP.
        self.codec = concurrent.futures.ThreadPoolExecutor(codec_threads(self.limits.codec_threads),
                                                           thread_name_prefix="ganime-codec")
        # Packages whose load failed (a sha256 mismatch, weights that do not fit): name -> (the weights' sha256
        # in model.json, reason). Not loaded again until a new export changes that sha256.
        self._failed_loads: dict[str, tuple[str, str]] = {}

    # ---- helpers
    def refusal(self, headers: Headers) -> JSONResponse | None:
        """The 401 for a request without this server's bearer token (None: it may pass). _TokenGate calls it."""
        if self.token is None:
            return None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), self.token.encode()):
            return None
        return _error(401, "this server needs `Authorization: Bearer <token>`", {"WWW-Authenticate": "Bearer"})

    def _scan(self) -> Packages | None:
        """A fresh listing of the store (None when it cannot be listed), in a worker thread."""
        try:
            listing = inference.scan_servable(self.store.uri, self.store.options(), self.limits.max_parameters)
        except storage.StorageError as e:
            logger.warning("cannot list the model store: %s", e)
            return None
        models = {meta["uri"].rstrip("/").rsplit("/", 1)[-1]: meta for meta in listing.packages}
        broken = {package["name"]: scrub(package["reason"]) for package in listing.broken}
        known = self._listing[1].broken if self._listing[1] else {}
        for name in broken.keys() - known.keys():  # once, not on every listing
            logger.warning("model %s cannot be served: %s", name, broken[name])
        return Packages(models, broken)

    async def _packages(self, max_age: float | None = None) -> Packages:
        """The store's packages, listed again when the last listing is older than ``max_age`` (default
        ``serve.models_cache_s``; after a failed listing at most every MISS_RELIST_S). 503 while the store
        cannot be listed."""
        max_age = self.limits.models_cache_s if max_age is None else max_age
        async with self._listing_lock:  # one listing at a time: requests that waited for it take its result
            listed_at, packages = self._listing
            if time.monotonic() - listed_at > (max_age if packages else min(max_age, MISS_RELIST_S)):
                packages = await asyncio.to_thread(self._scan)
                self._listing = (time.monotonic(), packages)
        if packages is None:
            raise HTTPException(503, STORE_UNAVAILABLE, headers=RETRY_AFTER)
        return packages

    def _failed_load(self, name: str, meta: dict) -> str | None:
        failed = self._failed_loads.get(name)
        return failed[1] if failed and failed[0] == meta["weights"]["sha256"] else None

    async def _package(self, name: str) -> dict:
        packages = await self._packages()
        # Exported since the last listing? Look again, but at most once per MISS_RELIST_S: a stream of
        # requests for a name that does not exist must not become a stream of store listings (S3 LISTs).
        if name not in packages.models and name not in packages.broken:
            packages = await self._packages(MISS_RELIST_S)
        reason = packages.broken.get(name)
        if name in packages.models:
            reason = self._failed_load(name, packages.models[name])
        elif reason is None:
            raise HTTPException(404, f"no model {name!r} in this server's store (GET /v1/models lists them)")
        if reason is not None:
            raise HTTPException(500, f"model {name!r} cannot be served: {reason}")
        return packages.models[name]

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

    async def _decode(self, data: bytes, max_side: int | None) -> np.ndarray:
        """The upload as RGB that fits ``max_side`` and ``serve.max_pixels``. At most ``serve.max_concurrent_decodes``
        at a time: a decode holds up to ~16 bytes per decoded pixel until it is shrunk."""
        async with self._decoding:
            return await asyncio.get_running_loop().run_in_executor(self.codec, self._decode_now, data, max_side)

    def _decode_now(self, data: bytes, max_side: int | None) -> np.ndarray:
        if not data:
            raise HTTPException(400, "empty body: send an image")
        # Checked from the header, before decoding: without max_side the image must fit max_pixels as it is.
        budget = self.limits.max_pixels if max_side is None else self.limits.max_decode_pixels
        try:
            image = images.decode_rgb(data, max_side, budget)
        except images.TooLarge as e:
            hint = "pass ?max_side= to shrink it first" if max_side is None else "send a smaller image"
            raise HTTPException(413, f"{e} (this server's limit); {hint}") from None
        except images.BadImage as e:
            raise HTTPException(400, str(e)) from None
        image = transforms.fit_max_side(image, max_side)
        height, width = image.shape[:2]
        if height * width > self.limits.max_pixels:
            raise HTTPException(413, f"{width}x{height} is over this server's limit of {self.limits.max_pixels} "
                                     f"pixels; pass ?max_side= to shrink it first")
        return image

    async def _generators(self, method: str, name: str, *args):
        """``Generators.<method>(name, *args)``: in this replica when colocated, else over Ray to a replica that
        holds model ``name``. 503 when no replica can take it; once more when the replica died meanwhile
        (generation is pure: the same answer)."""
        if self.local is not None:
            return await getattr(self.local, method)(name, *args)
        call = getattr(self.generators.options(multiplexed_model_id=name), method)
        for attempt in (1, 2):
            try:
                return await call.remote(name, *args)
            except Exception as e:
                cause = _cause(e)
                if not isinstance(cause, UNAVAILABLE):
                    raise
                if attempt == 2 or not isinstance(cause, REPLICA_GONE):
                    logger.warning("no Generators replica for %s: %s", name, type(cause).__name__)
                    raise HTTPException(503, f"no replica can run model {name!r} right now (restarting or busy); "
                                             f"try again later", headers=RETRY_AFTER) from None
                logger.warning("Generators replica gone during a request for %s (%s); trying once more",
                               name, type(cause).__name__)

    def _encode(self, image: np.ndarray, media: str) -> bytes:
        if media == IMAGE_MEDIA["jpeg"]:
            return images.encode_jpeg(image, self.limits.jpeg_quality)
        if media == IMAGE_MEDIA["webp"]:
            return images.encode_webp(image, self.limits.webp_quality)
        return images.encode_png_fast(image, self.limits.png_compress_level)

    async def encode(self, image: np.ndarray, media: str) -> bytes:
        """``image`` as ``media`` bytes, in the codec pool."""
        return await asyncio.get_running_loop().run_in_executor(self.codec, self._encode, image, media)

    # ---- routes
    @app.get("/", include_in_schema=False)
    def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> dict:
        await self._packages()  # 503 while the store cannot be listed
        return {"status": "ready"}

    @app.get("/v1/models")
    async def models(self) -> dict:
        packages = await self._packages()
        broken = dict(packages.broken)
        for name, meta in packages.models.items():
            if (reason := self._failed_load(name, meta)) is not None:
                broken[name] = reason
        return {"models": [model_summary(name, meta) for name, meta in sorted(packages.models.items())
                           if name not in broken],
                "broken": [{"name": name, "reason": reason} for name, reason in sorted(broken.items())]}

    @app.post("/v1/models/{name}/generate")
    async def generate(self, name: str, request: Request,
                       max_side: int | None = Query(None, ge=8, le=8192, description="image models: shrink first"),
                       seed: int = Query(0, ge=0, le=2**31 - 1, description="noise models"),
                       n: int = Query(1, ge=1, description="noise models: images in the grid"),
                       truncation: float | None = Query(None, gt=0, le=10, description="noise models"),
                       answer_format: Literal["png", "jpeg", "webp"] | None = Query(
                           None, alias="format", description="the answer's format; default: the Accept header's "
                                                             "choice (PNG without one)")) -> Response:
        media = IMAGE_MEDIA[answer_format] if answer_format else preferred_media(request.headers.get("accept"))
        meta = await self._package(name)
        headers = {"X-Ganime-Model": name}
        timing = Timing()
        try:
            if meta["kind"] == export.NOISE:
                if n > self.limits.max_images:
                    raise HTTPException(422, f"n: at most {self.limits.max_images} images per request, got {n}")
                with timing("generate"):
                    output, run = await self._generators("sample", name, seed, n, truncation)
            else:  # image-to-image: the listing holds servable kinds only
                data = await self._image_bytes(request)
                with timing("decode"):
                    image = await self._decode(data, max_side)
                with timing("generate"):
                    output, run = await self._generators("translate", name, image)
                headers["X-Ganime-Batch-Size"] = str(run.batch)
        except FileNotFoundError:  # removed from the store since it was listed (Ray re-raises it as such)
            self._listing = (-float("inf"), None)
            raise HTTPException(404, f"model {name!r} is no longer in this server's store") from None
        except export.PackageError as e:  # listed, but its weights fail their check: broken until re-exported
            reason = scrub(str(_cause(e)).replace(export.package_uri(self.store.uri, name), name))
            logger.warning("model %s cannot be served: %s", name, reason)
            self._failed_loads[name] = (meta["weights"]["sha256"], reason)
            raise HTTPException(500, f"model {name!r} cannot be served: {reason}") from None
        timing["forward"] = run.forward_ms
        headers["X-Ganime-Precision"] = run.precision
        with timing("encode"):
            data = await self.encode(output, media)
        return Response(data, media_type=media, headers={**headers, "Server-Timing": timing.header()})


def build_app(args: dict | None = None) -> serve.Application:
    """The application: serve_config.yaml's ``import_path: ray_ganime.serve:build_app`` (Serve calls a builder
    with exactly one argument: ``serve deploy`` refuses any other signature)."""
    return application(args)


def application(args: dict | None = None, replicas: int | None = None, num_cpus: float | None = None,
                num_gpus: float | None = None, generator_replicas: int | None = None) -> serve.Application:
    """``args`` is a ray-ganime config tree; only its ``store`` and ``serve`` sections matter (the store defaults
    to $GANIME_STORE, as everywhere). ``replicas`` (of the Gateway), ``num_cpus`` and ``num_gpus`` (of each
    replica that holds the networks) and ``generator_replicas`` (of Generators, when not colocated): for
    ``ganime serve`` (``local_layout``); a Serve config file sets them in its ``deployments:``."""
    config = from_tree(dict(args or {})).model_dump(mode="json", include={"store", "serve"})
    gateway = {"num_replicas": replicas} if replicas else {}
    networks = {**Generators.ray_actor_options, **({"num_cpus": num_cpus} if num_cpus else {}),
                **({"num_gpus": num_gpus} if num_gpus else {})}
    if config["serve"]["colocate"]:  # one deployment: the Gateway also holds the networks, and their resources
        return Gateway.options(ray_actor_options=networks, **gateway).bind(None, config)
    generators = Generators.options(ray_actor_options=networks,
                                    **({"num_replicas": generator_replicas} if generator_replicas else {}))
    return Gateway.options(**gateway).bind(generators.bind(config), config)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


LOCAL_REPLICAS = 2  # `ganime serve`: at least two, so that one replica answers while another restarts
# CPU cores per replica when sizing to the machine: one runs the replica's event loop (HTTP, routing), the
# others its codec threads and torch's. More replicas split the batches that make a forward pass cheap.
CORES_PER_REPLICA = 4
REPLICA_MEMORY = 2**30  # Ray memory per colocated replica asked for before running two: Python, torch, networks
GATEWAY_CPUS = Gateway.ray_actor_options["num_cpus"]


def local_layout(colocate: bool, resources: dict[str, float], replicas: int | None = None) -> dict:
    """``application``'s sizes under ``ganime serve`` on a Ray of its own, whose ``resources`` (CPU, GPU,
    memory) these are: ``replicas`` (``serve.replicas``) or one per CORES_PER_REPLICA cores, at least
    LOCAL_REPLICAS, so that HAProxy sends requests to one while another restarts.

    Colocated, each replica holds up to serve.models_per_replica networks: as many replicas as Ray has the
    memory for (when not given), each with an equal share of the CPUs and of the GPUs (all replicas of one GPU
    share it; torch threads follow the CPU share). Two deployments: the Gateway replicas take GATEWAY_CPUS each,
    Generators one replica per GPU (num_gpus 1), or, without GPUs, one replica with the other CPUs."""
    cpus, gpus = max(resources.get("CPU", 1), 1.0), resources.get("GPU", 0)
    count = replicas or max(LOCAL_REPLICAS, int(cpus) // CORES_PER_REPLICA)
    if not colocate:
        layout = {"replicas": count}
        if gpus >= 1:
            layout.update(generator_replicas=int(gpus), num_gpus=1)
        elif gpus > 0:
            layout.update(num_gpus=gpus)
        else:
            layout.update(num_cpus=max(1.0, cpus - count * GATEWAY_CPUS))
        return layout
    if replicas is None:
        count = min(count, max(1, int(resources.get("memory", 0) // REPLICA_MEMORY)))
    layout = {"replicas": count, "num_cpus": cpus / count}
    if gpus > 0:
        layout["num_gpus"] = gpus / count
    return layout


def run_local(tree: dict, blocking: bool = True) -> str:
    """``ganime serve``: the app on a local Ray (or $RAY_ADDRESS), HTTP on serve.host:serve.port. Returns the URL.
    Blocking on a Ray of its own, a signal (SIGINT, SIGTERM, to it or to its process group) stops Ray and every
    process it started, then returns."""
    from ray_ganime import runtime

    cfg = from_tree(tree)
    if not os.environ.get("RAY_ADDRESS"):
        runtime.check_port_free(cfg.serve.host, cfg.serve.port)
        if blocking:
            runtime.make_stoppable()
    own_ray = runtime.init_ray()
    colocate = own_ray if cfg.serve.colocate is None else cfg.serve.colocate  # one box: one deployment
    tree = {**tree, "serve": {**tree.get("serve", {}), "colocate": colocate}}
    url = f"http://{cfg.serve.host}:{cfg.serve.port}/"
    if blocking:  # SIGTERM (service managers, containers, `kill`) stops it the way Ctrl-C does
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        replicas = local_layout(colocate, ray.cluster_resources(), cfg.serve.replicas) if own_ray else {}
        serve.run(application(tree, **replicas), name=APP_NAME, route_prefix="/", blocking=False)
        layout = "one deployment" if colocate else "two deployments"
        gpus = f", {replicas['num_gpus']:g} GPU each" if replicas.get("num_gpus") else ""
        print(f"serving the models in {cfg.store.uri} at {url}  ({layout}, {replicas.get('replicas', 1)} "
              f"replicas{gpus}; Ctrl-C stops)", flush=True)
        while blocking:
            time.sleep(3600)
    except KeyboardInterrupt:
        if not own_ray:
            serve.delete(APP_NAME)
    finally:
        # On our own Ray, no graceful drain (Serve's can take a minute): Ray and all it started stop now. A second
        # signal (Ctrl-C twice, a service manager's SIGTERM after a group's SIGINT) must not cut that short.
        if own_ray and blocking:
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)
            runtime.stop_own_ray()
    return url
