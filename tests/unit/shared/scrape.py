"""What Prometheus would read from collectors: their page, parsed back."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def scrape(*collectors) -> dict[tuple, float]:
    """The samples /metrics would show, as {(name, (label, value)...): value}, read back from the
    text Prometheus parses (so a malformed page fails here)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return samples
