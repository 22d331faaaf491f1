"""A model of what the Kubernetes API server (and kubectl around it) does with the fields drop day
depends on, for running the runbook's apply commands without a cluster (test_apply_paths.py).

Three fields are modelled, each with its value and its owners (field manager, operation) as in
metadata.managedFields: a Deployment's spec.replicas (defaulted to 1), a HorizontalPodAutoscaler's
spec.minReplicas (defaulted to 1) and spec.maxReplicas. The rules are those Kubernetes documents
for server-side apply (https://kubernetes.io/docs/reference/using-api/server-side-apply/):

- Server-side apply by manager M: a field the manifest sets gets that value and M as an owner,
  shared with whoever owns the same value; when another owner holds a different value the object is
  refused (a conflict) unless forced, and then M alone owns it. A field M owned and the manifest no
  longer sets loses M; once nobody owns it, it is removed and the API server defaults it. Afterwards
  kubectl turns what kubectl-client-side-apply owned into M's (apply.go, migrateToSSAIfNecessary:
  every apply --server-side does it, whatever --field-manager says).
- Client-side apply (`kubectl apply`): a three-way merge with the last-applied-configuration
  annotation: a field in the manifest is set (an Update by kubectl-client-side-apply); a field in the
  annotation but not in the manifest is deleted, hence defaulted.
- An Update that changes a value (the HPA controller through /scale, the drop scaler's merge patch,
  `kubectl scale`) leaves its manager the only owner; an Update that changes nothing changes no owner.
- The HPA controller, as time passes (`settle`), keeps replicas within [minReplicas, maxReplicas];
  load is not modelled, so within the range it changes nothing. KEDA's operator keeps an HPA
  keda-hpa-<target> in line with each ScaledObject.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from deploy import apply

CLIENT_SIDE = "kubectl-client-side-apply"
HPA_CONTROLLER = "kube-controller-manager"
KEDA_OPERATOR = "keda-operator"
APPLY, UPDATE = "Apply", "Update"
# the modelled spec fields of each kind and the API server's default for each (None: required)
FIELDS = {"Deployment": {"replicas": 1}, "HorizontalPodAutoscaler": {"minReplicas": 1, "maxReplicas": None}}


@dataclass
class Live:
    kind: str
    name: str
    values: dict[str, int] = field(default_factory=dict)
    owners: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    last_applied: dict | None = None  # the modelled fields of the last-applied-configuration annotation
    target: str | None = None  # an autoscaler's Deployment


class ApiServer:
    """One namespace's Deployments, autoscalers and ScaledObjects; also an apply.Cluster."""

    def __init__(self):
        self.objects: dict[tuple[str, str], Live] = {}
        self.scaled_objects: dict[str, dict] = {}

    # --- what deploy.apply uses -------------------------------------------------------------

    def live_replicas(self) -> dict[str, int]:
        return {o.name: o.values["replicas"] for o in self.objects.values() if o.kind == "Deployment"}

    def apply(self, objects: list[dict], field_manager: str, force: bool = False, dry_run: bool = False) -> None:
        """kubectl apply --server-side: object by object; the conflicting ones are refused, the rest applied."""
        conflicts = []
        for obj in objects:
            try:
                self._server_side_apply(obj, field_manager, force, dry_run)
            except apply.Conflict as conflict:
                conflicts.append(str(conflict))
        if conflicts:
            raise apply.Conflict("\n".join(conflicts))

    # --- the other actors ---------------------------------------------------------------------

    def client_side_apply(self, objects: list[dict]) -> None:
        """kubectl apply, without --server-side."""
        for obj in objects:
            if obj["kind"] == "ScaledObject":
                self.scaled_objects[obj["metadata"]["name"]] = obj
            live, spec, created = self._live_for(obj)
            if live is None:
                continue
            before = live.last_applied or {}
            for name, default in FIELDS[live.kind].items():
                if name in spec:
                    if created or live.values.get(name) != spec[name]:
                        live.values[name] = spec[name]
                        live.owners[name] = {(CLIENT_SIDE, UPDATE)}
                elif name in before or created:
                    self._default(live, name, default)
            live.last_applied = {name: spec[name] for name in FIELDS[live.kind] if name in spec}
            self.objects[(live.kind, live.name)] = live

    def update(self, kind: str, name: str, field_name: str, value: int, manager: str) -> None:
        """A non-apply write (PATCH, PUT, /scale): owns the field only if it changes the value."""
        live = self.objects[(kind, name)]
        if live.values.get(field_name) != value:
            live.values[field_name] = value
            live.owners[field_name] = {(manager, UPDATE)}

    def settle(self) -> None:
        """Time passes: KEDA makes its autoscalers, the autoscalers bring replicas within range."""
        for so in self.scaled_objects.values():
            name = f"keda-hpa-{so['spec']['scaleTargetRef']['name']}"
            if ("HorizontalPodAutoscaler", name) not in self.objects:
                self.objects[("HorizontalPodAutoscaler", name)] = Live(
                    "HorizontalPodAutoscaler", name, target=so["spec"]["scaleTargetRef"]["name"])
            self.update("HorizontalPodAutoscaler", name, "minReplicas", so["spec"].get("minReplicaCount", 0), KEDA_OPERATOR)
            self.update("HorizontalPodAutoscaler", name, "maxReplicas", so["spec"].get("maxReplicaCount", 100), KEDA_OPERATOR)
        for hpa in [o for o in self.objects.values() if o.kind == "HorizontalPodAutoscaler"]:
            deployment = self.objects.get(("Deployment", hpa.target))
            if deployment is None:
                continue
            current = deployment.values["replicas"]
            wanted = min(max(current, hpa.values["minReplicas"]), hpa.values["maxReplicas"])
            self.update("Deployment", hpa.target, "replicas", wanted, HPA_CONTROLLER)

    # --- what the tests read ------------------------------------------------------------------

    def replicas(self, deployment: str) -> int:
        return self.objects[("Deployment", deployment)].values["replicas"]

    def min_replicas(self, autoscaler: str) -> int:
        return self.objects[("HorizontalPodAutoscaler", autoscaler)].values["minReplicas"]

    def floors(self) -> dict[str, int]:
        """Each running Deployment's floor: its autoscaler's minReplicas, or its own count if nothing scales it."""
        floors = {name: count for name, count in self.live_replicas().items()}
        for hpa in (o for o in self.objects.values() if o.kind == "HorizontalPodAutoscaler"):
            if hpa.target in floors:
                floors[hpa.target] = hpa.values["minReplicas"]
        return floors

    # --- server-side apply --------------------------------------------------------------------

    def _live_for(self, obj: dict) -> tuple[Live | None, dict, bool]:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind not in FIELDS:
            return None, {}, False
        existing = self.objects.get((kind, name))
        live = Live(kind, name) if existing is None else Live(
            kind, name, dict(existing.values), {k: set(v) for k, v in existing.owners.items()},
            existing.last_applied, existing.target)
        spec = obj.get("spec", {})
        if kind == "HorizontalPodAutoscaler" and "scaleTargetRef" in spec:
            live.target = spec["scaleTargetRef"]["name"]
        return live, spec, existing is None

    @staticmethod
    def _default(live: Live, name: str, default: int | None) -> None:
        live.owners[name] = set()
        if default is None:
            live.values.pop(name, None)
        else:
            live.values[name] = default

    def _server_side_apply(self, obj: dict, manager: str, force: bool, dry_run: bool) -> None:
        if obj["kind"] == "ScaledObject" and not dry_run:
            self.scaled_objects[obj["metadata"]["name"]] = obj
        live, spec, created = self._live_for(obj)
        if live is None:
            return
        me = (manager, APPLY)
        for name, default in FIELDS[live.kind].items():
            owners = live.owners.setdefault(name, set())
            if name in spec:
                others = owners - {me}
                changed = live.values.get(name) != spec[name]
                if changed and others and not created and not force:
                    raise apply.Conflict(f"{live.kind}/{live.name}: conflict with "
                                         f"{', '.join(sorted(m for m, _ in others))} on .spec.{name}")
                if changed:
                    owners.clear()
                live.values[name] = spec[name]
                owners.add(me)
            elif created:
                self._default(live, name, default)
            elif me in owners:
                owners.discard(me)
                if not owners:
                    self._default(live, name, default)
        if live.last_applied is not None:
            # kubectl's client-side to server-side migration of managed fields
            for owners in live.owners.values():
                if (CLIENT_SIDE, UPDATE) in owners:
                    owners.discard((CLIENT_SIDE, UPDATE))
                    owners.add(me)
        if not dry_run:
            self.objects[(live.kind, live.name)] = live
