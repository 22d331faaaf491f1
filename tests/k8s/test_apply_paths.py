"""Every documented way of applying Floodgate, run with the runbook's own command lines against a
model of the API server's apply semantics (apiserver.py; no cluster can run here): whatever the
path, no Deployment's replica count drops below the floor it had before the command, and the drop's
raised floor survives a re-apply during the window. The command lines are the ones in
deploy/k8s/README.md, and the README has no other way of applying (the last test here)."""
from __future__ import annotations

import functools
import json
import re
import shlex
import sys
from datetime import datetime, timedelta, timezone

import pytest

from deploy import apply, policy, render, render_drop
from tests.k8s.apiserver import ApiServer

README = render.K8S_DIR / "README.md"
PYTHON = ".venv/bin/python -m deploy.apply"

NAMESPACE = f"{PYTHON} deploy/k8s/base/namespace.yaml"
DEV = f"{PYTHON} dev"
DEV_KEDA = f"{PYTHON} dev --component keda"
PROD_FIRST = f"{PYTHON} prod -l floodgate.io/apply-first=true"
PROD = f"{PYTHON} prod"
PROD_KEDA = f"{PYTHON} prod --component keda"
PROD_MONITORING = f"{PYTHON} prod --component monitoring"
PROD_TRACING = f"{PYTHON} prod --component tracing"
PROD_FROM_CLIENT_SIDE = f"{PYTHON} prod --force-conflicts"
RENDER_DROP = "make k8s-drop OPENS_AT=2026-12-05T18:00:00+01:00 > drop-manifests.yaml"
RENDER_DROP_KEDA = 'make k8s-drop OPENS_AT=2026-12-05T18:00:00+01:00 COMPONENTS="keda tracing" > drop-manifests.yaml'
APPLY_DROP = f"{PYTHON} drop-manifests.yaml"
REAPPLY_DROP = f"{RENDER_DROP} && {APPLY_DROP}"
RUNBOOK = {NAMESPACE, DEV, DEV_KEDA, PROD_FIRST, PROD, PROD_KEDA, PROD_MONITORING, PROD_TRACING, PROD_FROM_CLIENT_SIDE,
           RENDER_DROP, RENDER_DROP_KEDA, APPLY_DROP, REAPPLY_DROP}

OPENS_AT = datetime(2026, 12, 5, 17, 0, tzinfo=timezone.utc)  # RENDER_DROP's opening time
DROP_SCALER = "floodgate-drop-scaler"  # set_floor.py's field manager


class Operator:
    """Runs runbook lines at given moments against the model, checking every Deployment's floor."""

    def __init__(self, server: ApiServer):
        self.server = server

    def run(self, line: str, at: datetime, expect: int = 0) -> None:
        before = self.server.floors()
        for command in line.split("&&"):
            argv = shlex.split(command)
            if argv[:3] == PYTHON.split():
                assert apply.main(argv[3:], cluster=self.server, moment=at) == expect, line
            elif argv[:2] == ["make", "k8s-drop"]:
                # the Makefile's recipe (checked below), at this moment
                opens_at = [a.partition("=")[2] for a in argv if a.startswith("OPENS_AT=")]
                args = ["--opens-at", *opens_at] if opens_at else []
                for named in (a.partition("=")[2] for a in argv if a.startswith("COMPONENTS=")):
                    args += [arg for component in named.split() for arg in ("--component", component)]
                assert render_drop.main(args + ["--at", at.isoformat(), "--output", argv[argv.index(">") + 1]]) == 0
            else:
                raise AssertionError(f"no way to run {command!r}")
        dropped = {name: (floor, self.server.replicas(name)) for name, floor in before.items()
                   if self.server.replicas(name) < floor}
        assert dropped == {}, f"{line!r} at {at}: (floor, replicas) {dropped}"

    def scheduled_job(self, name: str, rendering: str) -> None:
        """The drop's CronJob as the rendering applied configures it: set_floor.py's merge patches."""
        job = policy.find(render.load(open(rendering).read()), "CronJob", name)
        for pair in policy.pod_spec(job)["containers"][0]["args"][1:]:
            autoscaler, _, floor = pair.partition("=")
            self.server.update("HorizontalPodAutoscaler", autoscaler, "minReplicas", int(floor), DROP_SCALER)


