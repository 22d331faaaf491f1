"""The email figures and every service's dead letters, as admin JSON for the control room
(`GET /figures`).

The email figures are /metrics' own: `EmailMetrics` (metrics.py) is asked for them, as Prometheus
asks it, and its samples are read into plain values, so the page shows what an alert reads and no
second query can drift from the first. A figure whose source (the delivery log, the broker) could
not be read is null, and `sources` says which.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from prometheus_client.registry import Collector

from services.notifications.metrics import PREFIX
from shared.config import Settings
from shared.control_room import samples
from shared.messaging import connection as amqp
from shared.messaging import topology
from shared.messaging.metrics import queue_depths


def email_figures(collector: Collector, service: str) -> dict:
    """What `collector` (an `EmailMetrics`) reports, as the control room shows it: the `backlog`
    (events waiting for their email: in the work queue and the retry tiers), `oldest_unsent_age_seconds`
    (the oldest event tried and still waiting, see metrics.py for why not an untried one),
    `last_sent_at` and `last_delivery_lag_seconds`, deliveries `retrying` and `dead`, `sent`."""
    found = samples(collector.collect())

    def value(name: str, **labels) -> float | None:
        return found.get((f"{PREFIX}_{name}", tuple(sorted(labels.items()))))

    queues = {dict(labels)["queue"]: int(depth) for (name, labels), depth in found.items()
              if name == f"{PREFIX}_queue_messages"}
    waits, dead = topology.waiting_queues(service), topology.dead_letter_queue(service)
    in_work = sum(queues[queue] for queue in waits if queue in queues) if queues else None
    in_retry = sum(depth for queue, depth in queues.items() if queue not in (*waits, dead)) if queues else None
    last_sent = value("last_sent_timestamp_seconds")
    return {
        "backlog": None if in_work is None else in_work + in_retry,
        "in_work_queue": in_work,
        "in_retry_tiers": in_retry,
        "oldest_unsent_age_seconds": value("oldest_pending_age_seconds"),
        "last_sent_at": datetime.fromtimestamp(last_sent, timezone.utc) if last_sent else None,
        "last_delivery_lag_seconds": value("last_delivery_lag_seconds"),
        "retrying": _count(value("deliveries", status="retrying")),
        "dead": _count(value("deliveries", status="dead")),
        "sent": _count(value("emails_sent_total")),
        "sources": {source: value("metrics_source_up", source=source) == 1 for source in ("database", "broker")},
    }


def dead_letters(settings: Settings, timeout_seconds: float,
                 depths: Callable[[Settings, list[str], float], dict[str, int]] = queue_depths) -> dict[str, int] | None:
    """Messages parked in each consuming service's dead-letter queue (passive declares, which
    change nothing and touch no message); None when the broker does not answer."""
    queues = {service: topology.dead_letter_queue(service) for service in sorted(topology.SUBSCRIPTIONS)}
    try:
        parked = depths(settings, list(queues.values()), timeout_seconds)
    except amqp.RECOVERABLE:
        return None
    return {service: parked[queue] for service, queue in queues.items()}


def _count(value: float | None) -> int | None:
    return None if value is None else int(value)
