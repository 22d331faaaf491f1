"""The scaler script the CronJobs run, taken from the rendered ConfigMap and run against a
local stand-in for the Kubernetes API that records what it is sent."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy import policy


class FakeApi(BaseHTTPRequestHandler):
    requests: list = []
    status = 200

    def _record(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append((self.command, self.path, dict(self.headers), body))
        if self.status != 200:
            self.send_response(self.status)
            self.end_headers()
            return
        patch = json.loads(body)
        reply = json.dumps({"spec": {"minReplicas": patch["spec"]["minReplicas"], "maxReplicas": 80}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_PATCH = do_GET = do_PUT = do_POST = _record

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    FakeApi.requests = []
    FakeApi.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def scaler(drop, tmp_path):
    """Runs the script exactly as rendered into the drop-scaler ConfigMap."""
    configmap = next(c for c in policy.of_kind(drop, "ConfigMap") if c["metadata"]["name"].startswith("drop-scaler"))
    script = tmp_path / "set_floor.py"
    script.write_text(configmap["data"]["set_floor.py"])
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "namespace").write_text("floodgate\n")
    (account / "token").write_text("test-token\n")

    def run(server, *args):
        env = {"SERVICE_ACCOUNT_DIR": str(account), "KUBERNETES_API_URL": f"http://127.0.0.1:{server.server_port}"}
        return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=60)

    return run


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def test_sends_one_merge_patch_per_autoscaler_and_reads_nothing(api, scaler):
    result = scaler(api, today(), "checkout-api=40", "inventory-api=12")
    assert result.returncode == 0, result.stderr
    assert [(method, path) for method, path, _, _ in FakeApi.requests] == [
        ("PATCH", "/apis/autoscaling/v2/namespaces/floodgate/horizontalpodautoscalers/checkout-api"
                  "?fieldManager=floodgate-drop-scaler"),
        ("PATCH", "/apis/autoscaling/v2/namespaces/floodgate/horizontalpodautoscalers/inventory-api"
                  "?fieldManager=floodgate-drop-scaler"),
    ]
    _, _, headers, body = FakeApi.requests[0]
    assert headers["Authorization"] == "Bearer test-token"
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert json.loads(body) == {"spec": {"minReplicas": 40}}
    logged = [json.loads(line) for line in result.stdout.splitlines()]
    assert [entry["min_replicas"] for entry in logged] == [40, 12]


def test_a_year_later_the_same_schedule_does_nothing(api, scaler):
    last_year = (datetime.now(timezone.utc) - timedelta(days=365)).date().isoformat()
    result = scaler(api, last_year, "checkout-api=40")
    assert result.returncode == 0
    assert FakeApi.requests == []
    assert json.loads(result.stdout)["event"] == "skipped"


@pytest.mark.parametrize("days_from_today, acts", [(-2, False), (-1, True), (0, True), (1, True), (2, True), (3, False)])
def test_the_job_acts_from_two_days_before_its_date_to_the_day_after(api, scaler, days_from_today, acts):
    """The runbook's check of the scaler, the day before an evening drop, runs the lower-floor job,
    whose DATE is the next UTC day: two days ahead. It once skipped, proving nothing."""
    due = (datetime.now(timezone.utc) + timedelta(days=days_from_today)).date().isoformat()
    result = scaler(api, due, "checkout-api=40")
    assert result.returncode == 0
    assert (json.loads(result.stdout.splitlines()[0])["event"] != "skipped") == acts
    assert bool(FakeApi.requests) == acts


def test_a_refused_patch_fails_the_job_so_it_is_retried(api, scaler):
    FakeApi.status = 403
    result = scaler(api, today(), "checkout-api=40")
    assert result.returncode != 0
    assert len(FakeApi.requests) == 1
