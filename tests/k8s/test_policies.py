"""Policies every rendered overlay meets: each a separate test, so a failure names the rule."""
from __future__ import annotations

import copy
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.messaging import topology

from deploy import policy, validate

TARGETS = validate.TARGETS
CHECKS = {
    "requests and limits on every container": policy.check_resources,
    "liveness, readiness and startup probes": policy.check_probes,
    "readiness asks whether the process can work": policy.check_readiness,
    "non-root, read-only, no capabilities": policy.check_security,
    "pinned image tags": policy.check_images,
    "no image of an unsupported release series": policy.check_supported_images,
    "/metrics on a port of its own": policy.check_metrics_port,
    "autoscalers deployable as rendered": policy.check_autoscalers,
    "every egress rule names where it goes": policy.check_egress_peers,
    "a PodDisruptionBudget per Deployment": policy.check_disruption_budgets,
    "topology spread per Deployment": policy.check_topology_spread,
    "grace period > preStop + gunicorn graceful_timeout": policy.check_graceful_shutdown,
    "default-deny NetworkPolicy": policy.check_default_deny,
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rule", CHECKS)
def test_every_overlay_meets(targets, target, rule):
    assert CHECKS[rule](targets[target].objects) == []


@pytest.mark.parametrize("target", [target for target in TARGETS if target.startswith("dev")])
def test_a_dev_cluster_on_a_2_cpu_laptop_node_schedules_every_pod(targets, target):
    assert policy.check_fits_dev_node(targets[target].objects) == []


def test_a_consumer_ready_while_reconnecting_or_restarted_by_every_broker_outage_is_named(dev):
    objects = copy.deepcopy(dev)
    [consumer] = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "checkout-consumer"]
    [c] = consumer["spec"]["template"]["spec"]["containers"]
    c["readinessProbe"]["exec"]["command"].insert(4, "/tmp/heartbeat.reconnecting")
    c["livenessProbe"]["exec"]["command"].remove("/tmp/heartbeat.reconnecting")

    problems = policy.check_readiness(objects)

    assert [problem.split(":")[0] for problem in problems] == ["Deployment/checkout-consumer container consumer"] * 2
    assert "readiness probe accepts /tmp/heartbeat.reconnecting" in problems[0]
    assert "liveness probe does not accept /tmp/heartbeat.reconnecting" in problems[1]


def test_an_http_readiness_probe_that_gives_up_behind_a_rush_is_named(dev):
    """The line-status edge's /readyz once gave up after 3 s twice: it waits on the one loop behind
    the polls, so the pre-queue's last seconds took every pod out of the Service at once."""
    objects = copy.deepcopy(dev)
    [c] = policy.pod_spec(policy.find(objects, "Deployment", "checkout-line-status"))["containers"]
    c["readinessProbe"].update(timeoutSeconds=3, failureThreshold=2)

    problems = policy.check_readiness(objects)

    assert len(problems) == 1 and problems[0].startswith("Deployment/checkout-line-status container")
    assert "gives up after 6 s" in problems[0]


def test_prods_requests_on_a_laptop_node_would_leave_pods_pending(targets):
    # what the dev overlay requested before it sized its pods for a laptop: prod's
    requested = policy.requested(targets["prod"].objects)
    assert all(requested[resource] > policy.DEV_NODE_BUDGET[resource] for resource in ("cpu", "memory"))
    assert len(policy.check_fits_dev_node(targets["prod"].objects)) == 2  # one problem each


@pytest.mark.parametrize("written, value", [("250m", 0.25), ("2", 2), ("1.5", 1.5), ("128Mi", 128 * 2**20),
                                            ("1Gi", 2**30), ("500M", 5e8)])
def test_quantities_read_as_kubernetes_writes_them(written, value):
    assert policy.quantity(written) == value


@pytest.mark.parametrize("target", TARGETS)
def test_what_pods_name_exists(targets, target):
    t = targets[target]
    assert policy.check_references(t.objects, secrets_provided_outside=not t.dev) == []


@pytest.mark.parametrize("target", TARGETS)
def test_secret_values_only_public_dev_ones(targets, target):
    t = targets[target]
    assert policy.check_secrets(t.objects, dev=t.dev) == []
    if not t.dev:
        assert policy.of_kind(t.objects, "Secret") == []


