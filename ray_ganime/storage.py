"""One way to name and reach every store: local folders and S3 (or any S3-compatible server).

A store URI is a plain or ``~`` path, a ``file://`` URI, or ``s3://bucket/prefix``. ``resolve`` turns one into
a ``Location`` carrying both filesystems the project needs: fsspec (s3fs) for small files and pyarrow for
Parquet / Ray Data. Failures surface as ``StorageError``: one line that names the URI and says what to fix.

Credentials never live in config: S3 uses AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN)
or the standard AWS credential chain, in this process and in every Ray worker alike.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import botocore.exceptions
import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

SUPPORTED_SCHEMES = ("s3://", "file://")
DEFAULT_MAX_ATTEMPTS = 10
# An endpoint that refuses connections, or does not answer them within CONNECT_TIMEOUT_S, fails a request
# after CONNECT_ATTEMPTS attempts: a dead store is an error within seconds instead of minutes of back-off.
# Throttling and 5xx answers keep max_attempts.
CONNECT_ATTEMPTS = 2
CONNECT_TIMEOUT_S = 3.0

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(RuntimeError):
    """A store operation failed; the message is one line that names the URI."""


@dataclass(frozen=True)
class StoreOptions:
    """Where S3 lives. Every field is optional; environment variables are the fallback."""

    endpoint_url: str | None = None  # else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else AWS itself
    region: str | None = None  # else AWS_DEFAULT_REGION / AWS_REGION, else "us-east-1"
    max_attempts: int | None = None  # per S3 request; else GANIME_S3_MAX_ATTEMPTS, else 10


# ---------------------------------------------------------------------------------------------- URIs


def default_store() -> str:
    """$GANIME_STORE, else ~/.ganime/store, as a normalised URI (the folder is not created here)."""
    return join(os.environ.get("GANIME_STORE") or "~/.ganime/store")


def _scheme(uri: str) -> str | None:
    m = _SCHEME.match(uri)
    if m:
        return m.group(1).lower()
    return "file" if uri[:5].lower() == "file:" else None


def is_remote(uri: str) -> bool:
    """True for s3:// (and for any other URL scheme, which ``resolve`` then rejects); False for local paths."""
    return _scheme(uri) not in (None, "file")


def _normalise(uri: str) -> str:
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"{uri!r}: empty store URI; expected a path or one of {', '.join(SUPPORTED_SCHEMES)}")
    scheme = _scheme(uri)
    if scheme is None:
        return os.path.normpath(os.path.abspath(os.path.expanduser(uri)))
    if scheme == "file":
        parsed = urllib.parse.urlsplit(uri)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{uri}: file:// URIs must name a local path (host {parsed.netloc!r} given)")
        path = urllib.parse.unquote(parsed.path)
        if not path:
            raise StorageError(f"{uri}: file:// URI without a path")
        return os.path.normpath(os.path.abspath(os.path.expanduser(path)))
    if scheme == "s3":
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket or bucket in (".", ".."):
            raise StorageError(f"{uri}: s3:// URI without a bucket")
        segments = [bucket] + [s for s in key.split("/") if s not in ("", ".")]
        if ".." in segments:
            # S3 keys are opaque strings: '..' would become a literal key segment, never a parent.
            raise StorageError(f"{uri}: '..' is not allowed in s3:// URIs")
        return "s3://" + "/".join(segments)
    raise StorageError(f"{uri}: unsupported store scheme {scheme}://; "
                       f"use a local path, file:// or s3://bucket/prefix")


def join(uri: str, *parts: str) -> str:
    """``uri`` normalised, with relative ``parts`` appended: an absolute local path or ``s3://bucket/key``."""
    base = _normalise(uri)
    rel = []
    for part in parts:
        part = os.fspath(part)
        if _SCHEME.match(part):
            raise StorageError(f"{part}: a full URI cannot be joined onto {base}")
        rel += [s for s in part.split("/") if s]  # parts are always relative, even with a leading '/'
    if not rel:
        return base
    if base.startswith("s3://"):
        return _normalise(base + "/" + "/".join(rel))
    return os.path.normpath(os.path.join(base, *rel))


