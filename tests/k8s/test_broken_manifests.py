"""`make k8s-validate` fails on a broken manifest: a temporary copy of deploy/k8s gets one patch
in one overlay, and the real checker (python -m deploy.validate) must refuse it, naming the
broken object, while the untouched overlay still passes."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from deploy import render


def validate_copy(tmp_path, overlay: str, patch: list[dict], target: str, kind: str = "Deployment") -> subprocess.CompletedProcess:
    copy = tmp_path / "k8s"
    shutil.copytree(render.K8S_DIR, copy)
    kustomization_file = copy / "overlays" / overlay / "kustomization.yaml"
    kustomization = yaml.safe_load(kustomization_file.read_text())
    kustomization.setdefault("patches", []).append(
        {"target": {"kind": kind, "name": target}, "patch": yaml.safe_dump(patch)})
    kustomization_file.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    other = "prod" if overlay == "dev" else "dev"
    return subprocess.run(
        [sys.executable, "-m", "deploy.validate", "--k8s-dir", str(copy), "--targets", f"{overlay},{other}",
         "--no-hadolint", "--versions", "1.35,1.37"],
        cwd=render.ROOT, capture_output=True, text=True, timeout=300,
    )


def assert_refused(result, overlay: str, *expected: str):
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"FAIL {overlay}:") for line in lines), result.stdout
    assert any(line.startswith("ok   ") for line in lines), "the untouched overlay should still pass"
    for text in expected:
        assert text in result.stdout, result.stdout


def test_an_unknown_field_is_refused(tmp_path):
    result = validate_copy(tmp_path, "dev", [
        {"op": "add", "path": "/spec/template/spec/containers/0/livenessProbe/httpGett", "value": {"port": 8000}},
    ], "checkout-api")
    assert_refused(result, "dev", "Deployment/checkout-api (Kubernetes 1.35)", "Deployment/checkout-api (Kubernetes 1.37)",
                   "httpGett")


def test_a_misspelt_field_of_a_migration_job_is_refused(tmp_path):
    result = validate_copy(tmp_path, "prod", [
        {"op": "add", "path": "/spec/template/spec/restartPolicyy", "value": "Never"},
    ], "checkout-migrate", kind="Job")
    assert_refused(result, "prod", "Job/checkout-migrate", "restartPolicyy")


def test_a_missing_liveness_probe_is_refused(tmp_path):
    result = validate_copy(tmp_path, "prod", [
        {"op": "remove", "path": "/spec/template/spec/containers/0/livenessProbe"},
    ], "inventory-consumer")
    assert_refused(result, "prod", "Deployment/inventory-consumer container consumer: no livenessProbe")


@pytest.mark.parametrize("patch, message", [
    ([{"op": "remove", "path": "/spec/template/spec/containers/0/resources/limits"}], "no limits.cpu"),
    ([{"op": "replace", "path": "/spec/template/spec/containers/0/securityContext/runAsNonRoot", "value": False}],
     "runAsNonRoot is not true"),
    ([{"op": "replace", "path": "/spec/template/spec/terminationGracePeriodSeconds", "value": 25}],
     "terminationGracePeriodSeconds 25 <= preStop 10 s + gunicorn graceful_timeout 20 s"),
    ([{"op": "replace", "path": "/spec/template/spec/containers/0/livenessProbe",
       "value": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 2}}],
     "container api: liveness is an HTTP request, which waits behind the worker's queued requests"),
])
def test_a_policy_breach_is_refused(tmp_path, patch, message):
    result = validate_copy(tmp_path, "dev", patch, "accounts-api")
    assert_refused(result, "dev", "Deployment/accounts-api", message)


def test_a_type_error_is_refused(tmp_path):
    result = validate_copy(tmp_path, "dev", [
        {"op": "replace", "path": "/spec/replicas", "value": "two"},
    ], "notifications-api")
    assert_refused(result, "dev", "Deployment/notifications-api", "replicas")


def test_an_autoscaler_pinned_at_one_pod_is_refused(tmp_path):
    result = validate_copy(tmp_path, "prod", [
        {"op": "replace", "path": "/spec/minReplicas", "value": 1},
        {"op": "replace", "path": "/spec/maxReplicas", "value": 1},
    ], "checkout-api", kind="HorizontalPodAutoscaler")
    assert_refused(result, "prod", "HorizontalPodAutoscaler/checkout-api: minReplicas 1 leaves the service to one pod",
                   "HorizontalPodAutoscaler/checkout-api: maxReplicas 1 leaves no room above minReplicas 1")


def test_hadolint_refuses_a_careless_dockerfile(tmp_path):
    from deploy import validate

    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "Dockerfile").write_text(
        "FROM python:latest\nRUN pip install flask\nCMD python app.py\n")
    problems = validate.hadolint_errors(tmp_path)
    assert any("DL3007" in p for p in problems), problems  # latest tag
    assert any("DL3013" in p for p in problems), problems  # unpinned pip install


def test_the_real_dockerfiles_are_hadolint_clean():
    from deploy import validate

    assert validate.hadolint_errors(render.ROOT) == []