@pytest.fixture(scope="module", autouse=True)
def kustomize_each_overlay_once():
    """An overlay renders the same every time; kustomize each one once for this module."""
    patch = pytest.MonkeyPatch()
    patch.setattr(render, "kustomize", functools.lru_cache(maxsize=None)(render.kustomize))
    yield
    patch.undo()


@pytest.fixture
def operator(tmp_path, monkeypatch) -> Operator:
    """An operator at the repository's root (paths as the runbook writes them), writing files in a scratch copy."""
    (tmp_path / "deploy").symlink_to(render.ROOT / "deploy")
    monkeypatch.chdir(tmp_path)
    return Operator(ApiServer())


def drop_yaml_edited(tmp_path, monkeypatch, line: str, edited: str) -> None:
    """The operator changes one line of drop.yaml (in a copy the renderings read from now on)."""
    copy = tmp_path / "edited-drop.yaml"
    text = (render_drop.OVERLAY / "drop.yaml").read_text()
    assert text.count(line) == 1
    copy.write_text(text.replace(line, edited))
    load_config = render_drop.load_config
    monkeypatch.setattr(render_drop, "load_config", lambda path, opens_at=None: load_config(copy, opens_at))


def prod_running(operator: Operator, at: datetime) -> None:
    for line in (NAMESPACE, PROD_FIRST, PROD):
        operator.run(line, at)
    operator.server.settle()


def test_dev_and_its_reapply(operator):
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    operator.run(DEV, start)
    operator.server.settle()
    operator.run(DEV, start + timedelta(days=1))
    assert set(operator.server.live_replicas().values()) == {1}


def test_prod_its_autoscalers_own_the_api_counts_and_a_release_keeps_them(operator):
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    prod_running(operator, start)
    assert (operator.server.replicas("checkout-api"), operator.server.replicas("inventory-api")) == (4, 3)
    assert (operator.server.replicas("accounts-api"), operator.server.replicas("checkout-line-status")) == (3, 2)
    operator.server.update("Deployment", "checkout-api", "replicas", 9, "kube-controller-manager")  # busy
    operator.run(PROD, start + timedelta(days=1))
    assert operator.server.replicas("checkout-api") == 9


def test_the_drop_day_before_during_and_after(operator):
    """Applied the day before; raised by its CronJob; applied again during the window, first from
    the day before's file (refused: its floors no longer hold) and then rendered again; lowered."""
    drop = render_drop.load_config(render_drop.OVERLAY / "drop.yaml", OPENS_AT.isoformat())
    prod_running(operator, OPENS_AT - timedelta(days=7))
    day_before = OPENS_AT - timedelta(days=1)
    operator.run(RENDER_DROP, day_before)
    operator.run(APPLY_DROP, day_before)
    operator.server.settle()
    assert operator.server.min_replicas("checkout-api") == 4

    operator.scheduled_job("drop-raise-floor", "drop-manifests.yaml")
    operator.server.settle()
    assert (operator.server.replicas("checkout-api"), operator.server.replicas("inventory-api")) == (40, 12)
    line_status = next(a for a in drop.autoscalers if a.name == "checkout-line-status")
    assert operator.server.replicas("checkout-line-status") == line_status.drop_min

    during = OPENS_AT + timedelta(minutes=10)
    operator.server.update("Deployment", "checkout-api", "replicas", 55, "kube-controller-manager")  # the crowd
    operator.run(APPLY_DROP, during, expect=1)
    operator.run(PROD, during, expect=1)  # not the runbook, but refused too: the scaler owns the floors
    assert operator.server.min_replicas("checkout-api") == 40
    operator.run(REAPPLY_DROP, during)
    assert operator.server.min_replicas("checkout-api") == 40
    assert operator.server.min_replicas("inventory-api") == 12
    assert operator.server.replicas("checkout-api") == 55

    operator.scheduled_job("drop-lower-floor", "drop-manifests.yaml")
    operator.server.settle()
    assert operator.server.min_replicas("checkout-api") == 4
    after = drop.lower_at + timedelta(hours=1)
    operator.run(REAPPLY_DROP, after)
    operator.run(PROD, after)  # back to plain prod: the same autoscalers at the same floors
    assert operator.server.min_replicas("checkout-api") == 4


