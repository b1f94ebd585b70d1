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
    """The process's start time in clock ticks since boot (Linux): tells a pid reused by another process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


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
    known: dict[int, str | None] = {}
    while start_time(pid) == started:
        known = {p: start_time(p) for p in descendants(pid) if p != os.getpid()}
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
