"""ray_ganime.storage against the local filesystem and a real (loopback moto) S3 server."""

from __future__ import annotations

import http.server
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator

import boto3
import botocore.exceptions
import pyarrow.fs as pafs
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_ganime import storage
from ray_ganime.storage import StorageError, StoreOptions

S3_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

# ------------------------------------------------------------------------------------- URIs and joining


@pytest.mark.parametrize("args, expected", [
    (("s3://b/p", "x", "y.parquet"), "s3://b/p/x/y.parquet"),
    (("s3://b//p/", "/x/", "y/"), "s3://b/p/x/y"),
    (("S3://bucket",), "s3://bucket"),
    (("s3://bucket/", "train/part-00000.parquet"), "s3://bucket/train/part-00000.parquet"),
    (("/a/b", "c", "d.txt"), "/a/b/c/d.txt"),
    (("/a/b/", "/etc"), "/a/b/etc"),  # parts are relative: a leading '/' must not escape the base
    (("/a/./b/../c",), "/a/c"),
    (("file:///tmp/a/../b",), "/tmp/b"),
    (("file://localhost/tmp/a%20b", "c"), "/tmp/a b/c"),
    (("file:/tmp/x",), "/tmp/x"),
])
def test_join_normalises(args, expected):
    assert storage.join(*args) == expected


def test_join_local_relative_and_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.join("data/x", "y") == str(tmp_path / "data" / "x" / "y")
    assert storage.join("./data") == str(tmp_path / "data")
    assert storage.join("~/x") == os.path.join(os.path.expanduser("~"), "x")


@pytest.mark.parametrize("uri", ["gs://bucket/x", "http://example.com/x", "hdfs://nn/x"])
def test_unsupported_scheme_names_uri_and_supported_schemes(uri):
    with pytest.raises(StorageError) as e:
        storage.resolve(uri)
    assert uri in str(e.value) and "s3://" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("uri", ["", "s3://", "s3:///key", "s3://b/../x", "file://otherhost/x"])
def test_malformed_uris_are_rejected(uri):
    with pytest.raises(StorageError):
        storage.join(uri)


def test_join_rejects_a_full_uri_as_part():
    with pytest.raises(StorageError, match="gs://b"):
        storage.join("/store", "datasets", "gs://b")


def test_is_remote():
    assert storage.is_remote("s3://b/x") and storage.is_remote("S3://b")
    assert not storage.is_remote("/a/b") and not storage.is_remote("~/x") and not storage.is_remote("rel/x")
    assert not storage.is_remote("file:///a/b")


def test_default_store(monkeypatch, tmp_path):
    monkeypatch.delenv("GANIME_STORE", raising=False)
    assert storage.default_store() == os.path.join(os.path.expanduser("~"), ".ganime", "store")
    monkeypatch.setenv("GANIME_STORE", "s3://bucket/store/")
    assert storage.default_store() == "s3://bucket/store"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANIME_STORE", "stores/a")
    assert storage.default_store() == str(tmp_path / "stores" / "a")
    assert not (tmp_path / "stores").exists()


def test_location_paths_and_child():
    loc = storage.resolve("s3://bucket/prefix/")
    assert (loc.uri, loc.path) == ("s3://bucket/prefix", "bucket/prefix")
    assert isinstance(loc.pa_fs, pafs.S3FileSystem)
    child = loc.child("train", "part-0.parquet")
    assert (child.uri, child.path) == ("s3://bucket/prefix/train/part-0.parquet", "bucket/prefix/train/part-0.parquet")
    assert child.fs is loc.fs and child.pa_fs is loc.pa_fs
    local = storage.resolve("file:///tmp/x")
    assert (local.uri, local.path) == ("/tmp/x", "/tmp/x")
    assert isinstance(local.pa_fs, pafs.LocalFileSystem)


# ------------------------------------------------------------------------------------------ S3 settings