def test_a_floor_raised_by_hand_during_the_window_holds_until_drop_yaml_says_it(operator, tmp_path, monkeypatch):
    """The shedding alert's remedy during a drop: `kubectl patch hpa checkout-api` to a higher floor
    (a patch: it owns the floor now). The drop rendered again from the unchanged drop.yaml is refused,
    as the README warns; rendered with that floor as drop_min it applies; the lower job still brings
    the floor down after the close, and prod applies over it as before."""
    drop = render_drop.load_config(render_drop.OVERLAY / "drop.yaml", OPENS_AT.isoformat())
    prod_running(operator, OPENS_AT - timedelta(days=7))
    operator.run(RENDER_DROP, OPENS_AT - timedelta(days=1))
    operator.run(APPLY_DROP, OPENS_AT - timedelta(days=1))
    operator.scheduled_job("drop-raise-floor", "drop-manifests.yaml")
    operator.server.settle()

    during = OPENS_AT + timedelta(minutes=10)
    operator.server.update("HorizontalPodAutoscaler", "checkout-api", "minReplicas", 60, "kubectl-patch")
    operator.server.settle()
    operator.run(REAPPLY_DROP, during, expect=1)
    assert operator.server.min_replicas("checkout-api") == 60

    drop_yaml_edited(tmp_path, monkeypatch, "drop_min: 40", "drop_min: 60")
    operator.run(REAPPLY_DROP, during)
    assert operator.server.min_replicas("checkout-api") == 60

    operator.scheduled_job("drop-lower-floor", "drop-manifests.yaml")
    operator.server.settle()
    assert operator.server.min_replicas("checkout-api") == 4
    operator.run(PROD, drop.lower_at + timedelta(hours=1))
    assert operator.server.min_replicas("checkout-api") == 4


def test_a_cluster_running_components_renders_its_drop_with_them_and_keeps_kedas_count(operator):
    """A drop rendered without the components the cluster runs gave prod's fixed count (2) back to
    KEDA's consumer, refused as a conflict once KEDA had changed it, and rolled every process back
    untraced. Rendered with them (COMPONENTS), it applies and changes neither."""
    prod_running(operator, OPENS_AT - timedelta(days=7))
    day_before = OPENS_AT - timedelta(days=1)
    operator.run(f"{PROD_KEDA} --component tracing", day_before - timedelta(days=1))
    operator.server.settle()
    operator.server.update("Deployment", "notifications-consumer", "replicas", 1, "keda-operator")  # idle
    traced = policy.find(render.load(render.dump(render_drop.render_drop(
        OPENS_AT.isoformat(), at=day_before, components=["keda", "tracing"])[1])), "Deployment", "checkout-api")

    operator.run(RENDER_DROP, day_before)
    operator.run(APPLY_DROP, day_before, expect=1)  # prod's count of 2 against KEDA's 1
    assert operator.server.replicas("notifications-consumer") == 1

    operator.run(RENDER_DROP_KEDA, day_before)
    rendered = render.load(open("drop-manifests.yaml").read())
    assert policy.find(rendered, "ScaledObject", "notifications-consumer") is not None
    assert "replicas" not in policy.find(rendered, "Deployment", "notifications-consumer")["spec"]
    assert policy.find(rendered, "Deployment", "checkout-api")["spec"]["template"] == traced["spec"]["template"]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in policy.env_of(
        policy.pod_spec(policy.find(rendered, "Deployment", "checkout-api"))["containers"][0])
    operator.run(APPLY_DROP, day_before)
    assert operator.server.replicas("notifications-consumer") == 1


