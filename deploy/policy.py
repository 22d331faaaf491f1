"""Policy checks over rendered Kubernetes objects: each returns a list of violations (empty = pass).

`make k8s-validate` runs every check on every rendered overlay (deploy/validate.py) and
tests/k8s asserts them one by one, plus the network and drop checks that need to know which
overlay they look at.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import re
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlsplit

from shared.heartbeat import reconnecting_file

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet")
FLOODGATE_SERVICES = ("accounts", "inventory", "checkout", "notifications")
ROOT = Path(__file__).resolve().parent.parent
# The oldest release series of an image still supported upstream. RabbitMQ gives community
# support to its newest series only (https://www.rabbitmq.com/release-information): 4.3 since
# April 2026. Raise this when a newer series ships.
OLDEST_SUPPORTED = {"rabbitmq": (4, 3)}


def gunicorn_graceful_timeout() -> int:
    """shared/gunicorn_defaults.py's graceful_timeout, read without importing it (importing it makes a temp dir)."""
    text = (ROOT / "shared" / "gunicorn_defaults.py").read_text()
    return int(re.search(r"^graceful_timeout\s*=\s*(\d+)", text, re.M).group(1))


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_spec(obj: dict) -> dict | None:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if obj["kind"] in WORKLOADS:
        return obj["spec"]["template"]["spec"]
    return None


def pod_labels(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"].get("metadata", {}).get("labels", {})
    return obj["spec"]["template"].get("metadata", {}).get("labels", {})


def containers(obj: dict, init: bool = True) -> Iterator[tuple[str, dict, dict]]:
    """(kind of container, container, pod spec) for every container of a workload."""
    spec = pod_spec(obj)
    if spec is None:
        return
    for c in spec.get("containers", []):
        yield "container", c, spec
    if init:
        for c in spec.get("initContainers", []):
            yield "initContainer", c, spec


def is_floodgate_image(image: str) -> bool:
    return image.split("/")[-1].startswith(FLOODGATE_SERVICES)


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", []) if "value" in e}


def of_kind(objects: Iterable[dict], *kinds: str) -> list[dict]:
    return [o for o in objects if o.get("kind") in kinds]


def find(objects: Iterable[dict], kind: str, name: str) -> dict | None:
    return next((o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name), None)


# --- every container -------------------------------------------------------------------------

def check_resources(objects: list[dict]) -> list[str]:
    problems = []
    for obj in of_kind(objects, *WORKLOADS):
        for what, c, _ in containers(obj):
            res = c.get("resources", {})
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in res.get(section, {}):
                        problems.append(f"{name_of(obj)} {what} {c['name']}: no {section}.{resource}")
    return problems


# What the dev overlay's long-running pods may request together: half of a 2-CPU, 4 GiB laptop
# node (minikube's default CPUs), leaving the cluster's own pods (about 0.75 CPU on minikube) and
# the migration Jobs room.
DEV_NODE_BUDGET = {"cpu": 1.0, "memory": 2 * 2**30}
_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|Ki|Mi|Gi|Ti)?$")
_SUFFIX = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value) -> float:
    """A Kubernetes quantity as a number: CPUs ("250m" is 0.25), bytes ("128Mi")."""
    match = _QUANTITY.match(str(value))
    if match is None:
        raise ValueError(f"not a quantity this check reads: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def requested(objects: list[dict]) -> dict[str, float]:
    """What the long-running pods request together (CPUs, bytes), each workload times its replicas:
    what a node must have free for all of them to be scheduled."""
    total = {"cpu": 0.0, "memory": 0.0}
    for obj in of_kind(objects, *LONG_RUNNING):
        replicas = obj["spec"].get("replicas", 1)
        replicas = replicas if isinstance(replicas, int) else 1  # the schema check reports it
        for resource in total:
            asked = {what: [] for what in ("container", "initContainer")}
            for what, container, _ in containers(obj):
                asked[what].append(quantity(container.get("resources", {}).get("requests", {}).get(resource, 0)))
            # init containers run one at a time, before the others: the scheduler counts the most of either
            total[resource] += replicas * max(sum(asked["container"]), max(asked["initContainer"], default=0))
    return total


def check_fits_dev_node(objects: list[dict]) -> list[str]:
    try:
        total = requested(objects)
    except ValueError as unreadable:
        return [f"the dev budget cannot be checked: {unreadable}"]
    shown = {"cpu": lambda cpus: f"{cpus:.2f} CPUs", "memory": lambda size: f"{size / 2**20:.0f} MiB"}
    return [f"the long-running pods request {shown[resource](total[resource])} together, over the dev budget of "
            f"{shown[resource](DEV_NODE_BUDGET[resource])}: a laptop cluster would leave some Pending"
            for resource in total if total[resource] > DEV_NODE_BUDGET[resource]]


# Deployments whose HTTP server queues a request behind those before it: the gunicorn APIs'
# threaded workers, and checkout's line-status edge's one event loop.
QUEUEING_SERVERS = ("api", "line-status")


def check_probes(objects: list[dict]) -> list[str]:
    """Every long-running container has all three probes; a gunicorn API's or the line-status
    edge's liveness probe is its port taking connections, not an HTTP request, which would wait
    behind the requests before it and restart a pod for being busy (the process only: readiness
    says whether it should serve, and gunicorn restarts a hung worker itself)."""
    problems = []
    for obj in of_kind(objects, *LONG_RUNNING):
        queueing = obj["kind"] == "Deployment" and obj["metadata"].get("labels", {}).get(
            "app.kubernetes.io/component") in QUEUEING_SERVERS
        for what, c, _ in containers(obj, init=False):
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if not c.get(probe):
                    problems.append(f"{name_of(obj)} container {c['name']}: no {probe}")
            if queueing and "httpGet" in c.get("livenessProbe", {}):
                problems.append(f"{name_of(obj)} container {c['name']}: liveness is an HTTP request, which waits "
                                "behind the worker's queued requests (probe the port: tcpSocket)")
    return problems


def check_security(objects: list[dict]) -> list[str]:
    problems = []
    for obj in of_kind(objects, *WORKLOADS):
        for what, c, spec in containers(obj):
            pod_sc, sc = spec.get("securityContext", {}), c.get("securityContext", {})
            where = f"{name_of(obj)} {what} {c['name']}"
            if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) in (0, None):
                problems.append(f"{where}: no non-zero runAsUser")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities not all dropped")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: no RuntimeDefault seccomp profile")
    return problems