def test_s3_settings_precedence(monkeypatch):
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "GANIME_S3_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    s = storage._s3_settings(None)
    assert (s.endpoint_url, s.region, s.max_attempts) == (None, "us-east-1", 10)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("GANIME_S3_MAX_ATTEMPTS", "3")
    s = storage._s3_settings(None)
    assert (s.endpoint_url, s.region, s.max_attempts) == ("http://generic:1", "eu-west-3", 3)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:2/")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    s = storage._s3_settings(None)
    assert (s.endpoint_url, s.region) == ("http://s3only:2", "ap-south-1")
    s = storage._s3_settings(StoreOptions(endpoint_url="https://cfg:3", region="us-west-2", max_attempts=2))
    assert (s.endpoint_url, s.region, s.max_attempts) == ("https://cfg:3", "us-west-2", 2)


def test_arrow_s3_options_follow_endpoint():
    loc = storage.resolve("s3://b/x", StoreOptions(endpoint_url="https://minio.example:9000", region="eu-west-1"))
    _, (arrow_opts,) = pafs.S3FileSystem.__reduce__(loc.pa_fs)  # what pyarrow itself holds
    assert (arrow_opts["endpoint_override"], arrow_opts["scheme"], arrow_opts["region"]) == \
        ("minio.example:9000", "https", "eu-west-1")
    loc = storage.resolve("s3://b/x", StoreOptions(endpoint_url="http://127.0.0.1:9", region="eu-west-1"))
    _, (arrow_opts,) = pafs.S3FileSystem.__reduce__(loc.pa_fs)
    assert (arrow_opts["endpoint_override"], arrow_opts["scheme"]) == ("127.0.0.1:9", "http")


def test_filesystems_are_cached_per_settings():
    a = storage.resolve("s3://b/x", StoreOptions(endpoint_url="http://127.0.0.1:9", region="eu-west-1"))
    b = storage.resolve("s3://other/y", StoreOptions(endpoint_url="http://127.0.0.1:9", region="eu-west-1"))
    c = storage.resolve("s3://b/x", StoreOptions(endpoint_url="http://127.0.0.1:9", region="eu-west-2"))
    assert a.fs is b.fs and a.pa_fs is b.pa_fs
    assert c.fs is not a.fs and c.pa_fs is not a.pa_fs


# ------------------------------------------------------------------------------------------------ local


def test_local_round_trip(tmp_path):
    uri = storage.join(str(tmp_path), "a", "b", "blob.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00\x01payload")  # creates the parent folders
    assert storage.exists(uri) and storage.exists(str(tmp_path / "a"))
    assert storage.read_bytes(uri) == b"\x00\x01payload"
    assert storage.read_bytes("file://" + uri) == b"\x00\x01payload"
    obj = {"z": 1, "a": [1, 2, {"x": None}], "text": "ünïcode"}
    storage.write_json(str(tmp_path / "m.json"), obj)
    assert storage.read_json(str(tmp_path / "m.json")) == obj
    text = (tmp_path / "m.json").read_text()
    assert text == json.dumps(obj, indent=2) + "\n"  # indent=2, keys in insertion order


def test_local_write_leaves_no_temp_files_and_keeps_permissions(tmp_path):
    target = tmp_path / "x.json"
    storage.write_json(str(target), {"v": 1})
    storage.write_json(str(target), {"v": 2})
    assert os.listdir(tmp_path) == ["x.json"]
    assert storage.read_json(str(target)) == {"v": 2}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_old_content_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    storage.write_json(str(target), {"v": "old"})

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)  # fails after the bytes were written to the temporary file
    with pytest.raises(StorageError, match="no space left"):
        storage.write_json(str(target), {"v": "new" * 1000})
    monkeypatch.undo()
    assert storage.read_json(str(target)) == {"v": "old"}
    assert os.listdir(tmp_path) == ["state.json"]


