"""Prometheus metrics that work under gunicorn's several worker processes.

When `PROMETHEUS_MULTIPROC_DIR` is set (the gunicorn configs set it), each worker writes its
samples there and `/metrics` aggregates them; otherwise the process's own registry is served.
"""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import REGISTRY, multiprocess

HTTP_REQUESTS = Counter(
    "floodgate_http_requests_total", "HTTP requests served", ["service", "method", "endpoint", "status"]
)
HTTP_LATENCY = Histogram(
    "floodgate_http_request_seconds",
    "HTTP request latency",
    ["service", "method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def exposition() -> tuple[bytes, str]:
    """The metrics page and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