def check_images(objects: list[dict]) -> list[str]:
    problems = []
    for obj in of_kind(objects, *WORKLOADS):
        for what, c, _ in containers(obj):
            image = c.get("image", "")
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if "@sha256:" not in image and tag in ("", "latest"):
                problems.append(f"{name_of(obj)} {what} {c['name']}: image {image!r} has no pinned tag")
    return problems


def check_supported_images(objects: list[dict]) -> list[str]:
    """No image of a release series its maintainers no longer support (OLDEST_SUPPORTED)."""
    problems = []
    for obj in of_kind(objects, *WORKLOADS):
        for what, c, _ in containers(obj):
            repository, _, tag = c.get("image", "").split("@")[0].rpartition("/")[2].partition(":")
            oldest = OLDEST_SUPPORTED.get(repository)
            series = re.match(r"(\d+)\.(\d+)", tag)
            if oldest and (series is None or tuple(map(int, series.groups())) < oldest):
                problems.append(f"{name_of(obj)} {what} {c['name']}: image {c['image']!r} is older than the "
                                f"oldest supported {repository} series {'.'.join(map(str, oldest))}")
    return problems


# An HTTP readiness probe queues behind the crowd's requests: 10 s and three failures at the least
READINESS_PATIENCE_SECONDS = 30


def check_readiness(objects: list[dict]) -> list[str]:
    """Floodgate's readiness probes ask the real question: an API whether it can serve (/readyz), a
    process without HTTP (consumer, relay, sweeper) whether its loop turns (shared.heartbeat on
    its HEARTBEAT_FILE), not merely whether its process exists.

    A relay or consumer waiting to reconnect beats `reconnecting_file(HEARTBEAT_FILE)` instead:
    its liveness probe must accept that file (else every broker outage restarts it) and its
    readiness probe must not (else a rollout that cannot connect replaces working pods)."""
    problems = []
    for obj in of_kind(objects, *LONG_RUNNING):
        for _, c, _ in containers(obj, init=False):
            if not is_floodgate_image(c.get("image", "")):
                continue
            probe = c.get("readinessProbe") or {}
            where = f"{name_of(obj)} container {c['name']}"
            if c.get("ports"):
                if probe.get("httpGet", {}).get("path") != "/readyz":
                    problems.append(f"{where}: readiness probe is not GET /readyz")
                patience = probe.get("timeoutSeconds", 1) * probe.get("failureThreshold", 3)
                if patience < READINESS_PATIENCE_SECONDS:
                    problems.append(f"{where}: readiness probe gives up after {patience} s (timeoutSeconds x "
                                    f"failureThreshold), under {READINESS_PATIENCE_SECONDS}: it waits behind the "
                                    "requests before it, and a rush would take every pod out of the Service at once")
                continue
            command = probe.get("exec", {}).get("command", [])
            heartbeat = env_of(c).get("HEARTBEAT_FILE")
            if command[:3] != ["python", "-m", "shared.heartbeat"] or heartbeat is None or heartbeat not in command:
                problems.append(f"{where}: readiness probe does not check the loop's heartbeat "
                                f"(python -m shared.heartbeat $HEARTBEAT_FILE): {command}")
                continue
            reconnecting = reconnecting_file(heartbeat)
            if reconnecting in command:
                problems.append(f"{where}: readiness probe accepts {reconnecting}, which a pod that cannot "
                                "reach the broker beats")
            liveness = (c.get("livenessProbe") or {}).get("exec", {}).get("command", [])
            if c.get("command", [])[-1:] in (["relay"], ["consumer"]) and reconnecting not in liveness:
                problems.append(f"{where}: liveness probe does not accept {reconnecting}: every broker "
                                "outage would restart it")
    return problems


