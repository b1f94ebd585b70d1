"""Starting or joining Ray the same way from the CLI, the jobs and the tests."""

from __future__ import annotations

import logging
import os
import sys

import ray

# Ray Serve's high-throughput mode (Ray >= 2.55, "Enable High Throughput on Ray Serve" in Ray's docs): HAProxy on
# the HTTP port in place of Serve's Python proxy, the ingress replicas answering HTTP themselves, and gRPC between
# deployments. bench/serve_latency.py measured what Serve adds to a request on a 2-core box: 26-28 ms -> 10 ms.
# Its replicas listen on their own ports (30000-31000, on serve.host) for HAProxy, so on a cluster they must be
# reachable from every node: cluster.yaml keeps Serve's default proxy.
# Between deployments its gRPC refuses messages over 4 MiB by default: any image over 1.4 megapixels would be a
# 500, so the limit goes to gRPC's own maximum (serve.max_request_bytes and serve.max_pixels are the real limits).
SERVE_HIGH_THROUGHPUT = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                         "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1)}


def use_serve_high_throughput() -> None:
    """Turn on ``SERVE_HIGH_THROUGHPUT`` for the Ray this process starts: before Ray starts (its processes read
    these variables from the environment they start with) and before ray.serve is imported (so does this one).
    A variable already set, to 0 or 1, wins."""
    if "ray.serve" in sys.modules or ray.is_initialized():
        raise RuntimeError("use_serve_high_throughput() must come before ray.serve is imported and Ray starts")
    for name, value in SERVE_HIGH_THROUGHPUT.items():
        os.environ.setdefault(name, value)


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