def test_unserialisable_json_never_touches_target(tmp_path):
    target = tmp_path / "state.json"
    storage.write_json(str(target), {"v": "old"})
    with pytest.raises(TypeError):
        storage.write_json(str(target), {"v": object()})
    with pytest.raises(TypeError):
        storage.write_json(str(tmp_path / "new.json"), {"v": object()})
    assert storage.read_json(str(target)) == {"v": "old"}
    assert os.listdir(tmp_path) == ["state.json"]


def test_write_under_a_file_fails_cleanly(tmp_path):
    (tmp_path / "file").write_bytes(b"i am a file")
    for uri in (str(tmp_path / "file" / "x.bin"), str(tmp_path / "file" / "sub" / "x.bin")):
        with pytest.raises(StorageError) as e:
            storage.write_bytes(uri, b"data")
        assert str(e.value) == f"{uri}: a parent in the path is a file, not a folder"
    assert (tmp_path / "file").read_bytes() == b"i am a file"
    assert os.listdir(tmp_path) == ["file"]
    with pytest.raises(StorageError, match="is a file"):
        storage.check_writable(uri)


def test_local_errors_name_the_uri(tmp_path):
    missing = str(tmp_path / "missing.bin")
    with pytest.raises(StorageError, match=f"^{missing}: no such file or folder$"):
        storage.read_bytes(missing)
    with pytest.raises(StorageError, match="is a folder"):
        storage.read_bytes(str(tmp_path))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StorageError, match="not valid JSON"):
        storage.read_json(str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(StorageError, match="JSON object"):
        storage.read_json(str(tmp_path / "list.json"))


def test_local_listdir(tmp_path):
    for name in ("b.txt", "a.txt", "c"):
        storage.write_bytes(str(tmp_path / "d" / name / "f") if name == "c" else str(tmp_path / "d" / name), b"")
    assert storage.listdir(str(tmp_path / "d")) == [str(tmp_path / "d" / n) for n in ("a.txt", "b.txt", "c")]
    assert storage.listdir("file://" + str(tmp_path / "d" / "c")) == [str(tmp_path / "d" / "c" / "f")]
    with pytest.raises(StorageError, match="no such file or folder"):
        storage.listdir(str(tmp_path / "nope"))
    with pytest.raises(StorageError, match="is a file, not a folder"):
        storage.listdir(str(tmp_path / "d" / "a.txt"))


def test_local_remove(tmp_path):
    storage.write_bytes(str(tmp_path / "d" / "x"), b"1")
    storage.write_bytes(str(tmp_path / "d" / "sub" / "y"), b"2")
    with pytest.raises(StorageError, match="not empty"):
        storage.remove(str(tmp_path / "d"))
    storage.remove(str(tmp_path / "d" / "x"))
    assert not (tmp_path / "d" / "x").exists()
    storage.remove(str(tmp_path / "d"), recursive=True)
    assert not (tmp_path / "d").exists()
    storage.remove(str(tmp_path / "d"))  # already gone: fine
    (tmp_path / "empty").mkdir()
    storage.remove(str(tmp_path / "empty"))
    assert os.listdir(tmp_path) == []


def _tree(root) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(root) for f in files}


def _make_tree(root) -> dict[str, bytes]:
    files = {"model.pt": os.urandom(3000), "meta/config.json": b"{}", "meta/deep/er/x.bin": b"x" * 10,
             "empty.txt": b""}
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)) or root, exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    return files


def test_local_upload_download_folder_and_file(tmp_path):
    files = _make_tree(tmp_path / "src")
    storage.upload(str(tmp_path / "src"), str(tmp_path / "store" / "ckpt"))
    assert _tree(tmp_path / "store" / "ckpt") == files
    storage.download(str(tmp_path / "store" / "ckpt"), str(tmp_path / "back"))
    assert _tree(tmp_path / "back") == files
    storage.upload(str(tmp_path / "src" / "model.pt"), str(tmp_path / "store" / "one.pt"))
    assert (tmp_path / "store" / "one.pt").read_bytes() == files["model.pt"]
    with pytest.raises(StorageError, match="no such file or folder"):
        storage.upload(str(tmp_path / "nope"), str(tmp_path / "store" / "x"))


