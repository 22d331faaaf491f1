"""The monitoring component (deploy/k8s/components/monitoring): its alert rules, its dashboard, and
the metrics they may name.

    python -m deploy.monitoring     # writes prometheusrule.yaml from rules/floodgate.rules.yaml

The rules are written once, as a plain Prometheus rules file; the PrometheusRule the component
applies for the Prometheus Operator is generated from it, and `make k8s-validate` refuses the two
when they differ. `defined_metrics()` reads, from the Python code, every metric Floodgate exposes
and its labels, so that a rule or a panel naming a metric nobody defines (a typo, a rename) fails
a test instead of staying silent on drop day.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import yaml

from deploy import render

ROOT = Path(__file__).resolve().parent.parent
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "monitoring"
RULES = COMPONENT / "rules" / "floodgate.rules.yaml"
PROMETHEUS_RULE = COMPONENT / "prometheusrule.yaml"
DASHBOARD = COMPONENT / "dashboards" / "floodgate.json"
# where the metrics are defined: the services and their common library
CODE = (ROOT / "shared", ROOT / "services")

_HEADER = """\
# Generated from rules/floodgate.rules.yaml by `python -m deploy.monitoring`: edit that file, then
# run it (make k8s-validate refuses this one when they differ). The Prometheus Operator loads it.
"""


def rules() -> dict:
    """The rules file, as Prometheus reads it."""
    return yaml.safe_load(RULES.read_text())


def prometheus_rule() -> dict:
    """The rules file wrapped for the Prometheus Operator."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "floodgate",
            "namespace": "floodgate",
            "labels": {"app.kubernetes.io/name": "floodgate", "app.kubernetes.io/component": "monitoring"},
        },
        "spec": rules(),
    }


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def rule_expressions() -> dict[str, str]:
    """Each rule's name (alert or record) and its expression."""
    return {rule.get("alert") or rule["record"]: rule["expr"]
            for group in rules()["groups"] for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    """Each dashboard query, named by its panel's title and its refId."""
    return {f"{panel['title']} ({target['refId']})": target["expr"]
            for panel in dashboard()["panels"] for target in panel.get("targets", [])}


# --- the metrics the code defines ---------------------------------------------------------------

_COUNTERS = {"Counter", "CounterMetricFamily"}
_HISTOGRAMS = {"Histogram", "HistogramMetricFamily"}
_GAUGES = {"Gauge", "GaugeMetricFamily"}


def defined_metrics(code: tuple[Path, ...] = CODE) -> dict[str, set[str]]:
    """Every series name the code exposes (a counter's with `_total`, a histogram's `_bucket`,
    `_sum` and `_count`) and its labels (a histogram's buckets add `le`)."""
    found: dict[str, set[str]] = {}
    for directory in code:
        for path in sorted(directory.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            constants = _module_strings(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and _called(node) in _COUNTERS | _HISTOGRAMS | _GAUGES and node.args:
                    name = _string(node.args[0], constants)
                    if name is None or not name.startswith("floodgate_"):
                        continue
                    labels = set(_labels(node))
                    kind = _called(node)
                    if kind in _COUNTERS:
                        found[name.removesuffix("_total") + "_total"] = labels
                    elif kind in _HISTOGRAMS:
                        found[name + "_bucket"] = labels | {"le"}
                        found[name + "_sum"] = found[name + "_count"] = labels
                    else:
                        found[name] = labels
    return found


def _called(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "string" assignments (a prefix, say)."""
    return {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)}


def _string(node: ast.expr, constants: dict[str, str]) -> str | None:
    """A literal string, or an f-string of literals and module constants."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Name) \
                    and value.value.id in constants:
                parts.append(constants[value.value.id])
            else:
                return None
        return "".join(parts)
    return None


def _labels(call: ast.Call) -> list[str]:
    labels = next((k.value for k in call.keywords if k.arg in ("labels", "labelnames")), None)
    if labels is None and len(call.args) >= 3:
        labels = call.args[2]
    if isinstance(labels, (ast.List, ast.Tuple)):
        return [element.value for element in labels.elts if isinstance(element, ast.Constant)]
    return []


# --- the metrics an expression names ------------------------------------------------------------

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
             "bool", "inf", "nan", "atan2"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_DURATION = re.compile(r"\b\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y)\b")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def named_metrics(expr: str) -> dict[str, set[str]]:
    """The metric names a PromQL expression selects, each with the label names it matches on.

    A small reading of PromQL, enough for ours: selectors `name{label="..."}` and bare names; a
    word followed by `(` is a function or an aggregation, one after `by`, `on` and the like a
    label, and strings are values."""
    named: dict[str, set[str]] = {}
    strings: list[str] = []
    text = _STRING.sub(lambda m: strings.append(m.group(0)) or f'"{len(strings) - 1}"', expr)
    for match in _SELECTOR.finditer(text):
        if match.group(1) and match.group(1) not in _KEYWORDS:
            matchers = {m.split("=")[0].rstrip("!~ ").strip() for m in match.group(2).split(",") if m.strip()}
            named.setdefault(match.group(1), set()).update(matchers)
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _DURATION.sub(" ", text)
    text = re.sub(r'"\d+"', " ", text)
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        following = text[match.end():].lstrip()[:1]
        if word in _KEYWORDS or following == "(":
            continue
        named.setdefault(word, set())
    return named


def grouping_labels(expr: str) -> set[str]:
    """The labels an expression groups or matches on (`by`, `without`, `on`, `ignoring`, ...)."""
    text = _STRING.sub('""', expr)
    return {label.strip() for match in _GROUPING.finditer(text) for label in match.group(2).split(",")
            if label.strip()}


# The labels every scraped series gets from its target: Prometheus' own, and those the Prometheus
# Operator's PodMonitor sets (`endpoint` is the scraped port's name, "metrics").
_ADDED_BY_PROMETHEUS = {"job", "instance", "namespace", "pod", "container", "endpoint", "__name__"}
_LABEL_REPLACE = re.compile(r"label_replace\s*\(.*?,\s*\"([A-Za-z_][A-Za-z0-9_]*)\"", re.DOTALL)


def unknown_metrics(expressions: dict[str, str], defined: dict[str, set[str]]) -> list[str]:
    """Problems: metrics an expression names that the code does not define, labels it matches
    that the metric does not have, and labels it groups by that none of its metrics has (besides
    those Prometheus adds when it scrapes: job, instance, pod, ...)."""
    problems = []
    for where, expr in expressions.items():
        named = named_metrics(expr)
        for name, labels in named.items():
            if name not in defined:
                problems.append(f"{where}: {name} is not a metric Floodgate defines")
            elif labels - defined[name] - _ADDED_BY_PROMETHEUS:
                problems.append(f"{where}: {name} has no label {', '.join(sorted(labels - defined[name]))}")
        if not named.keys() <= defined.keys():
            continue  # said above; its labels are unknown
        known = set().union(*(defined[name] for name in named), _ADDED_BY_PROMETHEUS, _LABEL_REPLACE.findall(expr))
        if grouping_labels(expr) - known:
            problems.append(f"{where}: no metric it names has the label(s) "
                            f"{', '.join(sorted(grouping_labels(expr) - known))}")
    return problems


def overwritten_labels(defined: dict[str, set[str]]) -> list[str]:
    """Problems: metrics the code exports with a label the scrape sets on its target. Prometheus
    keeps the target's (honor_labels is off) and renames the exported one `exported_<label>`, so a
    rule matching the code's label finds nothing: `endpoint="/orders"` met `endpoint="metrics"`,
    and every alert on the order path was silent."""
    return [f"{name}: its label {label} is one the scrape sets on every target (Prometheus renames the "
            f"exported one exported_{label}, and rules matching it find nothing)"
            for name, labels in sorted(defined.items()) for label in sorted(labels & _ADDED_BY_PROMETHEUS)]


def main() -> int:
    PROMETHEUS_RULE.write_text(_HEADER + render.dump([prometheus_rule()]))
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)} from {RULES.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
