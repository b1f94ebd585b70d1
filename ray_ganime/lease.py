"""A run's lease on its folder in the store: one live driver per run name.

Two drivers started with the same run name and store would write the same checkpoints and metrics, each
overwriting the other's, and both would report success. So a driver takes the run's lease before it reads or
writes anything there, and another driver is refused in one line while the lease is live.

The lease is a file per generation, ``<run>/lease/NNNNNN.json``, created with the store's exclusive create
(local: a hard link; S3: a conditional PUT): of two drivers that find the newest generation free, exactly one
creates the next. The holder rewrites its file every ``ttl / 4`` with a new expiry and marks it released when it
ends; the next holder removes the older files.
A holder that stalled past its expiry (a frozen VM, a long GC pause, a network partition) may find that another
driver took the run over meanwhile. So the generation number is also a fencing token: training checks it
(``check_held``) before it writes the run's metrics or a checkpoint, and stops with RunTakenOver once a newer
generation exists, instead of writing over the new holder's files.
A generation is free when it was released, when its expiry has passed (a holder on another machine that died
holds the run at most ``ttl``), or at once when its holder ran on this machine and that process is gone (a
killed ``ganime train`` can be resumed right away).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import sys
import threading
import time
import uuid

from ray_ganime import storage
from ray_ganime.watchdog import start_time

TTL_S = 60.0
# A holder's clock may be ahead of ours: a lease from another machine counts as live this much past its expiry.
CLOCK_SKEW_S = 10.0
FOLDER = "lease"
_HELD: set["Lease"] = set()  # this process's leases, for release_all


class RunInUse(storage.StorageError):
    """The run's lease is held by a live driver."""


class RunTakenOver(RunInUse):
    """This driver's lease lapsed and another driver holds the run now: anything this one wrote would mix with
    the other's files."""


def _machine() -> dict:
    """What makes a pid meaningful: the host, its boot and the pid namespace (containers sharing a hostname)."""
    ids = {"host": socket.gethostname()}
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            ids["boot"] = f.read().strip()
        ids["pid_ns"] = os.readlink("/proc/self/ns/pid")
    return ids


