"""`make k8s-validate`'s checker: `python -m deploy.validate [--k8s-dir DIR] [--versions 1.35,1.37]`.

1. renders every overlay (dev, prod, drop for drop.yaml's opening time as it would be applied now,
   and dev, prod and drop with each optional component: KEDA, monitoring, tracing) with the venv's
   `kubectl kustomize`;
2. validates every object strictly (unknown fields are errors) against the Kubernetes schemas of
   each version given (kubernetes-validate); a kind without a schema is an error, except the KEDA
   and Prometheus Operator CRDs, which the policy checks cover;
3. runs the policy checks of deploy/policy.py on each rendering, and deploy/pooling.py's: every
   process but the migrations through its PgBouncer, whose connections fit max_connections;
4. runs hadolint on deploy/Dockerfile (every service's image).
Exits 1 if anything failed, after printing every problem.
"""
from __future__ import annotations

import argparse
import functools
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes_validate
from kubernetes_validate import utils as kv_utils

from deploy import policy, pooling, render, render_drop

# The oldest and the newest minor version Kubernetes supports while this is written (one
# release a season, the newest three supported); override with --versions.
DEFAULT_VERSIONS = ("1.35", "1.37")
# Custom resources kubernetes-validate has no schema for: checked by policy.check_keda and
# policy.check_monitoring instead.
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
# every service's image, relative to the repository root
DOCKERFILE = "deploy/Dockerfile"

# kubernetes-validate reads the big definitions file for every object; read each file once.
kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)


@dataclass
class Target:
    name: str
    objects: list[dict]
    dev: bool
    extra: list[str] = field(default_factory=list)


def schema_errors(objects: list[dict], versions: tuple[str, ...]) -> list[str]:
    problems = []
    for obj in objects:
        where = policy.name_of(obj)
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                problems.append(f"{where} (Kubernetes {version}): {path}: {error.message}")
            except kv_utils.SchemaNotFoundError as error:
                if not obj.get("apiVersion", "").startswith(CRD_GROUPS):
                    problems.append(f"{where}: {error.message}")
    return problems


TARGETS = ("dev", "prod", "drop", "dev+keda", "prod+keda", "drop+keda", "dev+monitoring", "prod+monitoring",
           "drop+monitoring", "dev+tracing", "prod+tracing", "drop+tracing")
# what each optional component's rendering must also pass
COMPONENT_CHECKS = {"keda": policy.check_keda, "monitoring": policy.check_monitoring, "tracing": policy.check_tracing}


def build(name: str, k8s_dir: Path) -> Target:
    """Render one target: an overlay, or an overlay with an optional component."""
    overlays, components = k8s_dir / "overlays", k8s_dir / "components"
    overlay, _, component = name.partition("+")
    if overlay == "drop":  # with a component: as a cluster running it renders its drop
        at = render_drop.now()
        drop, objects = render_drop.render_drop(overlay=overlays / "drop", at=at, components=[component] if component else [])
        prod = render.render(overlays / "prod")
        extra = policy.check_drop(objects, drop, prod, at) + (COMPONENT_CHECKS[component](objects) if component else [])
        return Target(name, objects, dev=False, extra=extra)
    if component:
        objects = render.render_with_components(overlays / overlay, [components / component])
        return Target(name, objects, dev=overlay == "dev", extra=COMPONENT_CHECKS[component](objects))
    return Target(name, render.render(overlays / overlay), dev=overlay == "dev")


def targets(k8s_dir: Path, names: tuple[str, ...] = TARGETS) -> list[Target]:
    return [build(name, k8s_dir) for name in names]


def hadolint_errors(root: Path) -> list[str]:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        return [f"no hadolint beside {sys.executable}: install requirements-k8s.txt"]
    dockerfile = root / DOCKERFILE
    if not dockerfile.exists():
        return [f"no {DOCKERFILE} found"]
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    if result.returncode != 0:
        return [f"hadolint: {line}" for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k8s-dir", type=Path, default=render.K8S_DIR)
    parser.add_argument("--versions", default=",".join(DEFAULT_VERSIONS),
                        help="comma-separated Kubernetes versions to validate against")
    parser.add_argument("--out", type=Path, default=None, help="also write each rendering to OUT/<target>.yaml")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, from: " + ", ".join(TARGETS))
    parser.add_argument("--no-hadolint", action="store_true", help="skip the Dockerfile")
    args = parser.parse_args(argv)
    versions = tuple(v.strip() for v in args.versions.split(",") if v.strip())
    if len(versions) < 1:
        parser.error("name at least one Kubernetes version")

    failed = False
    try:
        names = tuple(n.strip() for n in args.targets.split(",") if n.strip())
        unknown = set(names) - set(TARGETS)
        if unknown:
            parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
        rendered = targets(args.k8s_dir, names)
    except (render.RenderError, render_drop.DropConfigError) as error:
        print(f"FAIL render: {error}")
        return 1
    for target in rendered:
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{target.name}.yaml").write_text(render.dump(target.objects))
        problems = (schema_errors(target.objects, versions) + policy.check_all(target.objects, target.dev)
                    + pooling.check(target.objects, args.k8s_dir) + pooling.check_processes_use_the_pooler(target.objects)
                    + target.extra)
        status = "FAIL" if problems else "ok"
        print(f"{status:4} {target.name}: {len(target.objects)} objects, Kubernetes {', '.join(versions)} "
              f"(strict), policies")
        for problem in problems:
            print(f"     - {problem}")
        failed |= bool(problems)
    if not args.no_hadolint:
        problems = hadolint_errors(render.ROOT)
        print(f"{'FAIL' if problems else 'ok':4} hadolint: {DOCKERFILE}")
        for problem in problems:
            print(f"     - {problem}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
