"""Prometheus metrics that work under gunicorn's several worker processes.

When `PROMETHEUS_MULTIPROC_DIR` is set (the gunicorn configs set it), each worker writes its
samples there and `/metrics` aggregates them; otherwise the process's own registry is served.

What the workers (relays, consumers, the sweeper, the admitter) and the broker know is not counted
in any process's memory: each is its own pod without a port, and several replicas share the work.
An API reads those figures from its database and the broker when Prometheus scrapes it
(`ScrapedFigures`), a small query each with a timeout, never on a buyer's request.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Iterable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import REGISTRY, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("floodgate.metrics")

HTTP_REQUESTS = Counter(
    "floodgate_http_requests_total", "HTTP requests served", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "floodgate_http_request_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def this_pods_registry() -> CollectorRegistry:
    """Every API process of this pod's metrics (gunicorn's workers write them to
    PROMETHEUS_MULTIPROC_DIR); a lone process's own without it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def exposition() -> tuple[bytes, str]:
    """The metrics page and its content type."""
    return generate_latest(this_pods_registry()), CONTENT_TYPE_LATEST


# A source of scraped figures: reads what it needs (or raises) and returns its metric families.
Source = Callable[[], Iterable[Metric]]


class ScrapedFigures(Collector):
    """The figures `sources` read when Prometheus scrapes, each source on its own: one that
    fails (the database restarting, the broker away) is left out, logged, and shown as
    `floodgate_metrics_source_up{service, source} 0`; the others still answer."""

    def __init__(self, service: str, sources: Mapping[str, Source]):
        self.service = service
        self.sources = dict(sources)

    def collect(self):
        up = GaugeMetricFamily("floodgate_metrics_source_up", "Whether /metrics could read a source of figures",
                               labels=["service", "source"])
        for name, read in self.sources.items():
            try:
                families = list(read())
            except Exception as error:
                log.warning("metrics: source unreadable", extra={"source": name, "error": repr(error)})
                up.add_metric([self.service, name], 0)
                continue
            up.add_metric([self.service, name], 1)
            yield from families
        yield up
