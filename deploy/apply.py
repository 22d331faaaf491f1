"""Apply Floodgate to a cluster as the runbook does: `python -m deploy.apply dev|prod|FILE [options]`.

dev and prod render that overlay (`--component keda` adds an optional component); FILE is a
rendering saved earlier, such as the drop's (`make k8s-drop > drop-manifests.yaml`). Then:

1. Refuses a drop rendering outside the period its floors hold for (render_drop marks each
   autoscaler with it): applied the day after it was rendered, it would carry yesterday's floor.
2. Hands over, under the field manager `floodgate-handover`, the live replica count of every
   Deployment that the rendering leaves without `replicas` (an autoscaler owns it) and that already
   runs: if `floodgate-deploy`, or a client-side apply before it, still owns that count, dropping it
   from the manifests would make the API server reset it to 1; with a second owner it stays. The
   first time the autoscaler changes the count it becomes the only owner, and the hand-over entry
   goes away by itself. (Kubernetes' "transferring ownership" recipe for server-side apply.)
3. Applies everything server-side under the field manager `floodgate-deploy`: a field Floodgate's
   manifests do not set is never touched, so the autoscalers keep their replica counts and the drop
   scaler its floors (a rendering with another floor than the one the scaler set is refused as a
   conflict, never forced).

Every kubectl command is printed before it runs. `--force-conflicts` is for the one apply that moves
a cluster from client-side apply (the runbook until issue 14) to this; never during a drop.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from deploy import render
from deploy.render_drop import VALID_FROM, VALID_UNTIL

FIELD_MANAGER = "floodgate-deploy"
HANDOVER_MANAGER = "floodgate-handover"
NAMESPACE = "floodgate"
OVERLAYS = ("dev", "prod")
HANDOVER_ATTEMPTS = 3


class ApplyError(Exception):
    pass


class Conflict(ApplyError):
    """The API server refused to change a field another field manager owns."""


class Cluster(Protocol):
    def live_replicas(self) -> dict[str, int]:
        """Each Deployment of the namespace and its spec.replicas."""

    def apply(self, objects: list[dict], field_manager: str, force: bool = False, dry_run: bool = False) -> None:
        """Server-side apply of the objects under that field manager."""


class Kubectl:
    """The cluster kubectl's current context points at."""

    def __init__(self, binary: str, namespace: str = NAMESPACE):
        self.binary = binary
        self.namespace = namespace

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        print("+ kubectl " + " ".join(args), file=sys.stderr, flush=True)
        result = subprocess.run([self.binary, *args], input=stdin, capture_output=True, text=True)
        sys.stderr.write(result.stderr)
        if result.returncode != 0:
            error = Conflict if "conflict" in result.stderr.lower() else ApplyError
            raise error(result.stderr.strip() or f"kubectl exited {result.returncode}")
        return result.stdout

    def live_replicas(self) -> dict[str, int]:
        listing = json.loads(self._run(["-n", self.namespace, "get", "deployments", "-o", "json"]))
        return {d["metadata"]["name"]: d["spec"].get("replicas", 1) for d in listing["items"]}

    def apply(self, objects: list[dict], field_manager: str, force: bool = False, dry_run: bool = False) -> None:
        args = ["apply", "--server-side", f"--field-manager={field_manager}"]
        if force:
            args.append("--force-conflicts")
        if dry_run:
            args.append("--dry-run=server")
        sys.stdout.write(self._run(args + ["-f", "-"], stdin=render.dump(objects)))


def load(source: str, components: list[str], k8s_dir: Path = render.K8S_DIR) -> list[dict]:
    """An overlay rendered (with optional components), or a rendering saved to a file."""
    if source in OVERLAYS:
        overlay = k8s_dir / "overlays" / source
        if components:
            return render.render_with_components(overlay, [k8s_dir / "components" / c for c in components])
        return render.render(overlay)
    if components:
        raise ApplyError("--component goes with an overlay (dev, prod), not with a rendered file")
    path = Path(source)
    if not path.is_file():
        raise ApplyError(f"{source}: neither an overlay ({', '.join(OVERLAYS)}) nor a file")
    return render.load(path.read_text())


def select(objects: list[dict], selector: str | None) -> list[dict]:
    """The objects whose labels match an equality selector (`key=value,key=value`)."""
    if not selector:
        return objects
    wanted = dict(pair.split("=", 1) for pair in selector.split(","))
    return [o for o in objects if wanted.items() <= o["metadata"].get("labels", {}).items()]


def stale(objects: list[dict], moment: datetime) -> list[str]:
    """Objects rendered for a period of the drop's schedule that does not include `moment`."""
    problems = []
    for obj in objects:
        annotations = obj["metadata"].get("annotations", {})
        start, end = annotations.get(VALID_FROM), annotations.get(VALID_UNTIL)
        if (start and moment < datetime.fromisoformat(start)) or (end and moment >= datetime.fromisoformat(end)):
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} holds from {start or 'the start'} "
                            f"until {end or 'the end'}, not at {moment.isoformat()}")
    return problems


def handover(objects: list[dict], live: dict[str, int]) -> list[dict]:
    """Replica counts to hand over: running Deployments that the objects leave without replicas."""
    return [
        {"apiVersion": d["apiVersion"], "kind": "Deployment",
         "metadata": {"name": d["metadata"]["name"], "namespace": d["metadata"].get("namespace", NAMESPACE)},
         "spec": {"replicas": live[d["metadata"]["name"]]}}
        for d in objects
        if d["kind"] == "Deployment" and "replicas" not in d["spec"] and d["metadata"]["name"] in live
    ]


def apply(objects: list[dict], cluster: Cluster, force: bool = False, dry_run: bool = False) -> None:
    """Hand over the autoscalers' replica counts, then apply the objects server-side as floodgate-deploy."""
    for attempt in range(1, HANDOVER_ATTEMPTS + 1):
        counts = handover(objects, cluster.live_replicas())
        if not counts:
            break
        try:
            cluster.apply(counts, HANDOVER_MANAGER, dry_run=dry_run)
            break
        except Conflict:
            # an autoscaler changed a count between reading and handing it over: read again
            if attempt == HANDOVER_ATTEMPTS:
                raise
    cluster.apply(objects, FIELD_MANAGER, force=force, dry_run=dry_run)


def main(argv: list[str] | None = None, cluster: Cluster | None = None, moment: datetime | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help=f"an overlay ({', '.join(OVERLAYS)}) or a rendered file")
    parser.add_argument("--component", action="append", default=[], help="add deploy/k8s/components/NAME (repeatable)")
    parser.add_argument("-l", "--selector", default=None, help="only objects with these labels (key=value,...)")
    parser.add_argument("--dry-run", action="store_true", help="let the API server check it all, change nothing")
    parser.add_argument("--force-conflicts", action="store_true",
                        help="take over fields another manager owns: once, when leaving client-side apply")
    parser.add_argument("--kubectl", default=None, help="the kubectl to use (default: the venv's)")
    args = parser.parse_args(argv)
    try:
        objects = select(load(args.source, args.component), args.selector)
        problems = stale(objects, moment or datetime.now(timezone.utc))
        if problems:
            raise ApplyError("this rendering's floors do not hold now; render it again (make k8s-drop):\n  "
                             + "\n  ".join(problems))
        apply(objects, cluster or Kubectl(args.kubectl or render.kubectl()), args.force_conflicts, args.dry_run)
    except (ApplyError, render.RenderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
