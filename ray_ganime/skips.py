"""The actor that counts the rows Ray Data's decode tasks drop (rows that do not decode), across all tasks.

A module of its own that imports only Ray: the worker process hosting the actor imports the module that
defines it, and every training run, trial and evaluation starts one; with data.py's imports (OpenCV, Ray
Data, the pyarrow and S3 filesystems) that start took seconds of CPU beside the pipeline it counts for.
"""

from __future__ import annotations

import ray

MAX_EXAMPLES = 20  # reasons kept for the report


@ray.remote(num_cpus=0)
class SkipCounter:
    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, reasons: list[str]) -> None:
        self.count += len(reasons)
        self.examples.extend(reasons[: max(0, MAX_EXAMPLES - len(self.examples))])

    def report(self) -> tuple[int, list[str]]:
        return self.count, self.examples
