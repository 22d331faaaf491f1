"""The monitoring component: alert rules Prometheus accepts and that fire when they should (promtool,
Debian's prometheus package: `make promtool`), a PrometheusRule that is those rules, a scrape
configuration that reaches only the APIs' metrics port, and a dashboard; every rule and panel
names only metrics the code defines."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import monitoring, policy

PROMTOOL_TESTS = Path(__file__).with_name("promtool") / "floodgate.rules.test.yaml"
README = monitoring.ROOT / "deploy" / "k8s" / "README.md"
# what the issue asks the rules and the dashboard to watch
ALERTS = {"FloodgateEmailLate", "FloodgateDeadLetters", "FloodgateCheckoutShedding", "FloodgateOrdersFailing",
          "FloodgatePaymentsNotArriving", "FloodgateOutboxBacklogGrowing", "FloodgateWorkerHeartbeatStale",
          "FloodgateHoldExpiriesSpiking", "FloodgateMetricsUnreadable", "FloodgateFiguresMissing",
          "FloodgateLineEdgeStale", "FloodgateEventsBacklog", "FloodgatePaymentWebhooksFailing",
          "FloodgateSignInFailing", "FloodgateRegistrationsRefused", "FloodgateOrdersSlow",
          "FloodgateMoneyOwed", "FloodgateEventsRetrying"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if binary is None:
        pytest.fail("promtool is not installed: run `make promtool` (Debian's prometheus package), "
                    "which `make k8s-validate` runs first")
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_prometheus_accepts_the_rules():
    result = promtool("check", "rules", str(monitoring.RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_each_alert_fires_on_what_should_trigger_it_and_stays_silent_otherwise():
    result = promtool("test", "rules", PROMTOOL_TESTS.name, cwd=PROMTOOL_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_are_the_alerts_asked_for_and_each_is_tested_both_ways():
    assert set(monitoring.rule_expressions()) == ALERTS
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    fires, silent = set(), set()
    for test in tests:
        series = [s["series"] for s in test["input_series"]]
        for case in test["alert_rule_test"]:
            name = case["alertname"]
            expected = case.get("exp_alerts") or []
            if expected:
                fires.add(name)
            # silent: nothing expected, or a series whose labels no expected alert carries
            labels = [{k: v for k, v in alert["exp_labels"].items() if k != "severity"} for alert in expected]
            if not expected or any(not any(all(f'{k}="{v}"' in s for k, v in alert.items()) for alert in labels)
                                   for s in series):
                silent.add(name)
    assert fires == ALERTS, f"no test where it fires: {ALERTS - fires}"
    assert silent == ALERTS, f"no test where it stays silent: {ALERTS - silent}"


def test_the_prometheus_rule_is_the_rules_file():
    applied = yaml.safe_load(monitoring.PROMETHEUS_RULE.read_text())
    assert applied == monitoring.prometheus_rule(), "run `python -m deploy.monitoring` after editing the rules file"


def test_every_rule_and_panel_names_only_metrics_the_code_defines():
    defined = monitoring.defined_metrics()
    expressions = {**monitoring.rule_expressions(), **monitoring.dashboard_expressions()}
    assert monitoring.unknown_metrics(expressions, defined) == []
    # and the check is not empty: the figures the issue asks for are among them
    named = set().union(*(monitoring.named_metrics(e) for e in expressions.values()))
    assert {"floodgate_http_requests_total", "floodgate_notifications_oldest_pending_age_seconds",
            "floodgate_notifications_queue_messages", "floodgate_dead_letters", "floodgate_outbox_pending",
            "floodgate_worker_heartbeat_age_seconds", "floodgate_inventory_hold_expiries_total",
            "floodgate_metrics_source_up", "floodgate_notifications_metrics_source_up",
            "floodgate_order_gate_wait_seconds_bucket", "floodgate_events_waiting"} <= named


def test_an_api_prometheus_does_not_scrape_at_all_is_an_alert():
    """Every API the PodMonitor scrapes has its figures' absence watched: an API added to the one
    and not the other would be silent the day its pods are gone."""
    monitor = yaml.safe_load((monitoring.COMPONENT / "podmonitor.yaml").read_text())
    scraped, = [e["values"] for e in monitor["spec"]["selector"]["matchExpressions"]
                if e["key"] == "app.kubernetes.io/name"]
    missing = monitoring.rule_expressions()["FloodgateFiguresMissing"]
    watched = set(re.findall(r'absent\(floodgate_metrics_source_up\{service="([a-z]+)"\}\)', missing))
    assert watched == set(scraped)
    assert "absent(floodgate_notifications_metrics_source_up)" in missing


def test_the_metric_check_catches_a_misspelt_metric_label_or_grouping():
    defined = monitoring.defined_metrics()
    problems = monitoring.unknown_metrics({
        "renamed": "max by (service) (floodgate_dead_letter) > 0",
        "label": 'sum(rate(floodgate_http_requests_total{servce="checkout"}[1m]))',
        "grouping": "max by (servce) (floodgate_outbox_pending)",
    }, defined)
    assert problems == [
        "renamed: floodgate_dead_letter is not a metric Floodgate defines",
        "label: floodgate_http_requests_total has no label servce",
        "grouping: no metric it names has the label(s) servce",
    ]


def test_no_metric_carries_a_label_the_scrape_sets_on_its_target():
    """The HTTP metrics' route label was once `endpoint`, which the Prometheus Operator sets on
    every PodMonitor target (the port's name, "metrics"): Prometheus renamed the exported one
    `exported_endpoint`, and every alert and panel on `POST /orders` matched nothing."""
    assert monitoring.overwritten_labels(monitoring.defined_metrics()) == []
    assert monitoring.overwritten_labels({"floodgate_http_requests_total": {"service", "endpoint", "status"}}) == [
        "floodgate_http_requests_total: its label endpoint is one the scrape sets on every target (Prometheus "
        "renames the exported one exported_endpoint, and rules matching it find nothing)"]
    rule = {"before": 'sum(rate(floodgate_http_requests_total{endpoint="/orders"}[1m]))'}
    # a rule may match the target's own endpoint label, so the rules' check could not see it
    assert monitoring.unknown_metrics(rule, monitoring.defined_metrics()) == []


def test_the_metrics_the_code_defines_are_read_from_it():
    defined = monitoring.defined_metrics()
    assert defined["floodgate_http_requests_total"] == {"service", "method", "route", "status"}
    assert defined["floodgate_http_request_seconds_bucket"] == {"service", "method", "route", "le"}
    assert defined["floodgate_notifications_queue_messages"] == {"queue"}  # an f-string with its PREFIX
    assert defined["floodgate_inventory_hold_expiries_total"] == {"drop_id"}  # a counter: `_total`
    assert defined["floodgate_worker_heartbeat_age_seconds"] == {"service", "kind"}


def test_every_panel_query_is_promql_prometheus_accepts(tmp_path):
    records = [{"record": f"floodgate:panel_{number}", "expr": expr}
               for number, expr in enumerate(monitoring.dashboard_expressions().values())]
    rules = tmp_path / "panels.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]}))
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_shows_the_drop():
    dashboard = monitoring.dashboard()
    titles = [panel["title"] for panel in dashboard["panels"]]
    for wanted in ("Orders placed per second", "Answers to POST /orders by status", "Email backlog",
                   "Oldest unsent email", "Dead letters per service", "Outbox backlog per service",
                   "Worker heartbeat age", "Hold expiries per drop"):
        assert wanted in titles
    # every status, so that a storm of 500s, 502s or 401s shows as such, not as traffic dropping
    answers = monitoring.dashboard_expressions()["Answers to POST /orders by status (A)"]
    assert "sum by (status)" in answers and "status" not in monitoring.named_metrics(answers)["floodgate_http_requests_total"]
    # how long pass holders waited at checkout's gate, beside the time checkout took to answer
    latency = [e for title, e in monitoring.dashboard_expressions().items() if title.startswith("POST /orders latency")]
    assert any("histogram_quantile(0.99" in e and "floodgate_order_gate_wait_seconds_bucket" in e for e in latency)
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(titles)
    # every query goes to the Prometheus the viewer picks
    assert {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]} == {"${datasource}"}


@pytest.mark.parametrize("target", ["dev+monitoring", "prod+monitoring"])
def test_the_component_scrapes_every_api_on_its_metrics_port_only(targets, target):
    t = targets[target]
    assert t.extra == []
    monitor, = policy.of_kind(t.objects, "PodMonitor")
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert policy.of_kind(t.objects, "ServiceMonitor") == []  # no Service publishes the metrics port
    dashboard, = [c for c in policy.of_kind(t.objects, "ConfigMap") if c["metadata"]["name"] == "floodgate-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["floodgate.json"]) == monitoring.dashboard()
    for obj in [monitor, dashboard, *policy.of_kind(t.objects, "PrometheusRule")]:
        assert obj["metadata"]["namespace"] == "floodgate"


def test_the_policy_refuses_a_broken_component(targets):
    objects = copy.deepcopy(targets["prod+monitoring"].objects)
    monitor, = policy.of_kind(objects, "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = "http"  # the public port
    monitor["spec"]["selector"]["matchExpressions"][0]["values"].remove("accounts")
    rule, = policy.of_kind(objects, "PrometheusRule")
    rule["spec"]["groups"][0]["rules"].pop()
    dashboard, = [c for c in policy.of_kind(objects, "ConfigMap") if c["metadata"]["name"] == "floodgate-dashboard"]
    dashboard["data"]["floodgate.json"] = "{"
    problems = "\n".join(policy.check_monitoring(objects))
    assert "PrometheusRule differs" in problems
    assert "not every API" in problems
    assert "the monitoring namespace cannot reach" in problems  # 8000 is the edge's, not monitoring's
    assert "is not JSON" in problems


def test_the_runbook_explains_every_alert():
    section = README.read_text().split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    for alert in ALERTS:
        assert f"`{alert}`" in section, alert
