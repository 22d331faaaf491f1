"""gunicorn settings of every service's API: `gunicorn -c python:shared.gunicorn_defaults APP`.

`BIND`, `WEB_CONCURRENCY` and `GUNICORN_THREADS` tune a deployment without a code change;
`METRICS_BIND` (HOST:PORT) moves `/metrics` off `BIND` to a port of its own. `WSGI_APP` names the
app when the command line does not (the images set it: `services.<service>.app:create_app()`).
"""
import importlib
import json
import os
import tempfile

from gunicorn import util as _gunicorn_util

from shared.config import api_process_shape, keepalive_seconds, metrics_address

# Prometheus needs a directory shared by the workers, named before any worker imports it.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="floodgate-metrics-"))

bind = os.environ.get("BIND", "0.0.0.0:8000")
if os.environ.get("WSGI_APP"):
    wsgi_app = os.environ["WSGI_APP"]
# Prometheus' port (the Kubernetes manifests set it): gunicorn listens there too, and /metrics
# answers there and nowhere else (post_worker_init). Unset, /metrics stays on `bind`.
_METRICS_BIND = os.environ.get("METRICS_BIND", "")
if _METRICS_BIND:
    _METRICS_PORT = str(metrics_address(_METRICS_BIND)[1])  # as the WSGI environ's SERVER_PORT says it
    bind = [bind, _METRICS_BIND]
workers, threads = api_process_shape()  # shared/config.py says why one worker of 24 threads
worker_class = "gthread"
timeout = 30
# Kubernetes gives pods a longer grace period than this (see deploy/k8s).
graceful_timeout = 20
keepalive = keepalive_seconds()  # behind a proxy, longer than it keeps idle connections: shared/config.py
accesslog = None  # the app logs each request as JSON with its request id
# The longest request line (method, path and query) taken; longer ones are answered 414 below.
limit_request_line = 4094
# No control socket (`gunicornc`): it would go to $HOME, which the images' user does not have
# (a read-only /nonexistent), and Kubernetes, not a socket, manages these processes.
control_socket_disable = True


def _problem_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """What gunicorn answers itself (a request line over `limit_request_line`, headers over their
    limits, a malformed request) is problem+json like every other error, not gunicorn's HTML page.
    Spelled out here rather than through `shared.errors`: that would load Flask into the master."""
    body = json.dumps({
        "type": "https://floodgate.dev/problems/" + reason.lower().replace(" ", "-"),
        "title": reason,
        "status": status_int,
        "detail": mesg or reason,
    }).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    _gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


_gunicorn_util.write_error = _problem_error


def on_starting(server):
    """Import the app's module (not its factory) in the master, before any worker is forked.

    Every worker then starts with Flask, SQLAlchemy, marshmallow and the service already imported:
    about 0.75 s of CPU each otherwise (checkout's), spent again by every worker the master forks
    after one dies or is killed, which in a drop happens mid-rush, on the cores the orders need.
    Only the import: the app factory, which opens the database pool and starts threads, runs in
    each worker after the fork, as before (nothing connects at import). A module that fails to
    import here is left to the workers, which report it as they always did. Since the master
    holds the code, a new version is deployed by starting a new master (a new pod), not by
    `kill -HUP`, whose new workers would fork from the old code."""
    module = (getattr(server.app, "app_uri", None) or server.cfg.wsgi_app or "").partition(":")[0]
    if not module:
        return
    try:
        importlib.import_module(module)
    except Exception as error:  # the worker's own import says what is wrong, with its traceback
        server.log.warning("could not import %s in the master (%r); the workers import it themselves", module, error)


def child_exit(server, worker):
    """Drop a dead worker's samples from the shared metrics directory."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _metrics_port_only(app, port: str):
    """The WSGI app, with /metrics answered on the metrics port only and nothing else there. The
    port is the listener's (SERVER_PORT), never what a client's Host header claims."""
    body = json.dumps({
        "type": "https://floodgate.dev/problems/not-found",
        "title": "Not found",
        "status": 404,
        "detail": "Not found",
    }).encode()

    def routed(environ, start_response):
        if (environ.get("PATH_INFO") == "/metrics") != (environ.get("SERVER_PORT") == port):
            start_response("404 Not Found", [("Content-Type", "application/problem+json"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return routed


def post_worker_init(worker):
    """Keep /metrics off the public port when a metrics port is configured."""
    if _METRICS_BIND:
        worker.wsgi = _metrics_port_only(worker.wsgi, _METRICS_PORT)