@pytest.mark.parametrize("target", ["dev+keda", "prod+keda"])
def test_keda_scales_notifications_on_its_work_queue(targets, target):
    assert targets[target].extra == []
    scaled = policy.of_kind(targets[target].objects, "ScaledObject")
    assert [s["spec"]["scaleTargetRef"]["name"] for s in scaled] == ["notifications-consumer"]
    [consumer] = scaled  # on every email waiting: in the work queue and in the lane of those given back
    assert [t["metadata"]["queueName"] for t in consumer["spec"]["triggers"]] == list(topology.waiting_queues(
        "notifications"))


def test_keda_must_be_given_a_broker_address_it_can_resolve(targets):
    """KEDA's operator connects from its own namespace: `rabbitmq` alone resolves to nothing there."""
    import base64
    import copy

    objects = copy.deepcopy(targets["dev+keda"].objects)
    broker = policy.find(objects, "Secret", "broker")
    url = base64.b64decode(broker["data"]["url"]).decode()
    assert "@rabbitmq.floodgate.svc:5672/" in url
    for host, message in (("rabbitmq", "is a short name"), ("rabbitmq.default.svc", "names namespace 'default'")):
        broker["data"]["url"] = base64.b64encode(url.replace("rabbitmq.floodgate.svc", host).encode()).decode()
        assert any(message in p for p in policy.check_keda(objects)), host
    broker["data"]["url"] = base64.b64encode(f"{url},{url}".encode()).decode()
    assert any("one broker address" in p for p in policy.check_keda(objects))


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_drop_scaler_gets_a_service_account_token(targets, target):
    accounts = {o["metadata"]["name"]: o for o in policy.of_kind(targets[target].objects, "ServiceAccount")}
    mounting = set()
    for obj in policy.of_kind(targets[target].objects, *policy.WORKLOADS):
        spec = policy.pod_spec(obj)
        account = accounts.get(spec.get("serviceAccountName", "default"), {})
        if spec.get("automountServiceAccountToken", account.get("automountServiceAccountToken", True)):
            mounting.add(obj["metadata"]["name"])
    assert mounting <= {"drop-raise-floor", "drop-lower-floor"}


def test_every_service_has_its_processes(dev):
    deployments = {d["metadata"]["name"] for d in policy.of_kind(dev, "Deployment")}
    assert {"accounts-api", "accounts-relay", "inventory-api", "inventory-consumer", "inventory-relay",
            "inventory-sweeper", "checkout-api", "checkout-consumer", "checkout-relay", "checkout-admitter",
            "checkout-line-status", "notifications-api", "notifications-consumer", "notifications-relay"} <= deployments
    jobs = {j["metadata"]["name"] for j in policy.of_kind(dev, "Job")}
    assert jobs == {f"{s}-migrate" for s in policy.FLOODGATE_SERVICES}
    assert {s["metadata"]["name"] for s in policy.of_kind(dev, "StatefulSet")} == {"postgresql", "rabbitmq"}


def test_commands_match_the_contracts(dev):
    """The processes docs/contracts.md lists, run from each service's image."""
    commands = {}
    for obj in policy.of_kind(dev, "Deployment", "Job"):
        container = policy.pod_spec(obj)["containers"][0]
        commands[obj["metadata"]["name"]] = (container["image"].split(":")[0], container.get("command"))
    assert commands["checkout-api"] == ("floodgate/checkout", None)  # the image's gunicorn entry point
    assert commands["inventory-consumer"] == ("floodgate/inventory", ["python", "-m", "services.inventory", "consumer"])
    assert commands["accounts-relay"] == ("floodgate/accounts", ["python", "-m", "services.accounts", "relay"])
    assert commands["inventory-sweeper"] == ("floodgate/inventory", ["python", "-m", "services.inventory", "sweeper"])
    assert commands["notifications-migrate"] == ("floodgate/notifications",
                                                 ["python", "-m", "services.notifications", "migrate"])
    assert commands["checkout-line-status"] == ("floodgate/checkout", ["python", "-m", "services.checkout",
                                                                       "line-status", "--bind", "0.0.0.0:8000"])
    # and each is a process its service's command line really has
    for name, (image, command) in commands.items():
        if command is None or "floodgate/" not in image:
            continue
        assert command[:2] == ["python", "-m"], name
        module, process = command[2], command[3]
        assert image.endswith(f"floodgate/{module.removeprefix('services.')}"), name
        assert process in service_processes(module), name


