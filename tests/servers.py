"""Real servers that tests start as subprocesses on loopback, and wait for: an S3 server (moto_server) and a
Ray head node for tests that go through Ray's CLI (`ray job submit`, `serve deploy`).

``wait_for_http`` is the one polling loop: until the URL answers HTTP (any status counts when ``any_status``),
failing with the process's log when it exits or the time is up.

The Ray cluster is the caller's own: separate --temp-dir, free loopback ports, its own auth token. It is
started with ``ray start --head --block`` as a child of the test and stopped by signalling that one
process, never with `ray stop`, which stops every Ray on the machine (the session's in-process Ray
from ``ray_session`` included, and other people's).

Why this isolates it:
- ``--block`` keeps `ray start` alive as the parent of the cluster's processes; on SIGTERM it tears
  down exactly the processes it started, and the kernel (PR_SET_PDEATHSIG, Ray's "fate sharing") ends
  them if it dies in any other way. Any process still mentioning the temp dir afterwards is killed by pid.
- With ``--temp-dir`` the address goes to <temp dir>/ray_current_cluster, not /tmp/ray's, so a later
  ``ray.init()`` in this session (or anyone's) starts its own Ray instead of joining this cluster.
- Auth: token mode, as ray_ganime/__init__.py sets it for everything it starts, but with a fresh
  token in $RAY_AUTH_TOKEN for the cluster and the CLI calls only: nothing reads or writes
  ~/.ray/auth_token, which the in-process Ray of the session (and other users) share.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the CLI colours its output even into a pipe


# Below the kernel's ephemeral range (32768+), where every Ray process binds its gRPC ports at random, and
# above Ray's worker ports (10002-19999): a port picked here is still free when the server binds it later
# (one picked by bind(0) was once taken by a starting Ray in between: "Failed to bind to address"), and below
# the ports that Serve's ingress replicas take in its high-throughput mode (30000-31000, `ganime serve`).
PORT_RANGE = (20000, 29999)


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports from PORT_RANGE (all held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in random.sample(range(*PORT_RANGE), 200):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"no {n} free ports in {PORT_RANGE}")


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as e:
        return f"<{path}: {e}>"


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float, what: str,
                  headers: dict[str, str] | None = None, any_status: bool = False) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2).close()
            return
        except urllib.error.HTTPError as e:
            if any_status:
                return
            error: Exception = e
        except OSError as e:
            error = e
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer on {url} within {timeout_s:.0f} s ({error}):\n{tail(log)}")
        time.sleep(0.2)


@contextlib.contextmanager
def moto_server(log_dir: Path, env: dict[str, str] | None = None, timeout_s: float = 30.0) -> Iterator[str]:
    """``moto_server`` on a free loopback port (``env``: extra variables); yields its endpoint URL."""
    port, = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    log = log_dir / f"moto-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        # Any HTTP answer (even an auth error) means it is serving.
        wait_for_http(endpoint + "/moto-api/", proc, log, timeout_s, "moto_server", any_status=True)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_moto(endpoint: str) -> None:
    """SIGKILL the ``moto_server`` serving ``endpoint`` (an S3 endpoint lost mid-run)."""
    port = endpoint.rsplit(":", 1)[1]
    pids = [pid for pid in _processes_mentioning(f" -p {port}") if "moto_server" in command_line(pid)]
    assert pids, f"no moto_server on port {port}"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _processes_mentioning(text: str) -> list[int]:
    """Pids of this user's processes whose command line contains ``text`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if text in command_line(int(entry.name)):
            pids.append(int(entry.name))
    return pids


