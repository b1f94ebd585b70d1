"""Stops what a driver started when the driver is killed outright (SIGKILL, the OOM killer): nothing of the
driver runs then, and the Ray it started (GCS, raylet, workers) would run on for a minute or more.

``python -m ray_ganime.watchdog PID``, started by ``runtime.make_stoppable``: while PID lives, it notes PID's
descendants every half second; once PID is gone, it kills those still running (the same processes: pid and
start time) and exits. The standard library only, so that it starts in milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

INTERVAL_S = 0.5


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux): tells a pid reused by another process. None
    when no process runs as ``pid`` (a zombie, killed but not yet reaped, runs no more)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def descendants(pid: int | None = None) -> list[int]:
    """Live (not zombie) descendants of ``pid`` (this process), from Linux's /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):  # gone meanwhile
            continue
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(stat.parent.name))
    found, queue = [], [pid or os.getpid()]
    while queue:
        kids = children.get(queue.pop(), [])
        found += kids
        queue += kids
    return found


def watch(pid: int, started: str) -> None:
    # Every descendant ever seen: when the driver dies, Ray's processes that share its fate die with it and
    # theirs (agents, workers) are orphaned at once, before a last look could find them under it.
    known: dict[int, str | None] = {}
    while start_time(pid) == started:
        known.update((p, start_time(p)) for p in descendants(pid) if p != os.getpid())
        time.sleep(INTERVAL_S)
    for p, when in known.items():
        if when is not None and start_time(p) == when:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


if __name__ == "__main__":
    # A terminal's Ctrl-C reaches the whole process group: the driver handles it, this keeps watching.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]), sys.argv[2])