def test_local_check_writable(tmp_path):
    storage.check_writable(str(tmp_path / "not" / "yet" / "there"))
    storage.check_writable(str(tmp_path))
    assert not (tmp_path / "not").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_local_check_writable_read_only(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(StorageError, match="permission denied"):
        storage.check_writable(str(tmp_path / "ro" / "x"))


# --------------------------------------------------------------------------------------------------- S3


@pytest.mark.s3
def test_s3_bytes_round_trip_through_both_filesystems(s3_bucket):
    loc = storage.resolve(storage.join(s3_bucket, "data", "blob.bin"))
    data = os.urandom(200_000)
    storage.write_bytes(loc.uri, data)  # s3fs
    with loc.pa_fs.open_input_stream(loc.path) as f:
        assert f.read() == data
    other = storage.resolve(storage.join(s3_bucket, "data", "from-arrow.bin"))
    with other.pa_fs.open_output_stream(other.path) as f:
        f.write(data[::-1])
    assert storage.read_bytes(other.uri) == data[::-1]  # s3fs sees what pyarrow wrote (no stale cache)
    assert storage.exists(other.uri) and storage.exists(storage.join(s3_bucket, "data"))
    assert not storage.exists(storage.join(s3_bucket, "data", "missing.bin"))


@pytest.mark.s3
def test_s3_parquet_written_by_arrow_listed_by_fsspec(s3_bucket):
    loc = storage.resolve(storage.join(s3_bucket, "set"))
    table = pa.table({"id": ["a", "b"], "image": [b"\x89PNG", b"\xff\xd8"]})
    pq.write_table(table, loc.child("train", "part-00000.parquet").path, filesystem=loc.pa_fs)
    assert storage.listdir(loc.uri) == [storage.join(s3_bucket, "set", "train")]
    assert storage.listdir(loc.child("train").uri) == [loc.child("train", "part-00000.parquet").uri]
    assert pq.read_table(loc.child("train", "part-00000.parquet").path, filesystem=loc.fs).equals(table)


@pytest.mark.s3
def test_s3_json_listdir_remove(s3_bucket):
    storage.write_json(storage.join(s3_bucket, "run", "manifest.json"), {"b": 1, "a": 2})
    assert storage.read_json(storage.join(s3_bucket, "run", "manifest.json")) == {"b": 1, "a": 2}
    for name in ("run/x/1.bin", "run/x/2.bin", "runs-other/keep.bin"):
        storage.write_bytes(storage.join(s3_bucket, name), b"1")
    assert storage.listdir(s3_bucket) == [storage.join(s3_bucket, n) for n in ("run", "runs-other")]
    assert storage.listdir(storage.join(s3_bucket, "run")) == [storage.join(s3_bucket, "run", n)
                                                              for n in ("manifest.json", "x")]
    with pytest.raises(StorageError, match="is a file"):
        storage.listdir(storage.join(s3_bucket, "run", "manifest.json"))
    with pytest.raises(StorageError, match="no such file or folder"):
        storage.listdir(storage.join(s3_bucket, "nothing"))
    with pytest.raises(StorageError, match="recursive"):
        storage.remove(storage.join(s3_bucket, "run"))
    storage.remove(storage.join(s3_bucket, "run", "manifest.json"))
    storage.remove(storage.join(s3_bucket, "run"), recursive=True)
    storage.remove(storage.join(s3_bucket, "run"), recursive=True)  # already gone: fine
    # A prefix is a folder, not a string prefix: the sibling "runs-other" survives.
    assert storage.listdir(s3_bucket) == [storage.join(s3_bucket, "runs-other")]
    storage.remove(s3_bucket, recursive=True)  # empties the bucket, keeps it
    assert storage.listdir(s3_bucket) == []


@pytest.mark.s3
def test_s3_upload_download_folder(s3_bucket, tmp_path):
    files = _make_tree(tmp_path / "src")
    dest = storage.join(s3_bucket, "ckpt", "epoch-3")
    storage.upload(str(tmp_path / "src"), dest)
    assert storage.listdir(dest) == [storage.join(dest, n) for n in ("empty.txt", "meta", "model.pt")]
    storage.download(dest, str(tmp_path / "back"))
    assert _tree(tmp_path / "back") == files
    storage.download(storage.join(dest, "model.pt"), str(tmp_path / "one.pt"))
    assert (tmp_path / "one.pt").read_bytes() == files["model.pt"]
    with pytest.raises(StorageError, match="no such file or folder"):
        storage.download(storage.join(s3_bucket, "nope"), str(tmp_path / "nope"))
    assert not (tmp_path / "nope").exists()


@pytest.mark.s3
def test_s3_check_writable_leaves_nothing(s3_bucket):
    storage.check_writable(storage.join(s3_bucket, "new", "place"))
    assert storage.listdir(s3_bucket) == []


@pytest.mark.s3
def test_missing_bucket(s3_server):
    uri = "s3://no-such-bucket-ganime/x/y.json"
    for call in (lambda: storage.read_bytes(uri), lambda: storage.write_bytes(uri, b"1"),
                 lambda: storage.check_writable(uri), lambda: storage.exists(uri), lambda: storage.listdir(uri)):
        with pytest.raises(StorageError) as e:
            call()
        assert str(e.value) == f"{uri}: bucket does not exist"
        assert e.value.__cause__ is not None  # the original error stays chained


@pytest.mark.s3
def test_bad_credentials_are_access_denied(s3_auth_server):
    # moto with IAM auth enforced: the test key pair exists nowhere, so every request is refused.
    opts = StoreOptions(endpoint_url=s3_auth_server, max_attempts=1)
    uri = "s3://some-bucket/run"
    for call in (lambda: storage.check_writable(uri, opts), lambda: storage.read_bytes(uri, opts),
                 lambda: storage.write_bytes(uri, b"1", opts), lambda: storage.exists(uri, opts)):
        with pytest.raises(StorageError) as e:
            call()
        assert str(e.value).startswith(uri + ": access denied") and "AWS_ACCESS_KEY_ID" in str(e.value)
    # The same refusal seen through pyarrow (what Ray Data and the shard writer use) translates alike.
    loc = storage.resolve(uri, opts)
    with pytest.raises(OSError) as raw:
        loc.pa_fs.get_file_info(loc.path)
    assert "access denied" in str(storage.translate_error(uri, raw.value, opts))
    # And a raw botocore ClientError from a real server response.
    client = boto3.client("s3", endpoint_url=s3_auth_server, region_name="us-east-1",
                          aws_access_key_id="AKIAWRONG", aws_secret_access_key="wrong")
    with pytest.raises(botocore.exceptions.ClientError) as raw:
        client.put_object(Bucket="some-bucket", Key="k", Body=b"1")
    assert raw.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    assert str(storage.translate_error(uri, raw.value)).startswith(uri + ": access denied")


@pytest.mark.parametrize("code, text", [("SignatureDoesNotMatch", "access denied"), ("AccessDenied", "access denied"),
                                        ("NoSuchBucket", "bucket does not exist"),
                                        ("NoSuchKey", "no such file or folder")])
def test_translate_client_error_codes(code, text):
    error = botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}}, "GetObject")
    assert str(storage.translate_error("s3://b/k", error)) == f"s3://b/k: {text}" + \
        (" (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)" if text == "access denied" else "")


