"""Render the drop overlay for an opening time: `python -m deploy.render_drop [--opens-at ISO] [--at ISO]
[--component NAME ...]` (the optional components the cluster runs, as its every apply names them).

Everything about a drop is set in deploy/k8s/overlays/drop/drop.yaml: when it opens, how long it
lasts, and each autoscaler's floor outside the drop, floor during it and ceiling. This renders the
overlay with `kubectl kustomize` and fills in from it

- each HorizontalPodAutoscaler's minReplicas: the floor the schedule sets at the moment the
  rendering is for (`--at`, default now): the drop floor from the raise job's minute until the lower
  job's, the normal floor before and after. So a rendering applied (or applied again) at any time
  keeps the floor the CronJobs set; each autoscaler carries the period its floor holds for
  (`floodgate.io/floors-valid-from`, `-until`), and `python -m deploy.apply` refuses it outside;
- each autoscaler's maxReplicas;
- the drop-raise-floor CronJob: `raise_minutes_before` (30) before the opening, it sets every
  autoscaler's floor to its drop floor,
- the drop-lower-floor CronJob: `lower_minutes_after` after the close, it sets them back,
- the drop-scaler Role's resourceNames: exactly those autoscalers.

Schedules are UTC (the CronJobs carry `timeZone: Etc/UTC`); an opening time must name its offset.
"""
from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import yaml

from deploy import render

OVERLAY = render.K8S_DIR / "overlays" / "drop"
RAISE_JOB = "drop-raise-floor"
LOWER_JOB = "drop-lower-floor"
SCALER_ROLE = "drop-scaler"
SCALER_EGRESS = "drop-scaler-to-api-server"
DOCUMENTATION_ADDRESSES = ipaddress.ip_network("192.0.2.0/24")  # RFC 5737, as committed
VALID_FROM = "floodgate.io/floors-valid-from"
VALID_UNTIL = "floodgate.io/floors-valid-until"


def now() -> datetime:
    """The moment a rendering is for when none is given."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Autoscaler:
    name: str
    normal_min: int
    drop_min: int
    max: int


@dataclass(frozen=True)
class Drop:
    opens_at: datetime
    window_minutes: int
    raise_minutes_before: int
    lower_minutes_after: int
    autoscalers: tuple[Autoscaler, ...]

    @property
    def closes_at(self) -> datetime:
        return self.opens_at + timedelta(minutes=self.window_minutes)

    @property
    def raise_at(self) -> datetime:
        return (self.opens_at - timedelta(minutes=self.raise_minutes_before)).astimezone(timezone.utc)

    @property
    def lower_at(self) -> datetime:
        return (self.closes_at + timedelta(minutes=self.lower_minutes_after)).astimezone(timezone.utc)

    def raised(self, moment: datetime) -> bool:
        """Whether the floors are up at that moment: from the raise job's minute to the lower job's."""
        return self.raise_at <= moment < self.lower_at

    def floor(self, autoscaler: Autoscaler, moment: datetime) -> int:
        """The floor the schedule gives that autoscaler at that moment."""
        return autoscaler.drop_min if self.raised(moment) else autoscaler.normal_min

    def floors_period(self, moment: datetime) -> tuple[datetime | None, datetime | None]:
        """The stretch of the schedule around that moment in which the floors stay the same."""
        if moment < self.raise_at:
            return None, self.raise_at
        if self.raised(moment):
            return self.raise_at, self.lower_at
        return self.lower_at, None


class DropConfigError(ValueError):
    pass


def parse_time(text: str, what: str = "the opening time") -> datetime:
    try:
        moment = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise DropConfigError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise DropConfigError(f"{what} must name its offset (e.g. +01:00 or Z): {text!r}")
    return moment


def load_config(path: Path, opens_at: str | None = None) -> Drop:
    raw = yaml.safe_load(path.read_text())
    try:
        autoscalers = tuple(
            Autoscaler(name, int(spec["normal_min"]), int(spec["drop_min"]), int(spec["max"]))
            for name, spec in raw["autoscalers"].items()
        )
        drop = Drop(
            opens_at=parse_time(opens_at if opens_at else raw["opens_at"]),
            window_minutes=int(raw["window_minutes"]),
            raise_minutes_before=int(raw.get("raise_minutes_before", 30)),
            lower_minutes_after=int(raw.get("lower_minutes_after", 0)),
            autoscalers=autoscalers,
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise DropConfigError(f"{path}: missing or malformed setting: {error}") from None
    if drop.window_minutes <= 0 or drop.raise_minutes_before < 0 or drop.lower_minutes_after < 0:
        raise DropConfigError(f"{path}: the window must be positive and the offsets not negative")
    for a in autoscalers:
        if not 1 <= a.normal_min <= a.drop_min <= a.max:
            raise DropConfigError(f"{path}: {a.name}: need 1 <= normal_min <= drop_min <= max")
    return drop


def cron(moment: datetime) -> str:
    """A five-field schedule for that UTC minute (it names a day of a month, not a year)."""
    moment = moment.astimezone(timezone.utc)
    return f"{moment.minute} {moment.hour} {moment.day} {moment.month} *"


def _find(objects: list[dict], kind: str, name: str) -> dict:
    for obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    raise DropConfigError(f"the drop overlay has no {kind} {name}")


def _configure_job(cronjob: dict, when: datetime, floors: dict[str, int]) -> None:
    cronjob["spec"]["schedule"] = cron(when)
    cronjob["spec"]["suspend"] = False
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    container["args"] = [when.date().isoformat()] + [f"{name}={floor}" for name, floor in floors.items()]


def fill(objects: list[dict], drop: Drop, at: datetime) -> list[dict]:
    """Set the drop's values, as they are at moment `at`, on the rendered overlay's objects (in place)."""
    valid_from, valid_until = drop.floors_period(at)
    for a in drop.autoscalers:
        hpa = _find(objects, "HorizontalPodAutoscaler", a.name)
        hpa["spec"]["minReplicas"] = drop.floor(a, at)
        hpa["spec"]["maxReplicas"] = a.max
        annotations = hpa["metadata"].setdefault("annotations", {})
        if valid_from:
            annotations[VALID_FROM] = valid_from.isoformat()
        if valid_until:
            annotations[VALID_UNTIL] = valid_until.isoformat()
    _configure_job(_find(objects, "CronJob", RAISE_JOB), drop.raise_at, {a.name: a.drop_min for a in drop.autoscalers})
    _configure_job(_find(objects, "CronJob", LOWER_JOB), drop.lower_at, {a.name: a.normal_min for a in drop.autoscalers})
    role = _find(objects, "Role", SCALER_ROLE)
    role["rules"] = [{
        "apiGroups": ["autoscaling"],
        "resources": ["horizontalpodautoscalers"],
        "resourceNames": [a.name for a in drop.autoscalers],
        "verbs": ["patch"],
    }]
    return objects


def placeholder_addresses(objects: list[dict]) -> list[str]:
    """The documentation addresses still standing for the API server in the scaler's egress rule."""
    policy = _find(objects, "NetworkPolicy", SCALER_EGRESS)
    return [peer["ipBlock"]["cidr"] for rule in policy["spec"].get("egress", []) for peer in rule.get("to", [])
            if "ipBlock" in peer and ipaddress.ip_network(peer["ipBlock"]["cidr"]).subnet_of(DOCUMENTATION_ADDRESSES)]


