"""A run's lease (ray_ganime/lease.py) on local folders and on the loopback S3 server: one live holder, taken
over at once from a dead holder on this machine and after its expiry from one elsewhere, renewed while held.
Whether `ganime train` honours it: tests/test_train.py."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from runs import hold_lease_in_another_process

from ray_ganime import lease, storage

@pytest.fixture(params=["local", "s3"])
def run_uri(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "runs" / "r1")
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/runs/r1"


def lease_files(run_uri: str) -> list[str]:
    folder = storage.join(run_uri, lease.FOLDER)
    return [u.rsplit("/", 1)[-1] for u in storage.listdir(folder)] if storage.exists(folder) else []


def test_create_bytes_writes_once_and_keeps_the_first(run_uri):
    uri = storage.join(run_uri, "x.json")
    assert storage.create_bytes(uri, b"first")
    assert not storage.create_bytes(uri, b"second")
    assert storage.read_bytes(uri) == b"first"


def released(run_uri: str, name: str) -> bool:
    return bool(storage.read_json(storage.join(run_uri, lease.FOLDER, name)).get("released"))


def test_one_holder_at_a_time_and_released_on_exit(run_uri):
    with lease.Lease(run_uri) as held:
        assert lease_files(run_uri) == ["000001.json"] and held.generation == 1
        with pytest.raises(lease.RunInUse, match=rf"run in use by pid {os.getpid()} on this machine"):
            lease.Lease(run_uri).acquire()
    assert lease_files(run_uri) == ["000001.json"] and released(run_uri, "000001.json")
    # Released: free at once, under the next number (numbers never repeat: a driver that listed the folder
    # before the release cannot create a number that another one holds); the next holder removes older files.
    with lease.Lease(run_uri) as again:
        assert again.generation == 2 and lease_files(run_uri) == ["000002.json"]


def test_of_many_drivers_racing_for_a_run_exactly_one_wins(run_uri):
    start, results = threading.Barrier(6), []

    def race():
        start.wait()
        try:
            results.append(lease.Lease(run_uri).acquire())
        except lease.RunInUse as e:
            results.append(e)

    threads = [threading.Thread(target=race) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, lease.Lease)]
    assert len(results) == 6 and len(winners) == 1, results
    winners[0].release()


RACER = """import sys
from ray_ganime import lease
print("ready", flush=True)
sys.stdin.readline()
try:
    held = lease.Lease(sys.argv[1]).acquire()
    print("won", flush=True)
except lease.RunInUse:
    print("lost", flush=True)
sys.stdin.read()  # the winner holds the run until the test is done
"""


def test_of_driver_processes_racing_for_a_run_exactly_one_wins(run_uri):
    """As above, across processes (what two `ganime train` started together are): each imports first, then all
    are told to go at once."""
    import subprocess
    import sys

    racers = [subprocess.Popen([sys.executable, "-c", RACER, run_uri], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True) for _ in range(4)]
    try:
        assert [r.stdout.readline() for r in racers] == ["ready\n"] * 4
        for r in racers:
            r.stdin.write("go\n")
            r.stdin.flush()
        outcomes = sorted(r.stdout.readline().strip() for r in racers)
    finally:
        for r in racers:
            r.communicate(timeout=30)
    assert outcomes == ["lost", "lost", "lost", "won"]


def test_a_killed_holder_on_this_machine_frees_the_run_at_once(run_uri):
    proc = hold_lease_in_another_process(run_uri)
    try:
        with pytest.raises(lease.RunInUse, match=rf"pid {proc.pid} on this machine"):
            lease.Lease(run_uri).acquire()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    started = time.monotonic()
    with lease.Lease(run_uri) as taken:  # no waiting for its expiry
        assert taken.generation == 2 and lease_files(run_uri) == ["000002.json"]  # the dead one's file is gone
    assert time.monotonic() - started < 5


def test_a_holder_elsewhere_holds_until_its_lease_lapses(run_uri):
    now = time.time()
    record = {"owner": "x", "pid": 1, "pid_start": None, "machine": {"host": "gpu-node-7"}, "started": now - 100}
    uri = storage.join(run_uri, lease.FOLDER, "000003.json")
    storage.write_json(uri, {**record, "expires": now + 30})
    with pytest.raises(lease.RunInUse, match=r"pid 1 on gpu-node-7, since .* lapses in (39|40) s"):
        lease.Lease(run_uri).acquire()
    storage.write_json(uri, {**record, "expires": now - lease.CLOCK_SKEW_S - 1})
    with lease.Lease(run_uri) as taken:
        assert taken.generation == 4


def test_the_holder_renews_and_a_waiting_driver_gets_the_run_when_it_ends(run_uri):
    held = lease.Lease(run_uri, ttl_s=0.4).acquire()
    uri = storage.join(run_uri, lease.FOLDER, "000001.json")
    first = storage.read_json(uri)["expires"]
    time.sleep(0.5)
    assert storage.read_json(uri)["expires"] > first
    threading.Timer(1.5, held.release).start()
    with lease.Lease(run_uri, wait_s=30) as waited:
        assert waited.generation == 2 and held.generation is None


def test_a_holder_whose_run_was_taken_over_stops_renewing_and_says_so(tmp_path, capfd):
    run_uri = str(tmp_path / "r")
    held = lease.Lease(run_uri, ttl_s=0.2).acquire()
    newer = Path(run_uri) / lease.FOLDER / "000002.json"
    newer.write_text(json.dumps({"released": True}))
    time.sleep(0.3)
    assert held.lost and "another driver took the run over" in capfd.readouterr().err
    held.release()
    assert newer.exists() and (Path(run_uri) / lease.FOLDER / "000001.json").exists()  # not its to clean up