def test_a_window_extended_after_the_lower_job_gets_its_floors_back_as_the_runbook_says(operator, tmp_path, monkeypatch):
    """The control room extends a drop after its close, once the lower job has lowered the floors:
    the rendering for the new window is refused on the autoscalers but moves the CronJobs; the
    raise job run by hand raises them, and the same rendering then applies."""
    prod_running(operator, OPENS_AT - timedelta(days=7))
    operator.run(REAPPLY_DROP, OPENS_AT - timedelta(days=1))
    operator.scheduled_job("drop-raise-floor", "drop-manifests.yaml")
    operator.scheduled_job("drop-lower-floor", "drop-manifests.yaml")
    operator.server.settle()
    assert operator.server.min_replicas("checkout-api") == 4

    drop = render_drop.load_config(render_drop.OVERLAY / "drop.yaml", OPENS_AT.isoformat())
    reopened = drop.lower_at + timedelta(minutes=5)
    drop_yaml_edited(tmp_path, monkeypatch, "window_minutes: 60", "window_minutes: 120")
    operator.run(REAPPLY_DROP, reopened, expect=1)  # the scaler owns the normal floors
    assert operator.server.min_replicas("checkout-api") == 4

    operator.scheduled_job("drop-raise-floor", "drop-manifests.yaml")  # kubectl create job --from=cronjob/...
    operator.server.settle()
    operator.run(REAPPLY_DROP, reopened)
    assert operator.server.min_replicas("checkout-api") == 40
    lower = policy.find(render.load(open("drop-manifests.yaml").read()), "CronJob", "drop-lower-floor")
    assert lower["spec"]["schedule"] == render_drop.cron(drop.lower_at + timedelta(minutes=60))


def test_a_consumer_scaled_by_hand_is_handed_back_before_the_next_apply_as_the_runbook_says(operator):
    """The backlog alerts' remedy is `kubectl scale deploy <service>-consumer`: kubectl then owns the
    count, and the drop's re-render (to raise a floor mid-drop) is refused as a conflict on it. The
    runbook says so, and what to do: scale it back to the rendering's count (2) first; the apply
    then goes through and leaves the count where it is."""
    prod_running(operator, OPENS_AT - timedelta(days=7))
    operator.run(REAPPLY_DROP, OPENS_AT - timedelta(days=1))
    operator.scheduled_job("drop-raise-floor", "drop-manifests.yaml")
    operator.server.settle()
    during = OPENS_AT + timedelta(minutes=10)
    operator.server.update("Deployment", "inventory-consumer", "replicas", 4, "kubectl")
    operator.run(REAPPLY_DROP, during, expect=1)
    assert operator.server.replicas("inventory-consumer") == 4
    operator.server.update("Deployment", "inventory-consumer", "replicas", 2, "kubectl")  # the runbook's hand-back
    operator.run(REAPPLY_DROP, during)
    assert operator.server.replicas("inventory-consumer") == 2


def test_the_drop_rendered_and_applied_first_during_the_window_starts_at_the_raised_floor(operator):
    prod_running(operator, OPENS_AT - timedelta(days=7))
    operator.run(REAPPLY_DROP, OPENS_AT - timedelta(minutes=5))
    assert operator.server.min_replicas("checkout-api") == 40


@pytest.mark.parametrize("overlay, line", [("prod", PROD_KEDA), ("dev", DEV_KEDA)])
def test_keda_takes_over_a_running_consumer_without_a_restart_at_one(operator, overlay, line):
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    if overlay == "prod":
        prod_running(operator, start)
    else:
        operator.run(DEV, start)
    running = operator.server.replicas("notifications-consumer")
    operator.run(line, start + timedelta(hours=1))
    operator.server.settle()
    operator.run(line, start + timedelta(days=1))
    assert operator.server.replicas("notifications-consumer") == running


def test_the_monitoring_component_on_a_running_prod_changes_no_replica_count(operator):
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    prod_running(operator, start)
    running = operator.server.live_replicas()
    operator.run(PROD_MONITORING, start + timedelta(hours=1))
    operator.server.settle()
    operator.run(PROD_MONITORING, start + timedelta(days=1))
    assert operator.server.live_replicas() == running


