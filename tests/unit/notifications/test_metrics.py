"""Notifications' email figures for /metrics: when the latest email went out (the alert on late
email reads it) and the dead letters under the name every service reports them by. The
delivery log's and the broker's answers are stood in for: no database, no broker."""
from datetime import datetime, timezone

import pika

from services.notifications.config import Settings
from services.notifications.metrics import EmailMetrics
from tests.unit.shared.scrape import scrape

NOW = datetime(2014, 10, 27, 15, 5, tzinfo=timezone.utc)
TOTALS = {"sent": 40, "retries": 3, "dead_letters": 1, "retrying": 2, "dead": 1,
          "oldest_pending": datetime(2014, 10, 27, 15, 4, 10, tzinfo=timezone.utc), "now": NOW,
          "last_lag": 4.5, "last_sent": datetime(2014, 10, 27, 15, 4, 58, tzinfo=timezone.utc).timestamp()}


class ReadEmailMetrics(EmailMetrics):
    def __init__(self, totals=TOTALS, depths=None, broker_error=None):
        super().__init__(Settings(service_name="notifications"), session_factory=None)
        self.totals, self.depths, self.broker_error = totals, depths, broker_error

    def _delivery_totals(self):
        return dict(self.totals)

    def _queue_depths(self):
        if self.broker_error:
            raise self.broker_error
        return self.depths


DEPTHS = {"notifications.events": 120, "notifications.dead": 3, "notifications.retry.10000ms": 2}


def test_the_email_figures_say_when_the_last_email_went_out_and_how_many_are_parked():
    samples = scrape(ReadEmailMetrics(depths=DEPTHS))

    assert samples[("floodgate_notifications_last_sent_timestamp_seconds",)] == TOTALS["last_sent"]
    assert samples[("floodgate_notifications_oldest_pending_age_seconds",)] == 50
    assert samples[("floodgate_notifications_queue_messages", ("queue", "notifications.events"))] == 120
    assert samples[("floodgate_dead_letters", ("service", "notifications"))] == 3


def test_before_the_first_email_the_last_one_went_out_at_zero():
    samples = scrape(ReadEmailMetrics(totals=dict(TOTALS, last_sent=0.0), depths=DEPTHS))
    assert samples[("floodgate_notifications_last_sent_timestamp_seconds",)] == 0


def test_without_the_broker_no_dead_letters_are_reported_and_the_broker_is_said_to_be_down():
    samples = scrape(ReadEmailMetrics(broker_error=pika.exceptions.AMQPConnectionError("away")))

    assert not any(name == "floodgate_dead_letters" for name, *_ in samples)
    assert samples[("floodgate_notifications_metrics_source_up", ("source", "broker"))] == 0
    assert samples[("floodgate_notifications_metrics_source_up", ("source", "database"))] == 1