@dataclass
class Cluster:
    dashboard: str  # http://127.0.0.1:<port>, for `ray job ...`
    env: dict[str, str]  # what every `ray` command for this cluster runs with (auth mode and token)
    temp_dir: Path
    log: Path
    proc: subprocess.Popen  # `ray start --head --block`: the cluster lives as long as it does

    def ray(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        """A `ray` CLI command against this cluster; output captured, killed after ``timeout`` s."""
        return subprocess.run([str(RAY), *args], env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)

    def job_info(self, job_id: str) -> dict:
        """The job's record from the dashboard's REST API (status, message, ...)."""
        request = urllib.request.Request(f"{self.dashboard}/api/jobs/{job_id}",
                                         headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


@contextlib.contextmanager
def ray_start_head(log_dir: Path, num_cpus: int = 2, timeout_s: float = 90.0,
                   env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A head node with the dashboard on loopback; ``env``: extra variables for the cluster's processes."""
    # Short, not under tmp_path: Unix socket paths (<temp dir>/session_<date>_<pid>/sockets/plasma_store)
    # must stay under 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))
    gcs, dashboard, agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager, client = \
        free_ports(9)
    token = secrets.token_hex(32)
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(extra)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM: stop now, no 30 s drain wait
               RAY_USAGE_STATS_ENABLED="0")
    log = log_dir / "ray-start.log"
    cmd = [str(RAY), "start", "--head", "--block", "--disable-usage-stats",
           "--temp-dir", str(temp_dir), "--num-cpus", str(num_cpus), "--num-gpus", "0",
           "--object-store-memory", str(400 * 1024 ** 2),
           "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
           "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
           "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
           "--ray-client-server-port", str(client),
           "--min-worker-port", "0", "--max-worker-port", "0"]  # 0: any free port, as ray.init() does
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_http(url + "/api/version", proc, log, timeout_s, "`ray start --head`",
                      headers={"Authorization": f"Bearer {token}"})
        yield Cluster(url, env, temp_dir, log, proc)
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started, then exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
            proc.wait(timeout=10)
        # Belt and braces: anything of this cluster's still around (gcs_server, raylet and the agents
        # name the temp dir on their command lines), by pid. Never `ray stop`: it stops every Ray here.
        deadline = time.monotonic() + 10
        while (left := _processes_mentioning(str(temp_dir))) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


# ------------------------------------------------------------------ `ganime serve` as a subprocess, and what it runs

GANIME = Path(sys.executable).parent / "ganime"


def start_ganime_serve(store: Path, port: int, log: Path, *args: str,
                       env: dict[str, str] | None = None) -> subprocess.Popen:
    """``ganime serve`` on its own Ray, in a process group of its own (so a test can signal the group the way a
    terminal's Ctrl-C or systemd does), without a token; output to ``log``; ``env``: variables to add."""
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GANIME_SERVE_TOKEN")}, **(env or {})}
    with open(log, "ab") as out:
        return subprocess.Popen([str(GANIME), "serve", "--store", str(store), "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for_serving(proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> str:
    """Until ``ganime serve`` says it serves (its app is up); returns that line."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [line for line in tail(log, 100_000).splitlines() if line.startswith("serving the models")]
        if lines:
            return lines[-1]
        if proc.poll() is not None:
            raise RuntimeError(f"ganime serve exited with {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"ganime serve did not come up within {timeout_s:.0f} s:\n{tail(log)}")
        time.sleep(0.5)


@dataclass
class GanimeServer:
    """`ganime serve` over ``store`` on ``port`` as the session shares it (conftest's ``ganime_server``): a test
    may stop it, ``running()`` starts another one on the same port and store."""
    store: Path
    port: int
    log_dir: Path
    names: dict[str, str]  # tests/serving.py's packages, in the store
    env: dict[str, str]  # added to each start's environment
    proc: subprocess.Popen | None = None
    log: Path | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> tuple[subprocess.Popen, Path]:
        """Another server on this port and store (not waited for: ``wait_for_serving``) and its log."""
        self.starts += 1
        log = self.log_dir / f"serve-{self.starts}.log"
        return start_ganime_serve(self.store, self.port, log, env=self.env), log

    def running(self) -> "GanimeServer":
        """This, serving: started again if it is not running."""
        if self.proc is None or self.proc.poll() is not None:
            proc, log = self.start()
            try:
                wait_for_serving(proc, log)
            except BaseException:
                stop_group(proc, signal.SIGTERM)
                raise
            self.proc, self.log = proc, log
        return self

    def models(self, names: set[str], timeout_s: float = 30) -> dict[str, dict]:
        """GET /v1/models once it lists ``names`` (packages written meanwhile: its listing is cached for a while),
        as {name: model}."""
        deadline = time.monotonic() + timeout_s
        while True:
            with urllib.request.urlopen(self.url + "v1/models", timeout=30) as response:
                listed = {m["name"]: m for m in json.loads(response.read())["models"]}
            if names <= listed.keys() or time.monotonic() > deadline:
                return listed
            time.sleep(0.5)


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    from ray_ganime.watchdog import descendants

    return [pid, *descendants(pid)]


def alive(pids: list[int]) -> list[str]:
    """The command lines of those of ``pids`` still running (not zombies)."""
    from ray_ganime.watchdog import start_time

    return [f"{pid} {command_line(pid)[:120]}" for pid in pids if start_time(pid) is not None]


def haproxy_runs(pid: int) -> bool:
    """Whether an HAProxy runs among the processes ``pid`` started (Serve's high-throughput mode is on)."""
    for child in process_tree(pid):
        try:
            if Path("/proc", str(child), "comm").read_text().strip() == "haproxy":
                return True
        except OSError:  # gone meanwhile
            pass
    return False


def listening_sockets(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket that one of ``pids`` holds (Linux /proc: the sockets'
    inodes in /proc/net/tcp{,6}, matched to each process's open files)."""
    listening: dict[str, tuple[str, int]] = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path("/proc/net", table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)  # in 32-bit words of host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            listening[fields[9]] = (socket.inet_ntop(family, raw), int(port, 16))
    found = []
    for pid in pids:
        try:
            fds = list((Path("/proc") / str(pid) / "fd").iterdir())
        except OSError:  # gone meanwhile
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if link.startswith("socket:[") and link[8:-1] in listening:
                found.append((pid, *listening[link[8:-1]]))
    return found


STOP_S = 20  # a stopped server must be gone, port and processes, within this


def stop_group(proc: subprocess.Popen, signum: int) -> float:
    """Signal ``proc``'s process group; seconds until it exited (killed, and the test failed, after STOP_S)."""
    started = time.monotonic()
    if proc.poll() is None:
        os.killpg(proc.pid, signum)
        try:
            proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"ganime serve still ran {STOP_S} s after signal {signum}")
    return time.monotonic() - started
