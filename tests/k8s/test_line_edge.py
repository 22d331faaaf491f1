"""Checkout's line-status edge as its pod runs it: `python -m services.checkout line-status`, one
uvicorn worker, /metrics on a port of its own (METRICS_BIND), as the manifests set it."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from devtools.client import poll
from devtools.ports import free_port

from deploy import render
from tests.k8s.test_gunicorn import get


@contextlib.contextmanager
def edge(metrics_port: int):
    """The edge until the block ends; yields its public port. Its copy of the lines may stay
    stale (no database is needed to answer probes and metrics)."""
    port = free_port()
    env = {**os.environ, "METRICS_BIND": f"127.0.0.1:{metrics_port}", "WEB_CONCURRENCY": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.checkout", "line-status", "--bind", f"127.0.0.1:{port}"],
        cwd=render.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError("the edge exited:\n" + process.stderr.read())
        try:
            return get(port, "/healthz")[0] == 200
        except OSError:
            return False

    try:
        poll(answers, timeout=30, what="the line's edge to answer")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_edge_counts_its_answers_on_the_metrics_port_only():
    metrics = free_port()
    with edge(metrics) as port:
        assert get(port, "/drops/x/line/status")[0] in (404, 503)
        status, text = get(metrics, "/metrics")
        assert status == 200
        assert 'floodgate_line_edge_answers_total{route="probe",status="200"}' in text
        assert 'floodgate_line_edge_answers_total{route="status"' in text
        assert "floodgate_line_edge_copy_age_seconds " in text
        assert get(port, "/metrics")[0] == 404  # never on the public port


def test_a_metrics_port_with_several_workers_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "services.checkout", "line-status", "--bind", f"127.0.0.1:{free_port()}"],
        cwd=render.ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "METRICS_BIND": f"127.0.0.1:{free_port()}", "WEB_CONCURRENCY": "2"})
    assert result.returncode != 0 and "METRICS_BIND takes one uvicorn worker" in result.stderr