# One folder name on every store (run, sweep, trial, data set, model): no separators, no '..', no leading
# dot (hidden and temporary files), no control characters, nothing a filesystem or S3 treats specially.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # \Z: "$" would let a final "\n" in


def check_name(name: str, what: str, error: type[ValueError] = ValueError) -> str:
    """``name`` if it is one safe folder name, else ``error`` naming ``what`` ("run name", ...)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise error(f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' (at most 128 characters, "
                    f"starting with a letter or digit)")
    return name


# ------------------------------------------------------------------------------------------ filesystems


@dataclass(frozen=True)
class _S3Settings:
    endpoint_url: str | None
    region: str
    max_attempts: int


def _s3_settings(options: StoreOptions | None) -> _S3Settings:
    options = options or StoreOptions()
    env = os.environ
    endpoint = options.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    region = options.region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
    attempts = options.max_attempts
    if attempts is None:
        text = env.get("GANIME_S3_MAX_ATTEMPTS")
        try:
            attempts = int(text) if text else DEFAULT_MAX_ATTEMPTS
        except ValueError:
            raise StorageError(f"GANIME_S3_MAX_ATTEMPTS={text!r}: not an integer") from None
    if attempts < 1:
        raise StorageError(f"S3 max_attempts must be at least 1, got {attempts}")
    return _S3Settings(endpoint.rstrip("/") if endpoint else None, region, attempts)


def _endpoint_name(settings: _S3Settings) -> str:
    return settings.endpoint_url or f"https://s3.{settings.region}.amazonaws.com"


class _S3ArrowFileSystem(pafs.S3FileSystem):
    """pyarrow's S3FileSystem, but pickling keeps the retry strategy (pyarrow's own pickle drops it,
    so a Ray worker would fall back to 3 attempts)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._kwargs = kwargs

    def __reduce__(self):
        return _make_arrow_s3, (self._kwargs,)


def _make_arrow_s3(kwargs: dict) -> _S3ArrowFileSystem:
    return _S3ArrowFileSystem(**kwargs)


@functools.cache
def _s3fs_class() -> type:
    """s3fs whose botocore client stops retrying a connection error after CONNECT_ATTEMPTS attempts. botocore's
    retry modes count every error alike: a smaller max_attempts would also cut the retries of throttling.

    Defined at first use: s3fs (aiobotocore, aiohttp) is most of this module's import time, and most processes
    that import it (Ray workers, the CLI on a local store) never touch S3. Pickled by reference all the same,
    as ``_S3FileSystem`` (the module's ``__getattr__``)."""
    import s3fs

    class _S3FileSystem(s3fs.S3FileSystem):
        async def set_session(self, refresh=False, kwargs={}):  # noqa: B006 (s3fs's signature)
            client = await super().set_session(refresh, kwargs)
            # First, so that it answers before botocore's own retry handler; once per client (unique_id).
            client.meta.events.register_first("needs-retry.s3", _stop_connection_retries,
                                              unique_id="ganime-connect-attempts")
            return client

    _S3FileSystem.__qualname__ = "_S3FileSystem"
    return _S3FileSystem


def __getattr__(name: str) -> Any:
    if name == "_S3FileSystem":
        return _s3fs_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _stop_connection_retries(attempts: int, caught_exception: BaseException | None = None, **_) -> bool | None:
    """A needs-retry handler: False (no retry) once a connection error has had its attempts; None leaves
    the decision to botocore's retry mode."""
    if isinstance(caught_exception, botocore.exceptions.ConnectionError) and attempts >= CONNECT_ATTEMPTS:
        return False
    return None


def _credentials_key() -> str:
    # Part of the cache key so that changed credentials (tests, re-login) get a fresh client; hashed so
    # that secrets never sit in the key in clear text.
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    return hashlib.sha256("\0".join(os.environ.get(n, "") for n in names).encode()).hexdigest()


_LOCAL = (LocalFileSystem(), pafs.LocalFileSystem())
_S3_CACHE: dict[tuple, tuple[fsspec.AbstractFileSystem, pafs.S3FileSystem]] = {}
_S3_LOCK = threading.Lock()


