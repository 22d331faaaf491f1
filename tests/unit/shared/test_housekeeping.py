"""What a consumer purges, and how a round goes: batches until one comes back short, a bound per
round, a failing database logged and tried again. No network (the purges' SQL runs against the
real PostgreSQL in tests/integration/test_housekeeping.py)."""
from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from services.checkout.bootstrap import bootstrap as checkout_bootstrap
from services.checkout.config import Settings as CheckoutSettings
from services.notifications.bootstrap import bootstrap as notifications_bootstrap
from services.notifications.config import Settings as NotificationsSettings
from shared.messaging.consumer import housekeeping_tasks
from shared.messaging.housekeeping import Housekeeper, purge

DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # never connected to: engines connect lazily


class Batches:
    """A purge whose batches delete `counts` rows in turn (0 after them); `failures` raise first."""

    def __init__(self, *counts: int, failures: int = 0):
        self.counts, self.failures, self.calls = list(counts), failures, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise sa.exc.OperationalError("DELETE", {}, Exception("the database is away"))
        return self.counts.pop(0) if self.counts else 0


def test_a_purge_goes_on_batch_after_batch_until_one_comes_back_short():
    batches = Batches(10, 10, 3, 10)
    assert purge("inbox", batches, batch_size=10) == 23 and batches.calls == 3


def test_a_round_deletes_at_most_its_bound_and_the_next_round_goes_on():
    batches = Batches(*[10] * 7)
    assert purge("inbox", batches, batch_size=10, max_batches=5) == 50
    assert purge("inbox", batches, batch_size=10, max_batches=5) == 20


def test_a_database_that_fails_a_round_is_logged_and_the_next_round_purges(caplog):
    inbox, log = Batches(4, failures=1), Batches(2)
    keeper = Housekeeper([("inbox", inbox), ("delivery log", log)], threading.Event(), interval_seconds=60,
                         batch_size=10)
    with caplog.at_level(logging.WARNING, logger="floodgate.messaging.housekeeping"):
        keeper.round()  # the inbox's fails; the delivery log's still runs
    assert [record.what for record in caplog.records] == ["inbox"] and log.calls == 1
    keeper.round()
    assert inbox.calls == 2 and inbox.counts == []


def test_checkout_purges_its_inbox_and_notifications_its_delivery_log_past_their_retentions():
    checkout = checkout_bootstrap("consumer", CheckoutSettings(service_name="checkout", database_url=DATABASE,
                                                               inbox_retention_seconds=3600))
    notifications = notifications_bootstrap("consumer", NotificationsSettings(
        service_name="notifications", database_url=DATABASE), mailer=object())
    try:
        [(name, task)] = housekeeping_tasks(checkout)
        assert name == "inbox" and task.args[1] == 3600
        [(name, task)] = housekeeping_tasks(notifications)  # no inbox: its delivery log is keyed by event id
        assert name == "delivery log" and task.args[1] == 30 * 24 * 3600
    finally:
        checkout.close()
        notifications.close()