@functools.cache
def service_processes(module: str) -> set[str]:
    """The processes `python -m <module> --help` lists."""
    shown = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).resolve().parents[2], check=True).stdout
    listed = re.search(r"\{([a-z,-]+)\}", shown)
    return set(listed.group(1).split(",")) if listed else set()


def test_metrics_and_tmp_are_writable_on_a_read_only_root(dev):
    for obj in policy.of_kind(dev, "Deployment"):
        if obj["metadata"]["labels"].get("app.kubernetes.io/part-of") != "floodgate":
            continue
        container = policy.pod_spec(obj)["containers"][0]
        volumes = {v["name"]: v for v in policy.pod_spec(obj)["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], obj["metadata"]["name"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if "PROMETHEUS_MULTIPROC_DIR" in env:
            assert "emptyDir" in volumes[mounts[env["PROMETHEUS_MULTIPROC_DIR"]]]
    api = policy.find(dev, "Deployment", "checkout-api")
    assert any(e["name"] == "PROMETHEUS_MULTIPROC_DIR" for e in policy.pod_spec(api)["containers"][0]["env"])


@pytest.mark.parametrize("target", ["dev", "prod", "drop"])
def test_the_line_status_edge_runs_one_uvicorn_worker_with_the_database_and_the_pass_secret(targets, target):
    """checkout's public status edge: one worker per pod (scaled by replicas), checkout's database
    through its PgBouncer and the line-pass secret it signs the admitted buyers' passes with (the
    one checkout's API checks them with), no other Secret (no broker, service key or payment
    secret), /healthz for startup, its port for liveness, /readyz (its copy is fresh) for readiness,
    and /metrics on its metrics port."""
    objects = targets[target].objects
    deployment = policy.find(objects, "Deployment", "checkout-line-status")
    assert deployment is not None
    spec = policy.pod_spec(deployment)
    [container] = spec["containers"]
    assert container["image"].split(":")[0].endswith("floodgate/checkout")
    env = {e["name"]: e for e in container["env"]}
    assert env["WEB_CONCURRENCY"]["value"] == "1"
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(secrets) == {"DATABASE_URL", "LINE_PASS_SECRET"}
    # dev's generated Secrets carry a content hash in their names
    assert secrets["DATABASE_URL"]["name"].startswith("checkout-database") and secrets["DATABASE_URL"]["key"] == "pooler-url"
    api = policy.pod_spec(policy.find(objects, "Deployment", "checkout-api"))["containers"][0]
    [api_pass] = [e["valueFrom"]["secretKeyRef"] for e in api["env"] if e["name"] == "LINE_PASS_SECRET"]
    assert secrets["LINE_PASS_SECRET"] == api_pass  # the same key signs and checks
    assert [s["configMapRef"]["name"].startswith("checkout-config") for s in container["envFrom"]] == [True]
    assert not {"PROMETHEUS_MULTIPROC_DIR", "AMQP_URL", "SERVICE_KEY"} & set(env)
    # its own /metrics on a port of its own, announced to Prometheus like the APIs'
    assert env["METRICS_BIND"]["value"] == "0.0.0.0:9100"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "metrics": 9100}
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "9100", "prometheus.io/path": "/metrics"}
    probes = {probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
              for probe in ("startupProbe", "readinessProbe")}
    assert probes == {"startupProbe": ("/healthz", "http"), "readinessProbe": ("/readyz", "http")}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "http"}  # never behind the crowd's polls
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
    assert policy.find(objects, "PodDisruptionBudget", "checkout-line-status") is not None
    # prod and the drop: its autoscaler owns the count; dev runs one of everything
    if target == "dev":
        assert deployment["spec"]["replicas"] == 1
    else:
        assert "replicas" not in deployment["spec"]
        hpa = policy.find(objects, "HorizontalPodAutoscaler", "checkout-line-status")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "checkout-line-status"
        assert hpa["spec"]["minReplicas"] >= 2


@pytest.mark.parametrize("target", ["prod", "drop"])
def test_a_line_keeps_admitting_when_an_admitter_pod_goes(targets, target):
    """Production runs two admitters (they share each line and its pace), and a voluntary
    disruption takes one at a time."""
    objects = targets[target].objects
    assert policy.find(objects, "Deployment", "checkout-admitter")["spec"]["replicas"] == 2
    assert policy.find(objects, "PodDisruptionBudget", "checkout-admitter")["spec"]["maxUnavailable"] == 1


