"""The APIs' gunicorn as the images run it: a real gunicorn with the services' settings
(`-c python:shared.gunicorn_defaults`) serving a small WSGI app, under the pod's conditions: a
home directory nobody can write (the image's user has /nonexistent, on a read-only root) and, as in
the manifests, /metrics on a port of its own."""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from devtools.client import poll
from devtools.ports import free_port

from deploy import policy, render

APP = '''
def app(environ, start_response):
    body = f"{environ['PATH_INFO']} on {environ['SERVER_PORT']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


@contextlib.contextmanager
def gunicorn(tmp_path, metrics_port: int | None = None, keepalive: str | None = None):
    """Runs gunicorn (debug log) until the block ends; yields the public port and its log lines as they come."""
    (tmp_path / "probe_app.py").write_text(APP)
    (tmp_path / "metrics").mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "METRICS_BIND", "KEEPALIVE_SECONDS")}
    # a home that cannot be created, whoever runs the test (root could create /nonexistent)
    env.update(HOME="/dev/null/nonexistent", BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1",
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    if metrics_port:
        env["METRICS_BIND"] = f"127.0.0.1:{metrics_port}"
    if keepalive:
        env["KEEPALIVE_SECONDS"] = keepalive
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:shared.gunicorn_defaults", "--log-level", "debug",
         "--pythonpath", str(tmp_path), "probe_app:app"],
        cwd=render.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError("gunicorn exited:\n" + "".join(log))
        try:
            return bool(get(port, "/"))
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        poll(answers, timeout=30, what="gunicorn to answer")
        yield port, log
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=30)


def wait_for_line(log: list[str], *fragments: str) -> str:
    """The first log line with one of the fragments, polling for up to 30 s."""
    return poll(lambda: next((line for line in list(log) if any(f in line for f in fragments)), None),
                timeout=30, interval=0.05, what=f"a log line with {fragments}")


def get(port: int, path: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_starts_without_a_complaint_when_home_cannot_be_written(tmp_path):
    with gunicorn(tmp_path) as (port, log):
        assert get(port, "/orders") == (200, f"/orders on {port}")
        # the master deals with its control socket once the workers run, on a thread of its own
        wait_for_line(log, "Control socket", "Control server")
    complaints = [line for line in log if any(level in line for level in ("[ERROR]", "[WARNING]", "[CRITICAL]"))]
    assert complaints == []


def test_metrics_answer_on_the_metrics_port_only(tmp_path):
    metrics = free_port()
    with gunicorn(tmp_path, metrics_port=metrics) as (port, _):
        assert get(metrics, "/metrics") == (200, f"/metrics on {metrics}")
        status, body = get(port, "/metrics")
        assert status == 404 and json.loads(body)["status"] == 404
        # the port is the listener's, not what the client claims
        assert get(port, "/metrics", host=f"127.0.0.1:{metrics}")[0] == 404
        assert get(port, "/orders") == (200, f"/orders on {port}")
        assert get(metrics, "/orders")[0] == 404


def test_an_idle_kept_alive_connection_outlasts_the_proxys(tmp_path, targets):
    """The proxy in front (ingress-nginx keeps idle upstream connections 60 s) must be the one to
    close an idle connection: gunicorn closing it after 5 s raced the proxy's next request on it,
    which the proxy answered 502. The manifests' ConfigMaps set KEEPALIVE_SECONDS; the idle time is
    what is tested: a connection left 6 s still serves its next request."""
    keepalive = {policy.name_of(config): config["data"].get("KEEPALIVE_SECONDS")
                 for config in policy.of_kind(targets["prod"].objects, "ConfigMap")
                 if config["metadata"]["name"].split("-")[0] in policy.FLOODGATE_SERVICES
                 and "LOG_LEVEL" in config.get("data", {})}
    assert len(keepalive) == 4 and all(int(value) > 60 for value in keepalive.values()), keepalive
    with gunicorn(tmp_path, keepalive=keepalive["ConfigMap/checkout-config"]) as (port, _):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/orders")
            assert connection.getresponse().read() == f"/orders on {port}".encode()
            kept = connection.sock
            time.sleep(6)  # idle past the old 5 s keep-alive: the scenario, not a wait for something
            connection.request("GET", "/orders")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, f"/orders on {port}".encode())
            assert connection.sock is kept
        finally:
            connection.close()


def test_without_a_metrics_port_metrics_stay_where_they_were(tmp_path):
    """Local runs (make run, the integration tests) set no METRICS_BIND."""
    with gunicorn(tmp_path) as (port, _):
        assert get(port, "/metrics") == (200, f"/metrics on {port}")


@pytest.mark.parametrize("bind", ["9100", "0.0.0.0:", "[::]:x"])
def test_a_metrics_bind_without_a_port_is_refused(bind):
    result = subprocess.run(
        [sys.executable, "-c", "import shared.gunicorn_defaults"], cwd=render.ROOT, capture_output=True, text=True,
        env={**os.environ, "METRICS_BIND": bind, "PROMETHEUS_MULTIPROC_DIR": "/tmp"})
    assert result.returncode != 0 and "METRICS_BIND" in result.stderr
