"""Fixtures for the deployment checks: every overlay rendered once per session with the venv's
`kubectl kustomize` (requirements-k8s.txt; `make k8s-validate` installs it)."""
from __future__ import annotations

import pytest

from deploy import render, render_drop, validate


@pytest.fixture(scope="session")
def targets() -> dict[str, validate.Target]:
    return {target.name: target for target in validate.targets(render.K8S_DIR)}


@pytest.fixture(scope="session")
def dev(targets) -> list[dict]:
    return targets["dev"].objects


@pytest.fixture(scope="session")
def prod(targets) -> list[dict]:
    return targets["prod"].objects


@pytest.fixture(scope="session")
def drop_config() -> render_drop.Drop:
    return render_drop.load_config(render_drop.OVERLAY / "drop.yaml")


@pytest.fixture(scope="session")
def drop(targets) -> list[dict]:
    return targets["drop"].objects

