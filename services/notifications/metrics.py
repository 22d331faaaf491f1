"""Email metrics, read from the delivery log and the broker when Prometheus scrapes the API.

The consumers are separate processes (several, possibly on other machines), so their counts are
not kept in their memory: the delivery log already knows every send, retry and dead letter, for
all consumers together and across restarts, and the broker knows how many events wait.

- `floodgate_notifications_emails_sent_total`, `..._retries_total`, `..._dead_lettered_total`:
  from the delivery log, with what its purged rows counted (`delivery_totals_purged`): counters,
  since a row's columns only grow and a purge carries a row's counts as it deletes it.
- `floodgate_notifications_queue_messages{queue}`: messages ready in the work queue, the
  returned lane, each retry tier and the dead-letter queue (a passive declare, which changes nothing).
- `floodgate_notifications_oldest_pending_age_seconds`: how long the oldest event that was tried
  and is still waiting for its email (status `retrying`) has waited since it occurred. An event
  still in the work queue has not been tried yet; the broker cannot say its age without
  delivering it (which counts towards its delivery limit), so that backlog shows as queue depth.
- `floodgate_notifications_last_delivery_lag_seconds`: occurred-to-sent time of the latest email,
  which is how long the queue currently makes email wait when it is merely slow.
- `floodgate_notifications_last_sent_timestamp_seconds`: when the latest email was sent (Unix
  time; 0 before the first): with events waiting in the work queue, `time()` minus it says how
  long no email has gone out (the consumer stopped, say), which the alert on late email reads.
- `floodgate_dead_letters{service="notifications"}`: the dead-letter queue's depth, under the
  name every consuming service reports it by (shared/messaging/metrics.py).
"""
from __future__ import annotations

import logging

import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.messaging import connection as amqp
from shared.messaging import topology
from shared.messaging.metrics import dead_letters_family, queue_depths
from services.notifications.config import Settings
from services.notifications.models import SENT, Delivery
from services.notifications.repository import DeliveryLog

log = logging.getLogger("floodgate.notifications")
PREFIX = "floodgate_notifications"


class EmailMetrics(Collector):
    def __init__(self, settings: Settings, session_factory):
        self.settings = settings
        self.session_factory = session_factory

    def collect(self):
        up = GaugeMetricFamily(f"{PREFIX}_metrics_source_up", "Whether /metrics could read a source", labels=["source"])
        try:
            totals = self._delivery_totals()
            up.add_metric(["database"], 1)
        except Exception as error:
            log.warning("metrics: delivery log unreadable", extra={"error": repr(error)})
            totals = None
            up.add_metric(["database"], 0)
        if totals is not None:
            yield CounterMetricFamily(f"{PREFIX}_emails_sent", "Emails accepted by the SMTP server", value=totals["sent"])
            yield CounterMetricFamily(
                f"{PREFIX}_retries", "Failed attempts sent to a retry tier", value=totals["retries"]
            )
            yield CounterMetricFamily(
                f"{PREFIX}_dead_lettered", "Events parked in the dead-letter queue", value=totals["dead_letters"]
            )
            deliveries = GaugeMetricFamily(f"{PREFIX}_deliveries", "Deliveries by status", labels=["status"])
            for status in ("retrying", "dead"):
                deliveries.add_metric([status], totals[status])
            yield deliveries
            oldest = totals["oldest_pending"]
            age = max(0.0, (totals["now"] - oldest).total_seconds()) if oldest is not None else 0.0
            yield GaugeMetricFamily(
                f"{PREFIX}_oldest_pending_age_seconds",
                "Age of the oldest event tried and still waiting for its email",
                value=age,
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_last_delivery_lag_seconds",
                "Seconds from the latest sent email's event to its sending",
                value=totals["last_lag"],
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_last_sent_timestamp_seconds",
                "When the latest email was sent (Unix time; 0 before the first)",
                value=totals["last_sent"],
            )
        try:
            depths = self._queue_depths()
            up.add_metric(["broker"], 1)
        except amqp.RECOVERABLE as error:
            log.warning("metrics: broker unreadable", extra={"error": repr(error)})
            depths = None
            up.add_metric(["broker"], 0)
        if depths is not None:
            queues = GaugeMetricFamily(f"{PREFIX}_queue_messages", "Messages ready in a queue", labels=["queue"])
            for queue, depth in depths.items():
                queues.add_metric([queue], depth)
            yield queues
            service = self.settings.service_name
            yield dead_letters_family(service, depths[topology.dead_letter_queue(service)])
        yield up

    def _delivery_totals(self) -> dict:
        timeout_ms = int(self.settings.metrics_query_timeout_seconds * 1000)
        with self.session_factory() as session:
            session.execute(sa.text(f"SET LOCAL statement_timeout = {timeout_ms}"))
            totals = DeliveryLog(session).totals()
            # a sent delivery is never updated again, so its updated_at is its sent_at: the index
            # deliveries_status (status, updated_at) finds the latest without a scan
            latest = session.execute(
                sa.select(Delivery.sent_at, Delivery.sent_at - Delivery.occurred_at)
                .where(Delivery.status == SENT)
                .order_by(Delivery.updated_at.desc(), Delivery.id.desc())  # the row the purge keeps
                .limit(1)
            ).first()
            sent_at, lag = latest if latest is not None else (None, None)
            totals["last_lag"] = max(0.0, lag.total_seconds()) if lag is not None else 0.0
            totals["last_sent"] = sent_at.timestamp() if sent_at is not None else 0.0
            session.rollback()
        return totals

    def _queue_depths(self) -> dict[str, int]:
        service = self.settings.service_name
        queues = [*topology.waiting_queues(service), topology.dead_letter_queue(service)]
        queues += [topology.retry_queue(service, delay)
                   for delay in topology.retry_delays(service, self.settings.retry_delays_ms)]
        return queue_depths(self.settings, queues, self.settings.metrics_query_timeout_seconds)
