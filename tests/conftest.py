"""Shared pytest fixtures. Each section is self-contained."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from servers import GanimeServer, free_ports, moto_server, stop_group

# Ray Train's controller polls its workers every 2 s, and a worker's ray.train.report waits for the next poll:
# each tiny fit of the suite (epochs of a second or two) spent several seconds waiting. Every Ray the tests start
# (the shared session, `ray start` heads, `ganime` subprocesses) inherits this.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

# ===================================================================================================
# S3: a real S3 server (moto_server) on loopback
#
# A real HTTP server, not moto's in-process mock_aws: pyarrow's C++ S3 client and Ray worker processes
# never see an in-process mock.
#   s3_server       session: endpoint URL; sets the AWS_* env vars in os.environ for the whole session so
#                   that Ray workers started later inherit them (start it before Ray to use S3 from workers)
#   s3_bucket       function: a fresh, empty bucket, as "s3://<name>"
#   s3_auth_server  session: a second server that enforces IAM auth, so every request with the test
#                   credentials is refused (InvalidAccessKeyId / 403); os.environ is left alone
# ===================================================================================================

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Would change how requests are signed or where credentials come from, so they are unset while the server runs.
S3_ENV_CLEARED = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """Endpoint URL of a loopback S3 server; AWS_* env vars point at it for the rest of the session."""
    with moto_server(tmp_path_factory.mktemp("s3-server")) as endpoint:
        env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": endpoint}
        saved = {name: os.environ.get(name) for name in (*env, *S3_ENV_CLEARED)}
        # os.environ rather than monkeypatch: Ray workers started later in the session must inherit it.
        for name in S3_ENV_CLEARED:
            os.environ.pop(name, None)
        os.environ.update(env)
        try:
            yield endpoint
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@pytest.fixture
def s3_bucket(s3_server) -> Iterator[str]:
    """A fresh, uniquely named bucket on ``s3_server``, as "s3://<name>"; emptied and deleted afterwards."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name=S3_ENV["AWS_DEFAULT_REGION"],
                          aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
    name = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    yield f"s3://{name}"
    with contextlib.suppress(Exception):  # best effort: the server's memory goes with it at session end
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
        client.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def s3_auth_server(tmp_path_factory) -> Iterator[str]:
    """Endpoint URL of a loopback S3 server that refuses the test credentials (moto with IAM auth on)."""
    with moto_server(tmp_path_factory.mktemp("s3-auth-server"), {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint:
        yield endpoint


# ===================================================================================================
# Ray: one local instance for the whole session (ray.init costs seconds; tests share it)
#   ray_session     session: a local Ray with 2 CPUs. It starts after s3_server so that its workers
#                   inherit the AWS_* variables pointing at the loopback S3 server.
# ===================================================================================================


@pytest.fixture(scope="session")
def ray_session(s3_server, tmp_path_factory) -> Iterator[None]:
    import ray

    from ray_ganime.runtime import init_ray

    os.environ.setdefault("GANIME_STORE", str(tmp_path_factory.mktemp("store")))
    assert init_ray(num_cpus=2), "the tests start their own Ray (unset RAY_ADDRESS)"
    assert not init_ray()  # already up in this process: nothing new started
    yield
    ray.shutdown()


# ===================================================================================================
# Serve: serve_config.yaml deployed with `serve deploy` to a real `ray start --head` cluster
#   served          session (its modules run last: pytest_collection_modifyitems): the app up, over a store
#                   holding tests/serving.py's packages, with a bearer token; .url, .token, .names
#                   (image_a, image_b, noise), .store, .cluster, .config
# ===================================================================================================


@dataclass
class Served:
    url: str  # http://127.0.0.1:<port>/
    token: str
    names: dict[str, str]
    store: Path
    cluster: "object"  # tests/cluster.py's Cluster
    config: Path  # the serve_config.yaml that was deployed (the repo's, on a free port)


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Iterator[Served]:
    import secrets

    import yaml
    from serving import make_packages
    from servers import REPO, free_ports, ray_start_head, tail, wait_for_http

    root = tmp_path_factory.mktemp("served")
    store = root / "store"
    names = make_packages(str(store))
    token = secrets.token_urlsafe(24)
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    port, = free_ports(1)
    config["http_options"]["port"] = port
    deployed = root / "serve_config.yaml"
    deployed.write_text(yaml.safe_dump(config, sort_keys=False))
    url = f"http://127.0.0.1:{port}/"
    with ray_start_head(root, env={"GANIME_STORE": str(store), "GANIME_SERVE_TOKEN": token}) as cluster:
        serve_cli = Path(sys.executable).parent / "serve"
        deploy = subprocess.run([str(serve_cli), "deploy", str(deployed), "--address", cluster.dashboard],
                                env=cluster.env, capture_output=True, text=True, timeout=120)
        assert deploy.returncode == 0, f"serve deploy failed:\n{deploy.stdout}\n{deploy.stderr}\n{tail(cluster.log)}"
        # The app answers once its replicas are up (`serve deploy` returns before that).
        wait_for_http(url + "healthz", cluster.proc, cluster.log, 180, "the deployed app")
        yield Served(url, token, names, store, cluster, deployed)


# ===================================================================================================
# Stores and `ganime serve` shared by the modules that train, export and serve
#   shared_store    session: a local store, served by ganime_server
#   unpaired_store  session: shared_store with the synthetic unpaired set "unpaired-40" (40 images, 32 px)
#   ganime_server   `ganime serve` over shared_store (its own Ray, loopback, no token, one deployment, started
#                   with RAY_AUTH_MODE=disabled as users export it), started at its first use and kept for the
#                   session; a test that stops it gets another at the next use. Holds tests/serving.py's packages.
# The tests that use it run last, after the modules of ``served`` (pytest_collection_modifyitems): a server's
# Ray beside the rest of the suite would slow it down.
# ===================================================================================================


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared-store")


@pytest.fixture(scope="session")
def unpaired_store(shared_store, ray_session) -> Path:
    from ray_ganime.cli import main

    assert main(["data", "synth", "--kind", "unpaired", "--count", "40", "--size", "32", "--out", "unpaired-40",
                 "--store", str(shared_store)]) == 0
    return shared_store


@pytest.fixture(scope="session")
def _ganime_server(shared_store, tmp_path_factory) -> Iterator[GanimeServer]:
    from serving import make_packages

    port, = free_ports(1)
    server = GanimeServer(shared_store, port, tmp_path_factory.mktemp("ganime-serve"), make_packages(str(shared_store)),
                          {"RAY_AUTH_MODE": "disabled"})
    yield server
    if server.proc is not None:
        stop_group(server.proc, signal.SIGTERM)


@pytest.fixture
def ganime_server(_ganime_server) -> GanimeServer:
    return _ganime_server.running()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each server starts at its first use and runs to the end of the session, so they come last: first the tests
    of modules that use neither, then those modules' other tests, then the modules of ``served``, then every test
    that uses ganime_server (the fixtures they share with their module's other tests are session-scoped), and
    the tests marked ``last``: they stop a shared server, which any test after them would have to start again."""
    def modules(fixture: str) -> set[Path]:
        return {item.path for item in items if fixture in getattr(item, "fixturenames", ())}

    ganime, served = modules("ganime_server"), modules("served")

    def place(item: pytest.Item) -> int:
        if item.get_closest_marker("last"):
            return 4
        if "ganime_server" in getattr(item, "fixturenames", ()):
            return 3
        return 2 if item.path in served else int(item.path in ganime)

    items.sort(key=place)