def _s3_filesystems(settings: _S3Settings) -> tuple[fsspec.AbstractFileSystem, pafs.S3FileSystem]:
    key = ("s3", settings.endpoint_url, settings.region, settings.max_attempts, _credentials_key())
    with _S3_LOCK:
        if key not in _S3_CACHE:
            kwargs: dict[str, Any] = {}
            if settings.endpoint_url:
                kwargs["endpoint_url"] = settings.endpoint_url
            fs = _s3fs_class()(
                client_kwargs={"region_name": settings.region},
                # botocore retries throttling, 5xx and (CONNECT_ATTEMPTS times) connection errors itself; a
                # fresh dict because botocore rewrites it in place.
                config_kwargs={"retries": {"max_attempts": settings.max_attempts, "mode": "adaptive"},
                               "connect_timeout": CONNECT_TIMEOUT_S},
                # Other processes (Ray workers, pyarrow writers) change the bucket: never answer from a
                # stale listing.
                use_listings_cache=False,
                skip_instance_cache=True,  # cached here, keyed on settings and credentials
                **kwargs,
            )
            pa_kwargs: dict[str, Any] = {
                "region": settings.region,
                # pyarrow's strategies count every error alike: only the connect timeout is shorter here.
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=settings.max_attempts),
                "connect_timeout": CONNECT_TIMEOUT_S,
            }
            if settings.endpoint_url:
                parsed = urllib.parse.urlsplit(settings.endpoint_url)
                pa_kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
                pa_kwargs["scheme"] = parsed.scheme or "https"
            _S3_CACHE[key] = (fs, _S3ArrowFileSystem(**pa_kwargs))
        return _S3_CACHE[key]


@dataclass(frozen=True)
class Location:
    """A resolved store URI: ``path`` is what ``fs`` and ``pa_fs`` take ("bucket/key" or an absolute path)."""

    uri: str
    path: str
    fs: fsspec.AbstractFileSystem = field(repr=False, compare=False)
    pa_fs: pafs.FileSystem = field(repr=False, compare=False)

    @property
    def remote(self) -> bool:
        return self.uri.startswith("s3://")

    def child(self, *parts: str) -> "Location":
        uri = join(self.uri, *parts)
        return Location(uri, _fs_path(uri), self.fs, self.pa_fs)


def _fs_path(uri: str) -> str:
    return uri[len("s3://"):] if uri.startswith("s3://") else uri


def resolve(uri: str, options: StoreOptions | None = None) -> Location:
    """The normalised URI with its filesystems; S3 filesystems are cached per endpoint, region and credentials."""
    uri = join(uri)
    if uri.startswith("s3://"):
        fs, pa_fs = _s3_filesystems(_s3_settings(options))
        return Location(uri, _fs_path(uri), fs, pa_fs)
    return Location(uri, uri, *_LOCAL)


# ------------------------------------------------------------------------------------------------ errors

