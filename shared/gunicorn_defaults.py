"""gunicorn settings every service's `gunicorn.conf.py` starts from.

`BIND`, `WEB_CONCURRENCY` and `GUNICORN_THREADS` tune a deployment without a code change.
"""
import os
import tempfile

# Prometheus needs a directory shared by the workers, named before any worker imports it.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="floodgate-metrics-"))

bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = 30
# Kubernetes gives pods a longer grace period than this (see deploy/k8s).
graceful_timeout = 20
keepalive = 5
accesslog = None  # the app logs each request as JSON with its request id


def child_exit(server, worker):
    """Drop a dead worker's samples from the shared metrics directory."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