def test_an_http_liveness_probe_on_the_line_status_edge_is_refused(dev):
    """Its one event loop answers a probe after the polls before it, as gunicorn's queue does."""
    objects = copy.deepcopy(dev)
    edge = policy.pod_spec(policy.find(objects, "Deployment", "checkout-line-status"))["containers"][0]
    edge["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10}
    [problem] = policy.check_probes(objects)
    assert problem.startswith("Deployment/checkout-line-status container line-status: liveness is an HTTP request")


@pytest.mark.parametrize("target", [target for target in TARGETS if not target.startswith("dev")])
def test_a_lost_node_s_pods_are_replaced_within_half_a_minute(targets, target):
    assert policy.check_node_loss_tolerations(targets[target].objects) == []


def test_a_deployment_left_to_the_default_five_minutes_on_a_lost_node_is_named(prod):
    objects = copy.deepcopy(prod)
    sweeper = policy.pod_spec(policy.find(objects, "Deployment", "inventory-sweeper"))
    del sweeper["tolerations"]
    admitter = policy.pod_spec(policy.find(objects, "Deployment", "checkout-admitter"))
    admitter["tolerations"][1]["tolerationSeconds"] = 300
    assert policy.check_node_loss_tolerations(objects) == [
        "Deployment/checkout-admitter: does not leave a node tainted node.kubernetes.io/unreachable within 30 s "
        "(a NoExecute toleration with tolerationSeconds)",
        "Deployment/inventory-sweeper: does not leave a node tainted node.kubernetes.io/not-ready within 30 s "
        "(a NoExecute toleration with tolerationSeconds)",
        "Deployment/inventory-sweeper: does not leave a node tainted node.kubernetes.io/unreachable within 30 s "
        "(a NoExecute toleration with tolerationSeconds)"]


@pytest.mark.parametrize("target", ["prod", "drop"])
def test_holds_keep_expiring_when_a_sweeper_pod_goes(targets, target):
    """Production runs two sweepers (they share the expired holds), and a voluntary disruption takes
    one at a time."""
    objects = targets[target].objects
    assert policy.find(objects, "Deployment", "inventory-sweeper")["spec"]["replicas"] == 2
    assert policy.find(objects, "PodDisruptionBudget", "inventory-sweeper")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("target", ["prod", "drop"])
def test_the_admitter_is_sized_for_the_opening(targets, target):
    """At the opening the admitter works beside the APIs: their CPU share, and memory above its peak
    (about 225 MB for a pre-queue of 500,000)."""
    container = policy.pod_spec(policy.find(targets[target].objects, "Deployment", "checkout-admitter"))["containers"][0]
    api = policy.pod_spec(policy.find(targets[target].objects, "Deployment", "checkout-api"))["containers"][0]
    requests = container["resources"]["requests"]
    assert policy.quantity(requests["cpu"]) == policy.quantity(api["resources"]["requests"]["cpu"])
    assert policy.quantity(requests["memory"]) >= 384 * 2**20


def test_an_api_without_its_metrics_port_is_still_refused(dev):
    """The line-status edge serves no /metrics; checkout's API, gunicorn, must still keep it off 8000."""
    import copy

    objects = copy.deepcopy(dev)
    api = policy.pod_spec(policy.find(objects, "Deployment", "checkout-api"))["containers"][0]
    api["env"] = [e for e in api["env"] if e["name"] != "METRICS_BIND"]
    assert ("Deployment/checkout-api container api: no METRICS_BIND: /metrics is served on the public port"
            in policy.check_metrics_port(objects))


@pytest.mark.parametrize("target, expected", [("dev", "http://127.0.0.1:8005"),
                                              ("prod", "https://shop.example.com/api/line-status"),
                                              ("drop", "https://shop.example.com/api/line-status")])
def test_checkout_tells_the_drop_page_where_the_line_status_edge_is(targets, target, expected):
    config = next(c for c in policy.of_kind(targets[target].objects, "ConfigMap")
                  if c["metadata"]["name"].startswith("checkout-config"))
    assert config["data"]["LINE_STATUS_PUBLIC_URL"] == expected
    assert config["data"]["PUBLIC_URL"] != expected


@pytest.mark.parametrize("target", ["dev", "prod", "drop"])
def test_migrations_can_run_before_the_rest_is_applied(targets, target):
    """`kubectl apply -l floodgate.io/apply-first=true` brings the migration Jobs and what they name."""
    objects = targets[target].objects
    first = [o for o in objects if o["metadata"].get("labels", {}).get("floodgate.io/apply-first") == "true"]
    jobs = policy.of_kind(first, "Job")
    assert {j["metadata"]["name"] for j in jobs} == {f"{s}-migrate" for s in policy.FLOODGATE_SERVICES}
    needed = [problem for problem in policy.check_references(first, secrets_provided_outside=True)]
    assert needed == []


@pytest.mark.parametrize("target", ["dev", "prod", "drop"])
def test_spent_refresh_tokens_are_purged_nightly_by_a_job_given_only_the_database(targets, target):
    purge = policy.find(targets[target].objects, "CronJob", "accounts-purge-refresh-tokens")
    assert purge is not None
    assert purge["spec"]["concurrencyPolicy"] == "Forbid" and purge["spec"]["timeZone"] == "Etc/UTC"
    assert not purge["spec"].get("suspend")
    container = policy.pod_spec(purge)["containers"][0]
    assert container["command"] == ["python", "-m", "services.accounts", "purge-refresh-tokens"]
    assert container["image"].split(":")[0].endswith("floodgate/accounts")
    secrets = [e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert len(secrets) == 1 and secrets[0].startswith("accounts-database")  # neither the KEKs nor the broker


def _process_env(container: dict, objects: list[dict]) -> dict[str, str]:
    """What a container's process finds in its environment: its ConfigMaps' values, its own
    values, and a value of its own for each Secret it names (set outside the repository)."""
    maps = {c["metadata"]["name"]: c.get("data", {}) for c in policy.of_kind(objects, "ConfigMap")}
    env = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]] if "configMapRef" in source else {})
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in ref:
            env[entry["name"]] = f"set-outside-the-repository-{entry['name'].lower()}"
        elif "configMapKeyRef" in ref:
            env[entry["name"]] = maps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
    return env