@pytest.mark.timeout(60)
def test_unreachable_endpoint_fails_fast(monkeypatch):
    """With the default 10 attempts (for throttling and 5xx), a refused connection still fails within seconds:
    connection errors get CONNECT_ATTEMPTS. (Before, each call spent ~55 s backing off.)"""
    for name, value in S3_TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GANIME_S3_MAX_ATTEMPTS", raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound but never listening: connections are refused, and no one else gets it
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        opts = StoreOptions(endpoint_url=endpoint)
        for call in (lambda: storage.check_writable("s3://bucket/run", opts),
                     lambda: storage.read_bytes("s3://bucket/run", opts),
                     lambda: storage.exists("s3://bucket/run", opts), lambda: storage.listdir("s3://bucket/run", opts)):
            start = time.monotonic()
            with pytest.raises(StorageError) as e:
                call()
            assert str(e.value) == f"s3://bucket/run: cannot reach S3 endpoint {endpoint}"
            assert time.monotonic() - start < 5  # measured: 0.1-1.1 s (one back-off of up to 1 s)
        # pyarrow's retry strategies count every error alike (its max_attempts stays as given); its errors
        # translate alike.
        opts = StoreOptions(endpoint_url=endpoint, max_attempts=1)
        loc = storage.resolve("s3://bucket/run", opts)
        with pytest.raises(OSError) as raw:
            loc.pa_fs.get_file_info(loc.path)
        assert "cannot reach S3 endpoint" in str(storage.translate_error(loc.uri, raw.value, opts))