_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                 "AccountProblem", "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "403"}
_MISSING_CODES = {"NoSuchKey", "NotFound", "404"}
# pyarrow reports S3 errors as OSError text: "... AWS Error ACCESS_DENIED during HeadObject operation ..."
_ARROW_PATTERNS = (
    (re.compile(r"NO_SUCH_BUCKET"), "bucket"),
    (re.compile(r"ACCESS_DENIED|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH|HTTP response code: 403"), "denied"),
    (re.compile(r"NETWORK_CONNECTION|curlCode: (6|7|28)\b|Could not connect to server"), "unreachable"),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _classify(exc: BaseException) -> str | None:
    chain = list(_chain(exc))
    # The most specific evidence first: S3's own error code, wherever in the chain s3fs left it.
    for e in chain:
        if isinstance(e, botocore.exceptions.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return "bucket"
            if code in _DENIED_CODES or status == 403:
                return "denied"
            if code in _MISSING_CODES or status == 404:
                return "missing"
    for e in chain:
        if isinstance(e, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
            return "nocreds"
        if isinstance(e, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
                          ConnectionRefusedError)):
            return "unreachable"
        for pattern, kind in _ARROW_PATTERNS:
            if isinstance(e, OSError) and pattern.search(str(e)):
                return kind
    for e in chain:
        if isinstance(e, FileNotFoundError):
            return "missing"
        if isinstance(e, IsADirectoryError):
            return "isdir"
        if isinstance(e, NotADirectoryError):
            return "notdir"
        if isinstance(e, FileExistsError):
            return "exists"
        if isinstance(e, PermissionError):
            return "denied"
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return "nospace"
    return None


def store_failure(exc: BaseException) -> BaseException | None:
    """The store's failure behind ``exc`` (no space left, S3 unreachable or refusing: a StorageError or the
    OSError / botocore error under one), wherever Ray wrapped it: a task's cause, Ray Train's worker and
    controller failures, exception chains. None when the store is not what failed."""
    seen: set[int] = set()
    queue: list = [exc]
    while queue:
        e = queue.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(getattr(e, "cause", None), BaseException):  # a Ray task's error: its text is a traceback
            queue.append(e.cause)
            continue
        if isinstance(e, StorageError) or _classify(e) in ("bucket", "denied", "nocreds", "unreachable", "nospace"):
            return e
        queue += [e.__cause__, e.__context__, getattr(e, "controller_failure", None),
                  *(getattr(e, "worker_failures", None) or {}).values()]
    return None


def translate_error(uri: str, exc: BaseException, options: StoreOptions | None = None) -> StorageError:
    """The one-line StorageError for a failure of an operation on ``uri`` (raise it ``from exc``).

    Also for callers that use ``Location.pa_fs`` / ``Location.fs`` directly."""
    if isinstance(exc, StorageError):
        return exc
    remote = is_remote(uri)
    kind = _classify(exc)
    if kind == "bucket":
        text = "bucket does not exist"
    elif kind == "denied" and remote:
        text = "access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    elif kind == "denied":
        text = "permission denied"
    elif kind == "nocreds":
        text = "no AWS credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS profile)"
    elif kind == "unreachable":
        try:
            endpoint = _endpoint_name(_s3_settings(options))
        except StorageError:
            endpoint = "(unknown)"
        text = f"cannot reach S3 endpoint {endpoint}"
    elif kind == "missing":
        text = "no such file or folder"
    elif kind == "isdir":
        text = "is a folder, not a file"
    elif kind == "notdir":
        text = "a parent in the path is a file, not a folder"
    elif kind == "exists":
        text = "already exists"
    elif kind == "nospace":
        text = "no space left on device"
        # A checkpoint is staged on this machine's disk before it goes to the store: name the disk that is full.
        written = next((e.filename for e in _chain(exc) if isinstance(e, OSError) and e.filename), None)
        if written and (remote or not os.fspath(written).startswith(uri.rstrip("/") + "/")):
            text += f" (writing {written}: this machine's disk, not the store)"
    else:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        text = f"{type(exc).__name__}: {detail[:300]}"
    return StorageError(f"{uri}: {text}")


# Errors that mean "the store said no"; anything else (TypeError, ...) is a bug and passes unchanged.
_STORE_ERRORS = (OSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


@contextlib.contextmanager
def _translated(uri: str, options: StoreOptions | None) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except _STORE_ERRORS as e:
        raise translate_error(uri, e, options) from e


# -------------------------------------------------------------------------------------------- operations


def exists(uri: str, options: StoreOptions | None = None) -> bool:
    """Whether a file or folder (S3: object or non-empty prefix) is at ``uri``. A missing bucket raises."""
    loc = resolve(uri, options)
    if not loc.remote:
        return os.path.exists(loc.path)
    with _translated(loc.uri, options):
        try:
            loc.fs.info(loc.path)
            return True
        except FileNotFoundError as e:
            # A typo'd bucket should say so, not look like an empty store.
            if _classify(e) == "bucket":
                raise
            return False


def read_bytes(uri: str, options: StoreOptions | None = None) -> bytes:
    loc = resolve(uri, options)
    with _translated(loc.uri, options):
        if not loc.remote:
            with open(loc.path, "rb") as f:
                return f.read()
        return loc.fs.cat_file(loc.path)


def _local_temp_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")


def _make_folder(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError as e:
        # makedirs says "exists" when the folder's name is taken by a file; say what is actually wrong.
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", path) from e


@contextlib.contextmanager
def _atomic_local(path: str) -> Iterator[str]:
    """Yields a temporary name next to ``path``; renamed over ``path`` only if the block succeeds."""
    _make_folder(os.path.dirname(path))
    temp = _local_temp_name(path)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise


def write_bytes(uri: str, data: bytes, options: StoreOptions | None = None) -> None:
    """Atomic: readers see the old content or the new, never a part (S3: one PUT; local: temp + rename)."""
    loc = resolve(uri, options)
    with _translated(loc.uri, options):
        if loc.remote:
            loc.fs.pipe_file(loc.path, bytes(data))
            return
        with _atomic_local(loc.path) as temp:
            # O_EXCL on a fresh name, mode 0o666 so the umask applies as for any new file.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the rename must not become visible before the data is on disk


def create_bytes(uri: str, data: bytes, options: StoreOptions | None = None) -> bool:
    """Write ``data`` to ``uri`` only if nothing is there, atomically: False when something is, or another
    writer's create raced this one (of two concurrent creators, at most one gets True). Local: a hard link of a
    finished temp file; S3: a conditional PUT (If-None-Match: *), which AWS S3, MinIO and moto honour."""
    loc = resolve(uri, options)
    with _translated(loc.uri, options):
        if loc.remote:
            try:
                loc.fs.pipe_file(loc.path, bytes(data), mode="create")
                return True
            except FileExistsError:
                return False
            except OSError as e:  # AWS: 412 without the condition named, 409 for a concurrent conditional write
                if any(isinstance(c, botocore.exceptions.ClientError) and c.response.get("Error", {}).get("Code")
                       in ("PreconditionFailed", "ConditionalRequestConflict") for c in _chain(e)):
                    return False
                raise
        _make_folder(os.path.dirname(loc.path))
        temp = _local_temp_name(loc.path)
        try:
            with open(temp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(temp, loc.path)  # fails if the name is taken; readers never see a part
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.remove(temp)


def read_json(uri: str, options: StoreOptions | None = None) -> dict:
    data = read_bytes(uri, options)
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise StorageError(f"{join(uri)}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise StorageError(f"{join(uri)}: expected a JSON object, found {type(obj).__name__}")
    return obj


def write_json(uri: str, obj: Any, options: StoreOptions | None = None) -> None:
    """Atomic, like write_bytes; ``obj`` is serialised first, so a bad value never touches the store."""
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), options)


def listdir(uri: str, options: StoreOptions | None = None) -> list[str]:
    """Full URIs of the direct children of folder ``uri``, sorted."""
    loc = resolve(uri, options)
    with _translated(loc.uri, options):
        if not loc.remote:
            if os.path.isfile(loc.path):
                raise StorageError(f"{loc.uri}: is a file, not a folder")
            return sorted(join(loc.uri, name) for name in os.listdir(loc.path))
        entries = loc.fs.ls(loc.path, detail=True)
    if len(entries) == 1 and entries[0]["name"].rstrip("/") == loc.path and entries[0]["type"] == "file":
        raise StorageError(f"{loc.uri}: is a file, not a folder")
    names = {e["name"].rstrip("/") for e in entries}
    names.discard(loc.path)  # a zero-byte "folder marker" object lists itself
    return sorted("s3://" + name for name in names)


def remove(uri: str, recursive: bool = False, options: StoreOptions | None = None) -> None:
    """Delete a file, or a folder with ``recursive=True``. Nothing there is fine (cleanup may run twice)."""
    loc = resolve(uri, options)
    with _translated(loc.uri, options):
        if not loc.remote:
            if os.path.isdir(loc.path) and not os.path.islink(loc.path):
                if recursive:
                    shutil.rmtree(loc.path)
                elif os.listdir(loc.path):
                    raise StorageError(f"{loc.uri}: folder is not empty (pass recursive=True)")
                else:
                    os.rmdir(loc.path)
            elif os.path.lexists(loc.path):
                os.remove(loc.path)
            return
        try:
            info = loc.fs.info(loc.path)
        except FileNotFoundError as e:
            if _classify(e) == "bucket":
                raise
            return
        if info["type"] == "file":
            loc.fs.rm_file(loc.path)
        elif "/" not in loc.path:
            # Never delete the bucket itself, only what is in it.
            if not recursive:
                raise StorageError(f"{loc.uri}: is a bucket (pass recursive=True to empty it)")
            keys = loc.fs.find(loc.path)
            if keys:
                loc.fs.rm(keys)
        elif not recursive:
            raise StorageError(f"{loc.uri}: is a folder (pass recursive=True)")
        else:
            loc.fs.rm(loc.path, recursive=True)


def check_writable(uri: str, options: StoreOptions | None = None) -> None:
    """Raise StorageError now (missing bucket, bad credentials, read-only folder) rather than after long work.

    S3: writes and deletes a small probe object under ``uri``, the only check that proves write access."""
    loc = resolve(uri, options)
    if loc.remote:
        probe = loc.child(f".ganime-write-check-{uuid.uuid4().hex}")
        with _translated(loc.uri, options):
            loc.fs.pipe_file(probe.path, b"")
        with contextlib.suppress(*_STORE_ERRORS):
            loc.fs.rm_file(probe.path)  # a policy may allow PUT without DELETE; the probe is harmless
        return
    path = loc.path
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if os.path.isfile(path) and path != loc.path:
        raise StorageError(f"{loc.uri}: {path} is a file, not a folder")
    mode = os.W_OK | (os.X_OK if os.path.isdir(path) else 0)
    if not os.access(path, mode):
        raise StorageError(f"{loc.uri}: permission denied ({path} is not writable)")


def _local_files(root: str) -> list[tuple[str, str]]:
    """(absolute path, relative posix path) of every file under ``root`` (or ``root`` itself if a file)."""
    if os.path.isfile(root):
        return [(root, "")]
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, "no such file or folder", root)
    files = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            files.append((path, os.path.relpath(path, root).replace(os.sep, "/")))
    return sorted(files, key=lambda f: f[1])


def _copy_local(src: str, dest: str) -> None:
    with _atomic_local(dest) as temp:
        shutil.copyfile(src, temp)


def upload(local_path: str, uri: str, options: StoreOptions | None = None) -> None:
    """Copy a local file to ``uri``, or a local folder's contents (recursively) into folder ``uri``."""
    src = join(local_path)
    loc = resolve(uri, options)
    with _translated(src, options):
        files = _local_files(src)
    with _translated(loc.uri, options):
        if os.path.isdir(src) and not loc.remote:
            _make_folder(loc.path)  # an empty folder still arrives as a folder
        targets = [loc.child(rel).path if rel else loc.path for _, rel in files]
        if loc.remote:
            if files:
                # One call: s3fs uploads the batch concurrently, each file atomically (PUT or multipart).
                loc.fs.put([f for f, _ in files], targets)
            return
        for (path, _), target in zip(files, targets):
            _copy_local(path, target)


def download(uri: str, local_path: str, options: StoreOptions | None = None) -> None:
    """Copy file ``uri`` to ``local_path``, or folder ``uri``'s contents (recursively) into ``local_path``.
    Each file appears atomically."""
    loc = resolve(uri, options)
    dest = join(local_path)
    if not loc.remote:
        with _translated(loc.uri, options):
            files = _local_files(loc.path)
        with _translated(dest, options):
            if os.path.isdir(loc.path):
                _make_folder(dest)
            for path, rel in files:
                _copy_local(path, os.path.join(dest, *rel.split("/")) if rel else dest)
        return
    with _translated(loc.uri, options):
        info = loc.fs.info(loc.path)
        if info["type"] == "file":
            pairs = [(loc.path, dest)]
        else:
            keys = [k for k in loc.fs.find(loc.path) if not k.endswith("/")]
            pairs = [(k, os.path.join(dest, *k[len(loc.path) + 1:].split("/"))) for k in keys]
    with _translated(dest, options), contextlib.ExitStack() as stack:
        if info["type"] != "file":
            _make_folder(dest)
        temps = []
        for _, target in pairs:
            temps.append(stack.enter_context(_atomic_local(target)))
        with _translated(loc.uri, options):
            if pairs:
                loc.fs.get([k for k, _ in pairs], temps)
