"""Starting or joining Ray the same way from the CLI, the jobs and the tests."""

from __future__ import annotations

import logging
import os

import ray


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> bool:
    """Join the cluster at ``address`` / $RAY_ADDRESS (e.g. under ``ray job submit``), else start a new
    local one (never silently joining a cluster someone else started on this machine), with the auth
    mode ray_ganime/__init__.py set before ray was imported. True when it started a Ray that ends with
    this process."""
    address = address or os.environ.get("RAY_ADDRESS")
    started = False
    if ray.is_initialized():
        pass  # e.g. inside a Tune trial: only the Ray Data settings below apply
    elif address:
        ray.init(address=address, logging_level=logging.WARNING, **kwargs)
    else:
        started = True
        # The dashboard (on loopback) serves the State API, which Ray Train's placement-group cleaner needs:
        # without it, a Train run whose driver is killed (a Tune trial that ASHA stops) keeps its workers'
        # CPUs reserved for the rest of the session. Workers log at WARNING: Ray Data's per-epoch INFO lines
        # drown the run's own output on a laptop.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 logging_level=logging.WARNING, configure_logging=True,
                 logging_config=ray.LoggingConfig(encoding="TEXT", log_level="WARNING"), **kwargs)
    # Progress bars and per-epoch INFO lines of every Ray Data operator drown the CLI's own output.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return started