def components_dir(overlay: Path) -> Path:
    """The optional components beside `overlay`: its k8s directory's `components/`."""
    return overlay.parent.parent / "components"


def components_of(overlay: Path) -> list[str]:
    """The names of the optional components beside `overlay`."""
    return sorted(path.name for path in components_dir(overlay).iterdir() if path.is_dir())


def render_drop(opens_at: str | None = None, overlay: Path = OVERLAY, config: Path | None = None,
                at: datetime | None = None, components: Sequence[str] = ()) -> tuple[Drop, list[dict]]:
    """The drop's configuration and the overlay rendered for it, with the floors of moment `at`
    (default now), and the optional `components` the cluster runs (KEDA, tracing, monitoring): an
    apply without one takes back what it added (KEDA's consumer gets prod's fixed count again,
    which the autoscaler then fights; the processes lose their tracing settings and roll out)."""
    drop = load_config(config or overlay / "drop.yaml", opens_at)
    unknown = sorted(set(components) - set(components_of(overlay)))
    if unknown:
        raise DropConfigError(f"no such component: {', '.join(unknown)} (there are: {', '.join(components_of(overlay))})")
    objects = (render.render_with_components(overlay, [components_dir(overlay) / c for c in components])
               if components else render.render(overlay))
    return drop, fill(objects, drop, at or now())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--opens-at", default=None, help="ISO 8601 opening time with offset (default: drop.yaml's)")
    parser.add_argument("--overlay", type=Path, default=OVERLAY)
    parser.add_argument("--at", default=None,
                        help="ISO 8601 moment whose floors to render, with offset (default: now)")
    parser.add_argument("--output", "-o", type=Path, default=None, help="write here instead of stdout")
    parser.add_argument("--component", action="append", default=[],
                        help="add deploy/k8s/components/NAME, as every apply of the cluster does (repeatable)")
    args = parser.parse_args(argv)
    try:
        at = parse_time(args.at, "--at") if args.at else now()
        drop, objects = render_drop(args.opens_at or None, args.overlay, at=at, components=args.component)
    except (DropConfigError, render.RenderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for cidr in placeholder_addresses(objects):
        print(f"warning: {SCALER_EGRESS} still names the documentation address {cidr}: set your API server's "
              f"address in {args.overlay / 'api-server.yaml'}, or the raise job cannot reach it", file=sys.stderr)
    _, valid_until = drop.floors_period(at)
    if drop.raised(at):
        print(f"note: rendered inside the drop ({at.isoformat()}): the floors are the drop floors, as the "
              f"raise job sets them; this rendering holds until {valid_until.isoformat()}", file=sys.stderr)
    elif at >= drop.lower_at:
        print(f"warning: the drop's floors were lowered at {drop.lower_at.isoformat()}, which has passed: "
              "the CronJobs will not raise them again", file=sys.stderr)
    else:
        print(f"note: this rendering holds until {valid_until.isoformat()}; render again to apply it later",
              file=sys.stderr)
    text = render.dump(objects)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    print(
        f"drop opens {drop.opens_at.isoformat()}, closes {drop.closes_at.isoformat()}; floors raised at "
        f"{drop.raise_at.isoformat()} ({cron(drop.raise_at)}), lowered at {drop.lower_at.isoformat()} "
        f"({cron(drop.lower_at)}); "
        + ", ".join(f"{a.name} {a.normal_min}->{a.drop_min} (max {a.max})" for a in drop.autoscalers),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