def test_the_tracing_component_on_a_running_prod_adds_its_collector_and_changes_no_replica_count(operator):
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    prod_running(operator, start)
    running = operator.server.live_replicas()
    operator.run(PROD_TRACING, start + timedelta(hours=1))
    operator.server.settle()
    operator.run(PROD_TRACING, start + timedelta(days=1))
    assert operator.server.live_replicas() == {**running, "otel-collector": 1}


def test_a_cluster_applied_client_side_before_moves_over_without_losing_a_pod(operator):
    """The runbook before this release: `kubectl apply -k overlays/prod`, fixed replica counts."""
    operator.server.client_side_apply(prod_as_it_was())
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    operator.run(PROD_FROM_CLIENT_SIDE, start)
    operator.run(PROD, start + timedelta(minutes=1))  # before the autoscalers had any reason to act
    assert (operator.server.replicas("checkout-api"), operator.server.replicas("inventory-api")) == (4, 3)
    assert (operator.server.replicas("accounts-api"), operator.server.replicas("checkout-line-status")) == (3, 2)


def prod_as_it_was() -> list[dict]:
    """prod before its autoscalers: checkout's, inventory's and accounts' APIs at fixed counts of 4,
    3 and 3, and checkout's line-status edge at its base count of 2."""
    objects = [o for o in render.render(render.K8S_DIR / "overlays" / "prod") if o["kind"] != "HorizontalPodAutoscaler"]
    for name, count in (("checkout-api", 4), ("inventory-api", 3), ("accounts-api", 3), ("checkout-line-status", 2)):
        policy.find(objects, "Deployment", name)["spec"]["replicas"] = count
    return objects


# --- the kubectl commands behind them -----------------------------------------------------------

FAKE_KUBECTL = """#!PYTHON
import json, os, sys
with open(os.environ["KUBECTL_LOG"], "a") as log:
    manifest = sys.stdin.read() if sys.argv[-2:] == ["-f", "-"] else ""
    log.write(json.dumps({"argv": sys.argv[1:], "stdin": manifest}) + "\\n")
if sys.argv[1:4] == ["-n", "floodgate", "get"]:
    print(json.dumps({"items": [{"metadata": {"name": "checkout-api"}, "spec": {"replicas": 7}},
                                {"metadata": {"name": "accounts-api"}, "spec": {"replicas": 3}},
                                {"metadata": {"name": "notifications-api"}, "spec": {"replicas": 2}}]}))
elif os.environ.get("KUBECTL_CONFLICT") and "--field-manager=floodgate-deploy" in sys.argv:
    sys.exit('error: Apply failed with 1 conflict: conflict with "floodgate-drop-scaler": .spec.minReplicas')
"""


def fake_kubectl(tmp_path, monkeypatch, conflict: bool = False):
    binary = tmp_path / "kubectl"
    binary.write_text(FAKE_KUBECTL.replace("PYTHON", sys.executable))
    binary.chmod(0o755)
    monkeypatch.setenv("KUBECTL_LOG", str(tmp_path / "calls"))
    if conflict:
        monkeypatch.setenv("KUBECTL_CONFLICT", "1")
    return str(binary), lambda: [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]


def test_deploy_apply_reads_the_counts_hands_them_over_and_applies_server_side(tmp_path, monkeypatch):
    kubectl, calls = fake_kubectl(tmp_path, monkeypatch)
    assert apply.main(["prod", "--kubectl", kubectl]) == 0
    (get, handover, deploy) = calls()
    assert get["argv"] == ["-n", "floodgate", "get", "deployments", "-o", "json"]
    assert handover["argv"] == ["apply", "--server-side", "--field-manager=floodgate-handover", "-f", "-"]
    # the autoscaled ones keep the count they have, handed over to no manager of the rendering;
    # notifications-api keeps its count in the rendering: nothing to hand over
    assert render.load(handover["stdin"]) == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "accounts-api", "namespace": "floodgate"},
         "spec": {"replicas": 3}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "checkout-api", "namespace": "floodgate"},
         "spec": {"replicas": 7}}]
    assert deploy["argv"] == ["apply", "--server-side", "--field-manager=floodgate-deploy", "-f", "-"]
    assert render.load(deploy["stdin"]) == render.render(render.K8S_DIR / "overlays" / "prod")