def is_api(obj: dict) -> bool:
    """A Floodgate API's workload: pods labelled component `api` (gunicorn, with /metrics), as the
    NetworkPolicies and the PodMonitor select them; not checkout's line-status edge, for one."""
    labels = pod_labels(obj)
    return (labels.get("app.kubernetes.io/component") == "api"
            and labels.get("app.kubernetes.io/name") in FLOODGATE_SERVICES)


def is_scraped(obj: dict) -> bool:
    """A workload Prometheus scrapes: every API, and checkout's line-status edge."""
    labels = pod_labels(obj)
    return is_api(obj) or (labels.get("app.kubernetes.io/name"), labels.get("app.kubernetes.io/component")) == (
        "checkout", "line-status")


def check_metrics_port(objects: list[dict]) -> list[str]:
    """Every Floodgate API, and checkout's line-status edge, serves /metrics on a port of its own
    (METRICS_BIND), named `metrics`, announced to Prometheus by the pod's annotations and published
    by no Service: only the monitoring namespace reaches it (see the NetworkPolicy
    apis-metrics-from-monitoring)."""
    problems = []
    services = of_kind(objects, "Service")
    for obj in filter(is_scraped, of_kind(objects, "Deployment")):
        for _, c, _ in containers(obj, init=False):
            if not c.get("ports") or not is_floodgate_image(c.get("image", "")):
                continue
            where = f"{name_of(obj)} container {c['name']}"
            bind = env_of(c).get("METRICS_BIND") or ""
            port = int(bind.rpartition(":")[2]) if bind.rpartition(":")[2].isdigit() else None
            named = {p.get("name"): p["containerPort"] for p in c["ports"]}
            if port is None:
                problems.append(f"{where}: no METRICS_BIND: /metrics is served on the public port")
                continue
            if named.get("metrics") != port:
                problems.append(f"{where}: METRICS_BIND {bind} but container port `metrics` is {named.get('metrics')}")
            annotations = obj["spec"]["template"].get("metadata", {}).get("annotations", {})
            expected = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
            if {k: annotations.get(k) for k in expected} != expected:
                problems.append(f"{name_of(obj)}: pod annotations do not announce /metrics on port {port} to Prometheus")
            for svc in services:
                if svc["metadata"].get("namespace") == obj["metadata"].get("namespace") and _selects(
                        {"matchLabels": svc["spec"].get("selector", {})}, pod_labels(obj)):
                    for sp in svc["spec"].get("ports", []):
                        if sp.get("targetPort") in ("metrics", port):
                            problems.append(f"{name_of(svc)}: publishes {name_of(obj)}'s metrics port")
    return problems


# --- every Deployment ------------------------------------------------------------------------

def _selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels and matchExpressions) against a set of labels."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_disruption_budgets(objects: list[dict]) -> list[str]:
    problems = []
    pdbs = of_kind(objects, "PodDisruptionBudget")
    for obj in of_kind(objects, "Deployment", "StatefulSet"):
        namespace = obj["metadata"].get("namespace")
        labels = pod_labels(obj)
        if not any(p["metadata"].get("namespace") == namespace and _selects(p["spec"].get("selector"), labels)
                   for p in pdbs):
            problems.append(f"{name_of(obj)}: no PodDisruptionBudget selects its pods")
    return problems


def check_topology_spread(objects: list[dict]) -> list[str]:
    problems = []
    for obj in of_kind(objects, "Deployment"):
        constraints = pod_spec(obj).get("topologySpreadConstraints", [])
        if not any(_selects(t.get("labelSelector"), pod_labels(obj)) for t in constraints):
            problems.append(f"{name_of(obj)}: no topology spread constraint over its own pods")
    return problems


def _prestop_seconds(container: dict) -> int:
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] == "sleep":
        return int(command[1])
    return 0


# What the API server gives a pod that names no toleration of its own (DefaultTolerationSeconds):
# 300 s on a node that stopped answering before the pod is replaced elsewhere.
NODE_LOSS_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
NODE_LOSS_SECONDS = 30


