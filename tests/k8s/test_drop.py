"""The drop overlay: checkout scaled up 30 minutes before the opening and back down after the window,
and a rendering that, applied at any moment, carries the floor the schedule gives at that moment."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from deploy import policy, render, render_drop


def render_cli(*args: str) -> subprocess.CompletedProcess:
    """`make k8s-drop` runs exactly this."""
    return subprocess.run([sys.executable, "-m", "deploy.render_drop", *args], cwd=render.ROOT,
                          capture_output=True, text=True)


def cronjob(objects, name):
    job = policy.find(objects, "CronJob", name)
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    return job["spec"], container


def test_committed_drop_overlay_matches_its_configuration(targets):
    assert targets["drop"].extra == []


def test_drop_floor_for_checkout_exceeds_prod(drop_config, prod):
    checkout = next(a for a in drop_config.autoscalers if a.name == "checkout-api")
    prod_floor = policy.find(prod, "HorizontalPodAutoscaler", "checkout-api")["spec"]["minReplicas"]
    assert checkout.drop_min > prod_floor
    assert checkout.normal_min == prod_floor


def test_rendered_for_an_opening_time_checkout_scales_up_30_minutes_before_and_down_after():
    result = render_cli("--opens-at", "2027-03-14T09:00:00+01:00", "--at", "2027-03-13T12:00:00Z")
    assert result.returncode == 0, result.stderr
    objects = render.load(result.stdout)
    config = render_drop.load_config(render_drop.OVERLAY / "drop.yaml")
    floors = {a.name: a for a in config.autoscalers}

    raise_spec, raise_container = cronjob(objects, "drop-raise-floor")
    # 09:00 at +01:00 is 08:00 UTC; 30 minutes before
    assert (raise_spec["schedule"], raise_spec["timeZone"], raise_spec["suspend"]) == ("30 7 14 3 *", "Etc/UTC", False)
    assert raise_container["args"][0] == "2027-03-14"
    assert f"checkout-api={floors['checkout-api'].drop_min}" in raise_container["args"]
    # the waiting room's status edge takes the crowd's polls: its floor goes up with the API's
    assert f"checkout-line-status={floors['checkout-line-status'].drop_min}" in raise_container["args"]

    lower_spec, lower_container = cronjob(objects, "drop-lower-floor")
    closes = datetime(2027, 3, 14, 8, 0, tzinfo=timezone.utc) + timedelta(
        minutes=config.window_minutes + config.lower_minutes_after)
    assert lower_spec["schedule"] == f"{closes.minute} {closes.hour} 14 3 *"
    assert f"checkout-api={floors['checkout-api'].normal_min}" in lower_container["args"]

    hpa = policy.find(objects, "HorizontalPodAutoscaler", "checkout-api")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (floors["checkout-api"].normal_min, floors["checkout-api"].max)
    assert "replicas" not in policy.find(objects, "Deployment", "checkout-api")["spec"]
    assert policy.check_drop(objects, render_drop.load_config(render_drop.OVERLAY / "drop.yaml",
                                                              "2027-03-14T09:00:00+01:00"),
                             render.render(render.K8S_DIR / "overlays" / "prod"),
                             datetime(2027, 3, 13, 12, tzinfo=timezone.utc)) == []


def test_rendering_warns_while_the_api_server_address_is_a_placeholder():
    result = render_cli("--opens-at", "2027-03-14T09:00:00+01:00")
    assert result.returncode == 0
    assert "drop-scaler-to-api-server still names the documentation address 192.0.2.1/32" in result.stderr


def test_an_opening_just_after_midnight_raises_the_floor_the_day_before():
    _, objects = render_drop.render_drop("2027-01-01T00:10:00Z")
    spec, container = cronjob(objects, "drop-raise-floor")
    assert spec["schedule"] == "40 23 31 12 *"
    assert container["args"][0] == "2026-12-31"


@pytest.mark.parametrize("option, value, message", [
    ("--opens-at", "2027-03-14T09:00:00", "must name its offset"),
    ("--opens-at", "next friday", "not an ISO 8601 time"),
    ("--at", "2027-03-14T09:00:00", "--at must name its offset"),
])
def test_a_time_without_offset_or_unreadable_is_refused(option, value, message):
    result = render_cli(option, value)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


OPENS = datetime(2027, 3, 14, 8, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("at, raised", [
    (OPENS - timedelta(days=1), False),
    (OPENS - timedelta(minutes=31), False),
    (OPENS - timedelta(minutes=30), True),  # the raise job's minute
    (OPENS + timedelta(minutes=30), True),
    (OPENS + timedelta(minutes=60 + 14), True),  # closed, but holds placed at the close may still be paid
    (OPENS + timedelta(minutes=60 + 15), False),  # the lower job's minute
    (OPENS + timedelta(days=365), False),
])
def test_a_rendering_carries_the_floor_the_schedule_gives_at_its_moment(drop_config, prod, at, raised):
    """Applied (or applied again) at any moment, the drop keeps the floor its CronJobs set then."""
    drop, objects = render_drop.render_drop(OPENS.isoformat(), at=at)
    for a in drop.autoscalers:
        hpa = policy.find(objects, "HorizontalPodAutoscaler", a.name)
        assert hpa["spec"]["minReplicas"] == (a.drop_min if raised else a.normal_min), a.name
    annotations = policy.find(objects, "HorizontalPodAutoscaler", "checkout-api")["metadata"]["annotations"]
    valid_from, valid_until = annotations.get(render_drop.VALID_FROM), annotations.get(render_drop.VALID_UNTIL)
    assert (valid_from is None or datetime.fromisoformat(valid_from) <= at)
    assert (valid_until is None or at < datetime.fromisoformat(valid_until))
    assert policy.check_drop(objects, drop, prod, at) == []


def test_a_rendering_for_one_moment_fails_the_checks_for_another(prod):
    drop, before = render_drop.render_drop(OPENS.isoformat(), at=OPENS - timedelta(days=1))
    problems = policy.check_drop(before, drop, prod, OPENS)
    assert "HorizontalPodAutoscaler/checkout-api: floor/ceiling 4/80, drop.yaml says 40/80 at 2027-03-14T08:00:00+00:00" \
        in problems


def test_scaler_may_only_patch_the_drop_autoscalers(drop):
    role = policy.find(drop, "Role", "drop-scaler")
    assert role["rules"] == [{"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
                              "resourceNames": ["checkout-api", "inventory-api", "accounts-api", "checkout-line-status"],
                              "verbs": ["patch"]}]
    binding = policy.find(drop, "RoleBinding", "drop-scaler")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "drop-scaler", "namespace": "floodgate"}]
    for name in ("drop-raise-floor", "drop-lower-floor"):
        spec, container = cronjob(drop, name)
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "drop-scaler"
        # the scaler runs on the checkout image prod deploys
        assert container["image"] == policy.pod_spec(policy.find(drop, "Deployment", "checkout-api"))["containers"][0]["image"]
    others = [o for o in policy.of_kind(drop, *policy.WORKLOADS) if policy.pod_spec(o).get("serviceAccountName") == "drop-scaler"]
    assert {o["metadata"]["name"] for o in others} == {"drop-raise-floor", "drop-lower-floor"}


def test_the_committed_overlay_alone_never_fires():
    """`kubectl kustomize overlays/drop` without render_drop: suspended, on a date that never comes."""
    objects = render.render(render_drop.OVERLAY)
    for name in ("drop-raise-floor", "drop-lower-floor"):
        spec, _ = cronjob(objects, name)
        assert spec["suspend"] is True and spec["schedule"] == "0 0 31 2 *"


def test_the_committed_overlay_alone_is_deployable_as_is(drop_config, prod):
    """Applied straight from `kubectl kustomize`, it is prod with dormant CronJobs: the APIs keep prod's
    autoscalers at their normal floors and ceilings, never a placeholder that pins them at one pod."""
    objects = render.render(render_drop.OVERLAY)
    assert policy.check_all(objects, dev=False) == []
    for a in drop_config.autoscalers:
        spec = policy.find(objects, "HorizontalPodAutoscaler", a.name)["spec"]
        assert (spec["minReplicas"], spec["maxReplicas"]) == (a.normal_min, a.max)
        assert spec == policy.find(prod, "HorizontalPodAutoscaler", a.name)["spec"]


def test_drop_yaml_is_the_one_place(drop_config):
    raw = yaml.safe_load((render_drop.OVERLAY / "drop.yaml").read_text())
    assert set(raw) == {"opens_at", "window_minutes", "raise_minutes_before", "lower_minutes_after", "autoscalers"}
    assert drop_config.raise_minutes_before == 30


def test_the_drop_checks_catch_a_floor_not_above_prod_and_a_stale_schedule(drop_config, prod):
    import dataclasses

    at = drop_config.opens_at - timedelta(days=1)
    _, drop = render_drop.render_drop(at=at)
    low = dataclasses.replace(drop_config, autoscalers=tuple(
        dataclasses.replace(a, drop_min=a.normal_min) if a.name == "checkout-api" else a
        for a in drop_config.autoscalers))
    assert "checkout-api: the drop floor 4 does not exceed prod's floor 4" in policy.check_drop(drop, low, prod, at)
    longer = dataclasses.replace(drop_config, window_minutes=drop_config.window_minutes + 30)
    problems = policy.check_drop(drop, longer, prod, at)
    assert len(problems) == 1 and problems[0].startswith("CronJob/drop-lower-floor: schedule")


def test_an_unknown_component_is_refused_by_name():
    with pytest.raises(render_drop.DropConfigError, match="no such component: kedda .*there are: keda, monitoring, tracing"):
        render_drop.render_drop("2027-01-01T00:10:00Z", components=["kedda"])