class _FailingS3(http.server.BaseHTTPRequestHandler):
    """Answers every request with the S3 error ``server.answer`` (status, code), counting the requests."""

    def _fail(self) -> None:
        self.server.requests += 1
        status, code = self.server.answer
        body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _fail

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def failing_s3() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("status, code", [(503, "SlowDown"), (500, "InternalError")])
def test_throttling_and_5xx_keep_their_retries(failing_s3, monkeypatch, status, code):
    """What fails fast is a connection that cannot be made; an S3 that answers "slow down" or 5xx is retried
    max_attempts times, as before."""
    for name, value in S3_TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    failing_s3.answer, failing_s3.requests = (status, code), 0
    opts = StoreOptions(endpoint_url=f"http://127.0.0.1:{failing_s3.server_address[1]}", max_attempts=3)
    with pytest.raises(StorageError, match="^s3://bucket/x: "):
        storage.read_bytes("s3://bucket/x", opts)
    assert failing_s3.requests >= 3  # measured: 4 (one more than max_attempts at any setting; 2 at max_attempts 1)


@pytest.mark.s3
def test_filesystems_pickle_for_workers(s3_bucket):
    loc = storage.resolve(storage.join(s3_bucket, "p", "x.bin"), StoreOptions(max_attempts=7))
    storage.write_bytes(loc.uri, b"shipped")
    fs, pa_fs = pickle.loads(pickle.dumps((loc.fs, loc.pa_fs)))
    assert fs.cat_file(loc.path) == b"shipped"
    with pa_fs.open_input_stream(loc.path) as f:
        assert f.read() == b"shipped"
    assert isinstance(pa_fs, pafs.S3FileSystem) and pa_fs._kwargs["retry_strategy"].max_attempts == 7
    # The short connect timeout travels too (what pyarrow itself holds), and s3fs keeps its connection-retry rule.
    assert pafs.S3FileSystem.__reduce__(pa_fs)[1][0]["connect_timeout"] == storage.CONNECT_TIMEOUT_S
    assert type(fs) is type(loc.fs) and fs.config_kwargs["connect_timeout"] == storage.CONNECT_TIMEOUT_S
    assert pickle.loads(pickle.dumps(loc)) == loc
    # A fresh interpreter, like a Ray worker: only the inherited environment, nothing cached.
    code = ("import pickle, sys\n"
            "loc = pickle.loads(sys.stdin.buffer.read())\n"
            "with loc.pa_fs.open_input_stream(loc.path) as f: a = f.read()\n"
            "assert a == loc.fs.cat_file(loc.path) == b'shipped', a\n")
    done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(loc), capture_output=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    local = storage.resolve("/tmp")
    assert isinstance(pickle.loads(pickle.dumps(local.pa_fs)), pafs.LocalFileSystem)
    assert pickle.loads(pickle.dumps(local)) == local