def test_deploy_apply_fails_on_a_conflict_and_never_forces_unless_told(tmp_path, monkeypatch):
    kubectl, calls = fake_kubectl(tmp_path, monkeypatch, conflict=True)
    assert apply.main(["prod", "--kubectl", kubectl]) == 1
    assert all("--force-conflicts" not in call["argv"] for call in calls())
    assert apply.main(["prod", "--kubectl", kubectl, "--force-conflicts", "--dry-run"]) == 1
    assert calls()[-1]["argv"] == ["apply", "--server-side", "--field-manager=floodgate-deploy", "--force-conflicts",
                                   "--dry-run=server", "-f", "-"]


# --- the model against what was observed, and against what it is for --------------------------

def test_the_model_shows_the_reported_incident():
    """Issue 14: prod, then the drop overlay, each with client-side `kubectl apply`: 4 -> 1 and 3 -> 1."""
    server = ApiServer()
    server.client_side_apply(prod_as_it_was())
    _, drop = render_drop.render_drop(at=OPENS_AT - timedelta(days=1))
    server.client_side_apply(drop)
    assert (server.replicas("checkout-api"), server.replicas("inventory-api")) == (1, 1)


def test_the_model_shows_why_server_side_apply_alone_is_not_enough():
    """A count floodgate-deploy itself applied is reset when a later apply leaves it to KEDA: hence the hand-over."""
    server = ApiServer()
    server.apply(render.render(render.K8S_DIR / "overlays" / "prod"), apply.FIELD_MANAGER)
    keda = render.render_with_components(render.K8S_DIR / "overlays" / "prod", [render.K8S_DIR / "components" / "keda"])
    server.apply(keda, apply.FIELD_MANAGER)
    assert server.replicas("notifications-consumer") == 1


def test_the_model_refuses_a_floor_the_scaler_owns():
    server = ApiServer()
    _, before = render_drop.render_drop(at=OPENS_AT - timedelta(days=1))
    server.apply(before, apply.FIELD_MANAGER)
    server.update("HorizontalPodAutoscaler", "checkout-api", "minReplicas", 40, DROP_SCALER)
    with pytest.raises(apply.Conflict, match="floodgate-drop-scaler on .spec.minReplicas"):
        server.apply(before, apply.FIELD_MANAGER)
    assert server.min_replicas("checkout-api") == 40


# --- the runbook is these commands ------------------------------------------------------------

def runbook_lines() -> set[str]:
    """Every line of the README's shell blocks that applies something or renders the drop to a file."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    lines = {re.sub(r"\s+#.*$", "", line).strip() for block in blocks for line in block.splitlines()}
    return {line for line in lines if "deploy.apply" in line or "kubectl apply" in line
            or ("k8s-drop" in line and ">" in line)}


def test_the_runbook_applies_exactly_as_these_tests_do():
    assert runbook_lines() == RUNBOOK


def test_make_k8s_drop_is_render_drop_with_the_opening_time_and_the_components_only():
    makefile = (render.ROOT / "Makefile").read_text()
    recipe = re.search(r"^k8s-drop:.*\n\t(.*)$", makefile, re.M).group(1)
    assert recipe == ('@$(BIN)/python -m deploy.render_drop $(if $(OPENS_AT),--opens-at "$(OPENS_AT)") '
                      '$(foreach c,$(COMPONENTS),--component $(c))')


def test_make_k8s_drop_writes_nothing_but_the_rendering_to_stdout_even_while_it_installs_first():
    """`make k8s-drop > drop-manifests.yaml` installs requirements-k8s.txt first when it changed:
    make echoed those recipe lines, and pip's output, into the file, which deploy.apply could not
    read at T-30 min."""
    makefile = (render.ROOT / "Makefile").read_text()
    stamp = re.search(r"^\$\(K8S_STAMP\):.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    for line in stamp.splitlines():
        assert line.startswith("\t@"), line
        assert line.endswith(">&2") or line.startswith("\t@touch"), line
