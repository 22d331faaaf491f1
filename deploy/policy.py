"""Policy checks over rendered Kubernetes objects: each returns a list of violations (empty = pass).

`make k8s-validate` runs every check on every rendered overlay (deploy/validate.py) and
tests/k8s asserts them one by one, plus the network and drop checks that need to know which
overlay they look at.
"""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Iterable, Iterator

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet")
FLOODGATE_SERVICES = ("accounts", "inventory", "checkout", "notifications")
ROOT = Path(__file__).resolve().parent.parent


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


def check_probes(objects: list[dict]) -> list[str]:
    problems = []
    for obj in of_kind(objects, *LONG_RUNNING):
        for what, c, _ in containers(obj, init=False):
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if not c.get(probe):
                    problems.append(f"{name_of(obj)} container {c['name']}: no {probe}")
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


def check_graceful_shutdown(objects: list[dict]) -> list[str]:
    """Every gunicorn pod pauses before SIGTERM and gets longer than pause + graceful_timeout."""
    problems = []
    graceful = gunicorn_graceful_timeout()
    for obj in of_kind(objects, "Deployment"):
        spec = pod_spec(obj)
        for c in spec["containers"]:
            if not c.get("ports") or not c.get("image", "").split("/")[-1].startswith(FLOODGATE_SERVICES):
                continue
            pause = _prestop_seconds(c)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if pause <= 0:
                problems.append(f"{name_of(obj)} container {c['name']}: no preStop pause")
            if grace <= pause + graceful:
                problems.append(f"{name_of(obj)}: terminationGracePeriodSeconds {grace} <= preStop {pause} s "
                                f"+ gunicorn graceful_timeout {graceful} s")
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
    import base64

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
    return (check_resources(objects) + check_probes(objects) + check_security(objects) + check_images(objects)
            + check_disruption_budgets(objects) + check_topology_spread(objects)
            + check_graceful_shutdown(objects) + check_references(objects, secrets_provided_outside=not dev)
            + check_secrets(objects, dev) + check_default_deny(objects))


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
    """The pod labels of every Floodgate workload (APIs, consumers, relays, sweeper, migrations)."""
    return [pod_labels(o) for o in of_kind(objects, *WORKLOADS)
            if pod_labels(o).get("app.kubernetes.io/name") in FLOODGATE_SERVICES]


# --- the drop --------------------------------------------------------------------------------

def check_drop(objects: list[dict], drop, prod_objects: list[dict]) -> list[str]:
    """The drop overlay against its configuration (a render_drop.Drop) and the prod overlay."""
    from deploy.render_drop import LOWER_JOB, RAISE_JOB, SCALER_ROLE, cron

    problems = []
    for a in drop.autoscalers:
        hpa = find(objects, "HorizontalPodAutoscaler", a.name)
        if hpa is None:
            problems.append(f"no HorizontalPodAutoscaler {a.name}")
            continue
        if hpa["apiVersion"] != "autoscaling/v2":
            problems.append(f"{name_of(hpa)}: not autoscaling/v2")
        spec = hpa["spec"]
        if (spec["minReplicas"], spec["maxReplicas"]) != (a.normal_min, a.max):
            problems.append(f"{name_of(hpa)}: floor/ceiling {spec['minReplicas']}/{spec['maxReplicas']}, "
                            f"drop.yaml says {a.normal_min}/{a.max}")
        up = spec.get("behavior", {}).get("scaleUp", {})
        if up.get("stabilizationWindowSeconds", 0) != 0 or not any(
                p["periodSeconds"] <= 15 for p in up.get("policies", [])):
            problems.append(f"{name_of(hpa)}: scale-up is not immediate (stabilization 0, a policy every <= 15 s)")
        target = find(objects, spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"])
        if target is None:
            problems.append(f"{name_of(hpa)}: scales a workload that is not rendered")
        elif "replicas" in target["spec"]:
            problems.append(f"{name_of(target)}: sets replicas although {name_of(hpa)} owns them")
        prod = find(prod_objects, "Deployment", spec["scaleTargetRef"]["name"])
        prod_replicas = prod["spec"].get("replicas", 1) if prod else 1
        if a.drop_min <= prod_replicas:
            problems.append(f"{a.name}: the drop floor {a.drop_min} does not exceed prod's {prod_replicas} replicas")
        if a.normal_min < prod_replicas:
            problems.append(f"{a.name}: the normal floor {a.normal_min} is below prod's {prod_replicas} replicas")
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
                if queue != topology.work_queue("notifications"):
                    problems.append(f"{name_of(so)}: queue {queue!r} is not notifications' work queue")
    secrets = {o["metadata"]["name"] for o in of_kind(objects, "Secret")}
    for ta in of_kind(objects, "TriggerAuthentication"):
        for ref in ta["spec"].get("secretTargetRef", []):
            if secrets and ref["name"] not in secrets:
                problems.append(f"{name_of(ta)}: Secret {ref['name']} is not rendered")
    return problems