def check_node_loss_tolerations(objects: list[dict]) -> list[str]:
    """Every Floodgate Deployment's pods leave a node that stops answering within NODE_LOSS_SECONDS
    (prod and the drop: a lost node must not stop hold expiry, the line or a PgBouncer for minutes)."""
    problems = []
    for obj in of_kind(objects, "Deployment"):
        if pod_labels(obj).get("app.kubernetes.io/name") not in FLOODGATE_SERVICES:
            continue
        tolerations = pod_spec(obj).get("tolerations", [])
        for taint in NODE_LOSS_TAINTS:
            seconds = [t.get("tolerationSeconds") for t in tolerations
                       if t.get("key") == taint and t.get("effect") == "NoExecute"]
            if not seconds or any(s is None or s > NODE_LOSS_SECONDS for s in seconds):
                problems.append(f"{name_of(obj)}: does not leave a node tainted {taint} within "
                                f"{NODE_LOSS_SECONDS} s (a NoExecute toleration with tolerationSeconds)")
    return problems


def check_graceful_shutdown(objects: list[dict]) -> list[str]:
    """Every gunicorn pod pauses before SIGTERM and gets longer than pause + graceful_timeout."""
    problems = []
    graceful = gunicorn_graceful_timeout()
    for obj in of_kind(objects, "Deployment"):
        spec = pod_spec(obj)
        for c in spec["containers"]:
            if not c.get("ports") or not is_floodgate_image(c.get("image", "")):
                continue
            pause = _prestop_seconds(c)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if pause <= 0:
                problems.append(f"{name_of(obj)} container {c['name']}: no preStop pause")
            if grace <= pause + graceful:
                problems.append(f"{name_of(obj)}: terminationGracePeriodSeconds {grace} <= preStop {pause} s "
                                f"+ gunicorn graceful_timeout {graceful} s")
    return problems


def check_autoscalers(objects: list[dict]) -> list[str]:
    """Every HorizontalPodAutoscaler works as rendered: autoscaling/v2, a rendered target that leaves
    its replica count to the autoscaler (one that names a count fights it at every apply), and a
    real range (not the 1/1 a placeholder would pin the API at)."""
    problems = []
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        spec = hpa["spec"]
        if hpa["apiVersion"] != "autoscaling/v2":
            problems.append(f"{name_of(hpa)}: not autoscaling/v2")
        ref = spec["scaleTargetRef"]
        target = find(objects, ref["kind"], ref["name"])
        if target is None:
            problems.append(f"{name_of(hpa)}: scales a workload that is not rendered")
        elif "replicas" in target["spec"]:
            problems.append(f"{name_of(target)}: sets replicas although {name_of(hpa)} owns them")
        low, high = spec.get("minReplicas", 1), spec["maxReplicas"]
        if low < 2:
            problems.append(f"{name_of(hpa)}: minReplicas {low} leaves the service to one pod")
        if high <= low:
            problems.append(f"{name_of(hpa)}: maxReplicas {high} leaves no room above minReplicas {low}")
    return problems