def _pid_alive(pid: int, start: str | None) -> bool:
    if start is not None:
        return start_time(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def holder_alive(record: dict, now: float | None = None) -> bool:
    """Whether the driver that wrote ``record`` may still be running."""
    if record.get("released"):
        return False
    if record.get("machine") == _machine():
        return _pid_alive(record["pid"], record.get("pid_start"))
    return (now or time.time()) < record["expires"] + CLOCK_SKEW_S


def describe(record: dict) -> str:
    since = _dt.datetime.fromtimestamp(record["started"], _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    where = "this machine" if record.get("machine") == _machine() else record.get("machine", {}).get("host", "?")
    left = record["expires"] + CLOCK_SKEW_S - time.time()
    return (f"pid {record['pid']} on {where}, since {since}"
            + ("" if where == "this machine" else f"; its lease lapses in {max(left, 0):.0f} s unless renewed"))


def _lease_uri(run_uri: str, generation: int) -> str:
    return storage.join(run_uri, FOLDER, f"{generation:06d}.json")


def generations(run_uri: str, options: storage.StoreOptions | None = None) -> list[int]:
    """The generations of the run's lease files, oldest first."""
    folder = storage.join(run_uri, FOLDER)
    if not storage.exists(folder, options):
        return []
    names = (uri.rsplit("/", 1)[-1] for uri in storage.listdir(folder, options))
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())


def _read(run_uri: str, generation: int, options: storage.StoreOptions | None) -> dict | None:
    uri = _lease_uri(run_uri, generation)
    if not storage.exists(uri, options):  # removed meanwhile by a newer holder
        return None
    return storage.read_json(uri, options)  # any other failure is an error, not a free run


def check_held(run_uri: str, generation: int, options: storage.StoreOptions | None = None) -> None:
    """RunTakenOver when a generation newer than ``generation`` (the driver's) exists: another driver took the
    run over. Called where training is about to write the run's state (on a Ray Train worker: no Lease object).
    A check, then the writes: it narrows the window to one epoch's writes, it does not close it (the store
    offers no conditional write of a whole checkpoint)."""
    newest = max(generations(run_uri, options), default=0)
    if newest > generation:
        record = _read(run_uri, newest, options)
        holder = describe(record) if record else "another driver"
        raise RunTakenOver(f"{run_uri}: another driver took the run over after this one stalled past its lease "
                           f"(over {TTL_S:.0f} s), so this one stopped without writing to it (holder: {holder})")


class Lease:
    """``with Lease(run_uri, options):`` holds the run while the block runs. ``wait_s``: how long to wait for a
    live holder to end (a sweep trial restarted while its previous process is still being stopped) before
    RunInUse."""

    def __init__(self, run_uri: str, options: storage.StoreOptions | None = None, ttl_s: float = TTL_S,
                 wait_s: float = 0.0):
        self.run_uri, self.options, self.ttl_s, self.wait_s = run_uri, options, ttl_s, wait_s
        self.generation: int | None = None
        self.lost: str | None = None  # why, if another driver took the run over (this one stalled past ttl)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record: dict = {}

    def _uri(self, generation: int) -> str:
        return _lease_uri(self.run_uri, generation)

    def _generations(self) -> list[int]:
        return generations(self.run_uri, self.options)

    def _read(self, generation: int) -> dict | None:
        return _read(self.run_uri, generation, self.options)

    def acquire(self) -> "Lease":
        deadline = time.monotonic() + self.wait_s
        while True:
            generations = self._generations()
            newest = generations[-1] if generations else 0
            record = self._read(newest) if newest else None
            if newest and record is None:
                continue  # a newer holder came and cleaned up: look at its file
            if record is None or not holder_alive(record):
                if self._create(newest + 1):
                    for old in generations:  # earlier holders' files: the newest generation is all that counts
                        with contextlib.suppress(storage.StorageError):
                            storage.remove(self._uri(old), options=self.options)
                    return self
                continue  # another driver created it first: look at that one
            if time.monotonic() >= deadline:
                raise RunInUse(f"{self.run_uri}: run in use by {describe(record)}; give another --run-name, or "
                               f"wait for it to end to resume it")
            time.sleep(1.0)

    def _create(self, generation: int) -> bool:
        now = time.time()
        record = {"owner": uuid.uuid4().hex, "pid": os.getpid(), "pid_start": start_time(os.getpid()),
                  "machine": _machine(), "argv": sys.argv[:8], "started": now, "expires": now + self.ttl_s}
        if not storage.create_bytes(self._uri(generation), json.dumps(record).encode(), self.options):
            return False
        self.generation, self._record = generation, record
        _HELD.add(self)
        self._thread = threading.Thread(target=self._renew, name="ganime-lease", daemon=True)
        self._thread.start()
        return True

    def _renew(self) -> None:
        failing = False  # said once per outage
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if any(g > self.generation for g in self._generations()):
                    self.lost = "another driver took the run over after this one's lease lapsed"
                    print(f"ganime: warning: {self.run_uri}: {self.lost}", file=sys.stderr, flush=True)
                    return
                self._record["expires"] = time.time() + self.ttl_s
                storage.write_bytes(self._uri(self.generation), json.dumps(self._record).encode(), self.options)
            except storage.StorageError as e:  # the store is down: training fails on it too, or it comes back
                if not failing:
                    print(f"ganime: warning: could not renew the run's lease: {e}", file=sys.stderr, flush=True)
                failing = True
            else:
                failing = False

    def release(self) -> None:
        """Marks this holder's file released (kept, not deleted: generation numbers only ever go up, so a driver
        that listed the folder before this cannot create a number another one has)."""
        if self.generation is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)  # a renewal stuck in a store's retries must not hold up a stop
        with contextlib.suppress(storage.StorageError):
            # Not once another driver holds the run: it may have removed this file, which must not come back.
            if not self.lost and max(self._generations(), default=0) <= self.generation:
                storage.write_json(self._uri(self.generation), {**self._record, "released": time.time()},
                                   self.options)
        self.generation = None
        _HELD.discard(self)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def release_all(timeout_s: float = 5.0) -> None:
    """Release every lease this process holds (a driver stopped by a signal, before it exits), giving up after
    ``timeout_s`` (a store that is down: the lease then lapses, or its holder is seen dead on this machine)."""
    releasing = threading.Thread(target=lambda: [held.release() for held in list(_HELD)], daemon=True)
    releasing.start()
    releasing.join(timeout_s)
