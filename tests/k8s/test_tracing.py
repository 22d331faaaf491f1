"""The tracing component: an OpenTelemetry Collector that every Floodgate process doing an order's
work is told about and can reach on 4318 (OTLP/HTTP), that nothing outside the namespace reaches,
and that sends the traces to its log and on to the team's backend."""
from __future__ import annotations

import copy
import os

import pytest
import yaml

from deploy import policy, render

TRACED = {"api", "consumer", "relay", "sweeper", "admitter"}


def collector_config(objects: list[dict]) -> dict:
    config_map, = [c for c in policy.of_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("otel-collector")]
    return yaml.safe_load(config_map["data"]["collector.yaml"])


@pytest.mark.parametrize("target", ["dev+tracing", "prod+tracing"])
def test_every_process_that_works_on_orders_exports_to_the_collector_and_reaches_it(targets, target):
    t = targets[target]
    assert t.extra == []
    collector = policy.find(t.objects, "Deployment", "otel-collector")
    told = {}
    for deployment in policy.of_kind(t.objects, "Deployment"):
        labels = policy.pod_labels(deployment)
        if labels.get("app.kubernetes.io/name") not in policy.FLOODGATE_SERVICES:
            continue
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        told[labels["app.kubernetes.io/component"]] = policy.env_of(container).get("OTEL_EXPORTER_OTLP_ENDPOINT")
        reaches = policy.reachable(t.objects, labels, policy.pod_labels(collector), 4318)
        assert reaches == (labels["app.kubernetes.io/component"] in TRACED), policy.name_of(deployment)
    assert {component for component, endpoint in told.items() if endpoint == "http://otel-collector:4318"} == TRACED
    # the PgBouncers do not trace, nor does the line's edge (the crowd's polls, served from memory)
    assert told["pgbouncer"] is None and told["line-status"] is None
    for obj in policy.of_kind(t.objects, "Deployment", "Service", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget"):
        if "otel" in obj["metadata"]["name"]:
            assert obj["metadata"]["namespace"] == "floodgate"


def test_the_collector_receives_otlp_http_and_exports_to_its_log_and_a_backend(targets):
    objects = targets["prod+tracing"].objects
    config = collector_config(objects)
    assert config["receivers"]["otlp"]["protocols"] == {"http": {"endpoint": "0.0.0.0:4318"}}
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["debug", "otlphttp/backend"]
    assert config["exporters"]["otlphttp/backend"]["endpoint"] == "${env:TRACES_BACKEND_ENDPOINT}"
    [container] = policy.find(objects, "Deployment", "otel-collector")["spec"]["template"]["spec"]["containers"]
    repository, _, tag = container["image"].partition(":")
    assert repository == "otel/opentelemetry-collector-contrib" and tag.count(".") == 2
    assert policy.env_of(container)["TRACES_BACKEND_ENDPOINT"].endswith(".invalid")  # a placeholder until set
    # the health_check extension the probes ask
    assert config["extensions"]["health_check"]["endpoint"].endswith(":13133")
    assert container["livenessProbe"]["httpGet"]["port"] == "health"


def test_without_the_component_nothing_traces(targets):
    for name in ("dev", "prod"):
        for deployment in policy.of_kind(targets[name].objects, "Deployment"):
            for _, container, _ in policy.containers(deployment):
                assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in policy.env_of(container), policy.name_of(deployment)


def test_the_policy_refuses_a_broken_component(targets):
    objects = copy.deepcopy(targets["prod+tracing"].objects)
    egress = policy.find(objects, "NetworkPolicy", "floodgate-to-otel-collector")
    egress["spec"]["podSelector"]["matchExpressions"][1]["values"].remove("relay")
    relay = policy.find(objects, "Deployment", "checkout-relay")
    relay["spec"]["template"]["spec"]["containers"][0]["env"] = [
        e for e in relay["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] != "OTEL_EXPORTER_OTLP_ENDPOINT"]
    ingress = policy.find(objects, "NetworkPolicy", "otel-collector-from-floodgate")
    ingress["spec"]["ingress"][0]["from"].append({"namespaceSelector": {"matchLabels": {"floodgate.io/edge": "true"}}})
    config_map, = [c for c in policy.of_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("otel-collector")]
    config = yaml.safe_load(config_map["data"]["collector.yaml"])
    config["service"]["pipelines"]["traces"]["exporters"] = ["debug"]
    config_map["data"]["collector.yaml"] = yaml.safe_dump(config)
    problems = "\n".join(policy.check_tracing(objects))
    assert "checkout-relay: OTEL_EXPORTER_OTLP_ENDPOINT is [None]" in problems
    assert "inventory-relay: cannot reach" in problems
    assert "reachable from namespaces labelled {'floodgate.io/edge': 'true'}" in problems
    assert "not to the log (debug) and a backend (otlphttp)" in problems


def test_an_overlay_in_another_namespace_takes_its_components_with_it(tmp_path):
    """`deploy.apply --component` renders a component around the overlay: its objects go where
    the overlay's do, not to the namespace the component was written for."""
    overlay = tmp_path / "overlays" / "shop"
    overlay.mkdir(parents=True)
    prod = render.K8S_DIR / "overlays" / "prod"
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "shop-drops", "resources": [os.path.relpath(prod, overlay)],
    }))
    objects = render.render_with_components(overlay, [render.K8S_DIR / "components" / name
                                                      for name in ("tracing", "monitoring")])
    namespaced = [obj for obj in objects if obj["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}]
    assert {obj["metadata"].get("namespace") for obj in namespaced} == {"shop-drops"}
    assert policy.find(objects, "Deployment", "otel-collector")["metadata"]["namespace"] == "shop-drops"