def check_references(objects: list[dict], secrets_provided_outside: bool) -> list[str]:
    """ConfigMaps, Secrets and ServiceAccounts a pod names exist (Secrets may be the operator's)."""
    problems = []
    present = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for obj in of_kind(objects, *WORKLOADS):
        spec = pod_spec(obj)
        wanted = []
        account = spec.get("serviceAccountName")
        if account:
            wanted.append(("ServiceAccount", account))
        for _, c, _ in containers(obj):
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    wanted.append(("ConfigMap", source["configMapRef"]["name"]))
                if "secretRef" in source:
                    wanted.append(("Secret", source["secretRef"]["name"]))
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    wanted.append(("ConfigMap", ref["configMapKeyRef"]["name"]))
                if "secretKeyRef" in ref and not ref["secretKeyRef"].get("optional"):
                    wanted.append(("Secret", ref["secretKeyRef"]["name"]))
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                wanted.append(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                wanted.append(("Secret", volume["secret"]["secretName"]))
            for source in volume.get("projected", {}).get("sources", []):
                if "configMap" in source:
                    wanted.append(("ConfigMap", source["configMap"]["name"]))
                if "secret" in source:
                    wanted.append(("Secret", source["secret"]["name"]))
        for kind, name in wanted:
            if kind == "Secret" and secrets_provided_outside:
                continue
            if (kind, name) not in present:
                problems.append(f"{name_of(obj)}: names {kind} {name}, which is not rendered")
    return problems


def check_secrets(objects: list[dict], dev: bool) -> list[str]:
    """No Secret values outside dev; dev's are public development values, labelled as such."""
    problems = []
    for s in of_kind(objects, "Secret"):
        if not dev:
            problems.append(f"{name_of(s)}: a Secret is rendered from the repository")
            continue
        if s["metadata"].get("labels", {}).get("floodgate.io/dev-only") != "true":
            problems.append(f"{name_of(s)}: not labelled floodgate.io/dev-only")
        for key, value in s.get("data", {}).items():
            plain = base64.b64decode(value).decode()
            if plain and "dev-only" not in plain:
                problems.append(f"{name_of(s)} key {key}: a value that is not marked dev-only")
    return problems


def check_all(objects: list[dict], dev: bool) -> list[str]:
    """Every overlay-independent policy."""
    return (check_resources(objects) + check_probes(objects) + check_readiness(objects) + check_security(objects)
            + check_images(objects) + check_supported_images(objects) + check_metrics_port(objects)
            + check_disruption_budgets(objects) + check_topology_spread(objects)
            + check_graceful_shutdown(objects) + check_autoscalers(objects)
            + check_references(objects, secrets_provided_outside=not dev)
            + check_secrets(objects, dev) + check_default_deny(objects) + check_egress_peers(objects)
            + (check_fits_dev_node(objects) if dev else check_node_loss_tolerations(objects)))


# --- network ---------------------------------------------------------------------------------

def check_default_deny(objects: list[dict]) -> list[str]:
    namespaces = {o["metadata"].get("namespace") for o in objects if pod_spec(o) is not None}
    problems = []
    for namespace in namespaces:
        if not any(p["metadata"].get("namespace") == namespace and p["spec"].get("podSelector") == {}
                   and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes", [])) and not p["spec"].get("ingress")
                   and not p["spec"].get("egress") for p in of_kind(objects, "NetworkPolicy")):
            problems.append(f"namespace {namespace}: no default-deny NetworkPolicy for ingress and egress")
    return problems


def check_egress_peers(objects: list[dict]) -> list[str]:
    """Every egress rule names where it goes (`to`): a rule without peers allows every address."""
    problems = []
    for p in of_kind(objects, "NetworkPolicy"):
        for number, rule in enumerate(p["spec"].get("egress", []), start=1):
            if not rule.get("to"):
                problems.append(f"{name_of(p)}: egress rule {number} has no `to`: it allows any address")
    return problems


def _peer_matches(peer: dict, labels: dict, namespace_labels: dict, same_namespace: bool, ip: str | None) -> bool:
    if "ipBlock" in peer:
        if ip is None:
            return False
        block = peer["ipBlock"]
        address = ipaddress.ip_address(ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", []))
    if ip is not None:
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif not same_namespace:
        return False
    return "podSelector" not in peer or _selects(peer["podSelector"], labels)


def _port_matches(rule: dict, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == protocol and (p.get("port") is None or p.get("port") == port
               or (p.get("endPort") and p["port"] <= port <= p["endPort"])) for p in ports)


def egress_allowed(objects: list[dict], source: dict, port: int, *, to_labels: dict | None = None,
                   to_ip: str | None = None, to_namespace_labels: dict | None = None,
                   protocol: str = "TCP", namespace: str = "floodgate") -> bool:
    """May pods labelled `source` open a connection to the peer? (Egress side only.)"""
    policies = [p for p in of_kind(objects, "NetworkPolicy") if p["metadata"].get("namespace") == namespace
                and "Egress" in p["spec"].get("policyTypes", []) and _selects(p["spec"]["podSelector"], source)]
    if not policies:
        return True
    same_namespace = to_namespace_labels is None
    ns_labels = to_namespace_labels or {"kubernetes.io/metadata.name": namespace}
    for p in policies:
        for rule in p["spec"].get("egress", []):
            peers = rule.get("to")
            if _port_matches(rule, port, protocol) and (
                    not peers or any(_peer_matches(peer, to_labels or {}, ns_labels, same_namespace, to_ip)
                                     for peer in peers)):
                return True
    return False


def ingress_allowed(objects: list[dict], source: dict, destination: dict, port: int,
                    namespace: str = "floodgate", source_namespace_labels: dict | None = None) -> bool:
    """May pods labelled `destination` accept a connection from pods labelled `source`?

    The source is in the same namespace unless `source_namespace_labels` names another's labels.
    """
    same_namespace = source_namespace_labels is None
    ns_labels = source_namespace_labels or {"kubernetes.io/metadata.name": namespace}
    policies = [p for p in of_kind(objects, "NetworkPolicy") if p["metadata"].get("namespace") == namespace
                and "Ingress" in p["spec"].get("policyTypes", []) and _selects(p["spec"]["podSelector"], destination)]
    if not policies:
        return True
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            peers = rule.get("from")
            if _port_matches(rule, port, "TCP") and (
                    not peers or any(_peer_matches(peer, source, ns_labels, same_namespace, None)
                                     for peer in peers)):
                return True
    return False


def reachable(objects: list[dict], source: dict, destination: dict, port: int) -> bool:
    """Both sides' policies allow pods `source` -> pods `destination`:port in the same namespace."""
    return (egress_allowed(objects, source, port, to_labels=destination)
            and ingress_allowed(objects, source, destination, port))


def floodgate_pods(objects: list[dict]) -> list[dict]:
    """The pod labels of every Floodgate workload (APIs, consumers, relays, sweeper, migrations),
    not the services' PgBouncers."""
    return [pod_labels(o) for o in of_kind(objects, *WORKLOADS)
            if pod_labels(o).get("app.kubernetes.io/name") in FLOODGATE_SERVICES
            and pod_labels(o).get("app.kubernetes.io/component") != "pgbouncer"]


# --- the drop --------------------------------------------------------------------------------

def check_drop(objects: list[dict], drop, prod_objects: list[dict], at) -> list[str]:
    """The drop overlay, rendered for moment `at`, against its configuration (a render_drop.Drop)
    and the prod overlay, whose autoscalers it shares."""
    from deploy.render_drop import LOWER_JOB, RAISE_JOB, SCALER_ROLE, VALID_FROM, VALID_UNTIL, cron

    problems = []
    valid_from, valid_until = drop.floors_period(at)
    period = {VALID_FROM: valid_from and valid_from.isoformat(), VALID_UNTIL: valid_until and valid_until.isoformat()}
    for a in drop.autoscalers:
        hpa = find(objects, "HorizontalPodAutoscaler", a.name)
        if hpa is None:
            problems.append(f"no HorizontalPodAutoscaler {a.name}")
            continue
        spec = hpa["spec"]
        floor = drop.floor(a, at)
        if (spec["minReplicas"], spec["maxReplicas"]) != (floor, a.max):
            problems.append(f"{name_of(hpa)}: floor/ceiling {spec['minReplicas']}/{spec['maxReplicas']}, "
                            f"drop.yaml says {floor}/{a.max} at {at.isoformat()}")
        annotations = hpa["metadata"].get("annotations", {})
        if {k: annotations.get(k) for k in period} != period:
            problems.append(f"{name_of(hpa)}: floors valid {annotations.get(VALID_FROM)} - {annotations.get(VALID_UNTIL)}, "
                            f"the schedule says {period[VALID_FROM]} - {period[VALID_UNTIL]}")
        up = spec.get("behavior", {}).get("scaleUp", {})
        if up.get("stabilizationWindowSeconds", 0) != 0 or not any(
                p["periodSeconds"] <= 15 for p in up.get("policies", [])):
            problems.append(f"{name_of(hpa)}: scale-up is not immediate (stabilization 0, a policy every <= 15 s)")
        prod = find(prod_objects, "HorizontalPodAutoscaler", a.name)
        if prod is None:
            problems.append(f"{a.name}: prod has no such autoscaler")
            continue
        prod_range = (prod["spec"]["minReplicas"], prod["spec"]["maxReplicas"])
        if prod_range != (a.normal_min, a.max):
            problems.append(f"{a.name}: prod's floor/ceiling {prod_range[0]}/{prod_range[1]}, drop.yaml's normal_min/max "
                            f"{a.normal_min}/{a.max}")
        if a.drop_min <= prod_range[0]:
            problems.append(f"{a.name}: the drop floor {a.drop_min} does not exceed prod's floor {prod_range[0]}")
    for job_name, when, floors in (
        (RAISE_JOB, drop.raise_at, {a.name: a.drop_min for a in drop.autoscalers}),
        (LOWER_JOB, drop.lower_at, {a.name: a.normal_min for a in drop.autoscalers}),
    ):
        job = find(objects, "CronJob", job_name)
        if job is None:
            problems.append(f"no CronJob {job_name}")
            continue
        spec = job["spec"]
        if spec["schedule"] != cron(when) or spec.get("timeZone") != "Etc/UTC" or spec.get("suspend"):
            problems.append(f"{name_of(job)}: schedule {spec['schedule']!r} ({spec.get('timeZone')}, suspend "
                            f"{spec.get('suspend')}), expected {cron(when)!r} Etc/UTC for {when.isoformat()}")
        args = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].get("args", [])
        expected = [when.date().isoformat()] + [f"{n}={f}" for n, f in floors.items()]
        if args != expected:
            problems.append(f"{name_of(job)}: args {args}, expected {expected}")
    role = find(objects, "Role", SCALER_ROLE)
    names = sorted(a.name for a in drop.autoscalers)
    if role is None:
        problems.append(f"no Role {SCALER_ROLE}")
    else:
        for rule in role["rules"]:
            if (rule.get("verbs") != ["patch"] or rule.get("apiGroups") != ["autoscaling"]
                    or rule.get("resources") != ["horizontalpodautoscalers"]
                    or sorted(rule.get("resourceNames", [])) != names):
                problems.append(f"{name_of(role)}: rule {rule} grants more than patch on {names}")
    return problems


# --- KEDA (its CRDs have no schema in kubernetes-validate) -----------------------------------

def check_keda(objects: list[dict]) -> list[str]:
    from shared.messaging import topology

    problems = []
    for so in of_kind(objects, "ScaledObject"):
        target = find(objects, "Deployment", so["spec"]["scaleTargetRef"]["name"])
        if target is None:
            problems.append(f"{name_of(so)}: scales a Deployment that is not rendered")
        elif "replicas" in target["spec"]:
            problems.append(f"{name_of(target)}: sets replicas although {name_of(so)} owns them")
        if not 0 <= so["spec"].get("minReplicaCount", 0) <= so["spec"].get("maxReplicaCount", 100):
            problems.append(f"{name_of(so)}: minReplicaCount above maxReplicaCount")
        for trigger in so["spec"]["triggers"]:
            auth = trigger.get("authenticationRef", {}).get("name")
            if auth and find(objects, "TriggerAuthentication", auth) is None:
                problems.append(f"{name_of(so)}: TriggerAuthentication {auth} is not rendered")
            if trigger["type"] == "rabbitmq":
                queue = trigger["metadata"].get("queueName")
                if queue not in topology.waiting_queues("notifications"):
                    problems.append(f"{name_of(so)}: queue {queue!r} is not notifications' work queue or "
                                    "returned lane")
    secrets = {o["metadata"]["name"]: o for o in of_kind(objects, "Secret")}
    for ta in of_kind(objects, "TriggerAuthentication"):
        for ref in ta["spec"].get("secretTargetRef", []):
            if secrets and ref["name"] not in secrets:
                problems.append(f"{name_of(ta)}: Secret {ref['name']} is not rendered")
            elif ref["name"] in secrets and ref["parameter"] == "host":
                problems += _broker_host_problems(ta, secrets[ref["name"]], ref["key"], objects)
    return problems


def _broker_host_problems(ta: dict, secret: dict, key: str, objects: list[dict]) -> list[str]:
    """KEDA's operator opens the broker URL itself, from its own namespace (keda): a short Service
    name, which resolves only inside Floodgate's namespace, does not reach the broker from there."""
    value = base64.b64decode(secret.get("data", {}).get(key, "")).decode()
    where = f"{name_of(ta)}: Secret {secret['metadata']['name']} key {key}"
    if "," in value:
        return [f"{where}: KEDA's rabbitmq scaler takes one broker address, not a list"]
    host = urlsplit(value).hostname or ""
    try:
        ipaddress.ip_address(host)
        return []
    except ValueError:
        pass
    labels = host.split(".")
    namespace = secret["metadata"].get("namespace")
    service = next((o for o in of_kind(objects, "Service") if o["metadata"]["name"] == labels[0]
                    and o["metadata"].get("namespace") == namespace), None)
    if len(labels) == 1:
        return [f"{where}: broker host {host!r} is a short name, which KEDA's operator cannot resolve from its "
                f"namespace: use {host}.{namespace}.svc"]
    if service is not None and labels[1] != namespace:
        return [f"{where}: broker host {host!r} names namespace {labels[1]!r}, but Service {labels[0]} is in {namespace!r}"]
    return []


# --- monitoring (deploy/k8s/components/monitoring; the Prometheus Operator's CRDs) ------------

def check_monitoring(objects: list[dict]) -> list[str]:
    """The PrometheusRule is the rules file, the PodMonitor scrapes every API's (and the line
    edge's) metrics port (a
    port that only the monitoring namespace reaches, on the pods: no Service publishes it), and
    the dashboard ConfigMap holds JSON and Grafana's label."""
    from deploy import monitoring

    problems = []
    rules = of_kind(objects, "PrometheusRule")
    if [r["spec"] for r in rules] != [monitoring.rules()]:
        problems.append(f"PrometheusRule differs from {monitoring.RULES.relative_to(monitoring.ROOT)}: "
                        "run `python -m deploy.monitoring`")
    problems += monitoring.overwritten_labels(monitoring.defined_metrics())
    apis = list(filter(is_scraped, of_kind(objects, "Deployment")))
    monitors = of_kind(objects, "PodMonitor")
    if not monitors:
        problems.append("no PodMonitor")
    for monitor in monitors:
        selected = [d for d in apis if d["metadata"].get("namespace") == monitor["metadata"].get("namespace")
                    and _selects(monitor["spec"]["selector"], pod_labels(d))]
        if {name_of(d) for d in selected} != {name_of(d) for d in apis}:
            problems.append(f"{name_of(monitor)}: scrapes {sorted(name_of(d) for d in selected)}, "
                            f"not every API {sorted(name_of(d) for d in apis)}")
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for api in selected:
                ports = {p.get("name"): p["containerPort"] for _, c, _ in containers(api, init=False)
                         for p in c.get("ports", [])}
                port = ports.get(endpoint.get("port"))
                if port is None:
                    problems.append(f"{name_of(monitor)}: {name_of(api)} has no port named {endpoint.get('port')!r}")
                elif not ingress_allowed(objects, {}, pod_labels(api), port,
                                         namespace=api["metadata"].get("namespace", "floodgate"),
                                         source_namespace_labels={"floodgate.io/monitoring": "true"}):
                    problems.append(f"{name_of(monitor)}: the monitoring namespace cannot reach {name_of(api)}:{port}")
                elif ingress_allowed(objects, {}, pod_labels(api), port,
                                     namespace=api["metadata"].get("namespace", "floodgate"),
                                     source_namespace_labels={"floodgate.io/edge": "true"}):
                    problems.append(f"{name_of(monitor)}: {name_of(api)}:{port} is reachable from the edge")
    dashboards = [c for c in of_kind(objects, "ConfigMap") if "grafana_dashboard" in c["metadata"].get("labels", {})]
    if not dashboards:
        problems.append("no ConfigMap labelled grafana_dashboard")
    for config_map in dashboards:
        for key, text in config_map.get("data", {}).items():
            try:
                json.loads(text)
            except ValueError as error:
                problems.append(f"{name_of(config_map)}: {key} is not JSON: {error}")
    return problems


# --- tracing (deploy/k8s/components/tracing; an OpenTelemetry Collector) ----------------------

COLLECTOR = "otel-collector"
OTLP_HTTP_PORT = 4318
# Floodgate's processes that do an order's work, and so trace it (shared/tracing.py)
TRACED_COMPONENTS = ("api", "consumer", "relay", "sweeper", "admitter")


def check_tracing(objects: list[dict]) -> list[str]:
    """Every Floodgate process that traces is told the collector's Service (OTEL_EXPORTER_OTLP_ENDPOINT)
    and reaches it on 4318, nothing from outside the namespace does, and the collector receives
    OTLP/HTTP there and exports to the log and to an OTLP backend."""
    import yaml

    problems = []
    service = find(objects, "Service", COLLECTOR)
    collectors = [d for d in of_kind(objects, "Deployment") if service is not None
                  and d["metadata"].get("namespace") == service["metadata"].get("namespace")
                  and _selects({"matchLabels": service["spec"]["selector"]}, pod_labels(d))]
    if service is None or len(collectors) != 1:
        return [f"no Service {COLLECTOR} selecting one collector Deployment"]
    collector, = collectors
    if OTLP_HTTP_PORT not in [p.get("port") for p in service["spec"]["ports"]]:
        problems.append(f"{name_of(service)}: does not publish {OTLP_HTTP_PORT}")
    endpoint = f"http://{COLLECTOR}:{OTLP_HTTP_PORT}"
    for obj in of_kind(objects, "Deployment"):
        labels = pod_labels(obj)
        if labels.get("app.kubernetes.io/name") not in FLOODGATE_SERVICES:
            continue
        traced = labels.get("app.kubernetes.io/component") in TRACED_COMPONENTS
        told = [env_of(c).get("OTEL_EXPORTER_OTLP_ENDPOINT") for _, c, _ in containers(obj, init=False)]
        if traced and told != [endpoint]:
            problems.append(f"{name_of(obj)}: OTEL_EXPORTER_OTLP_ENDPOINT is {told}, not [{endpoint!r}]")
        if traced and not reachable(objects, labels, pod_labels(collector), OTLP_HTTP_PORT):
            problems.append(f"{name_of(obj)}: cannot reach {name_of(collector)}:{OTLP_HTTP_PORT}")
    for outside in ({"floodgate.io/edge": "true"}, {"floodgate.io/monitoring": "true"}):
        if ingress_allowed(objects, {}, pod_labels(collector), OTLP_HTTP_PORT,
                           namespace=collector["metadata"].get("namespace", "floodgate"), source_namespace_labels=outside):
            problems.append(f"{name_of(collector)}:{OTLP_HTTP_PORT} is reachable from namespaces labelled {outside}")
    for volume in pod_spec(collector).get("volumes", []):
        config_map = find(objects, "ConfigMap", volume.get("configMap", {}).get("name", ""))
        for key, text in (config_map or {}).get("data", {}).items():
            config = yaml.safe_load(text)
            pipeline = config.get("service", {}).get("pipelines", {}).get("traces", {})
            http = config.get("receivers", {}).get("otlp", {}).get("protocols", {}).get("http") or {}
            if "otlp" not in pipeline.get("receivers", []) or not str(http.get("endpoint", "")).endswith(
                    f":{OTLP_HTTP_PORT}"):
                problems.append(f"{name_of(config_map)}: {key}: the traces pipeline does not receive OTLP/HTTP "
                                f"on {OTLP_HTTP_PORT}")
            exporters = pipeline.get("exporters", [])
            if "debug" not in exporters or not any(e.split("/")[0] == "otlphttp" for e in exporters):
                problems.append(f"{name_of(config_map)}: {key}: the traces pipeline exports to {exporters}, "
                                "not to the log (debug) and a backend (otlphttp)")
    return problems