@pytest.mark.parametrize("target", ["prod", "drop"])
def test_every_floodgate_process_starts_in_production_with_what_its_manifest_gives_it(targets, target, monkeypatch):
    """Each process is given only the Secrets it uses, and production refuses a public development
    secret only where it is used: before, checkout's consumer, admitter, relay and line edge and
    accounts' nightly purge stopped at start ("SERVICE_KEY: the development default")."""
    import importlib
    import os

    from shared import processes

    objects = targets[target].objects
    started = []
    for obj in policy.of_kind(objects, *policy.WORKLOADS):
        for _, container, _ in policy.containers(obj):
            command = container.get("command") or []
            image = container["image"].split(":")[0].split("/")[-1]
            if image not in policy.FLOODGATE_SERVICES or command[:3] not in ([], ["python", "-m", f"services.{image}"]):
                continue  # not a service's own process (the drop's floor scaler runs a script)
            kind = processes.kind_of(command[3]) if command else "api"  # the image's command is the API's
            for name in list(os.environ):
                monkeypatch.delenv(name)
            for name, value in _process_env(container, objects).items():
                monkeypatch.setenv(name, value)
            settings = importlib.import_module(f"services.{image}.config").load(kind)  # ConfigError: it stops
            assert not [name for name, public in settings.DEVELOPMENT_SECRETS.items()
                        if getattr(settings, name) == public and settings.deployment_environment == "production"]
            started.append(f"{policy.name_of(obj)} ({kind})")
    assert len(started) >= 17, started  # every Deployment, Job and CronJob of the four services


@pytest.mark.parametrize("target, environment", [("dev", "development"), ("prod", "production"), ("drop", "production")])
def test_accounts_api_takes_its_signing_key_encryption_keys_from_a_secret(targets, target, environment):
    objects = targets[target].objects
    api = policy.pod_spec(policy.find(objects, "Deployment", "accounts-api"))["containers"][0]
    keks = next(e for e in api["env"] if e["name"] == "SIGNING_KEY_ENCRYPTION_KEYS")["valueFrom"]["secretKeyRef"]
    assert keks["name"].startswith("accounts-signing-key-encryption") and keks["key"] == "keys"
    assert not keks.get("optional")  # without it the pod does not start
    for service in ("accounts", "inventory", "checkout", "notifications"):  # production refuses the dev secrets
        config = next(c for c in policy.of_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith(f"{service}-config"))
        assert config["data"]["DEPLOYMENT_ENVIRONMENT"] == environment, service
