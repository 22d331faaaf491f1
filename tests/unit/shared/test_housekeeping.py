"""What a consumer purges, and how a round goes: batches until one comes back short, a bound per
round, a failing task logged and tried again, a busy machine skipped, a stop heeded. No network
(the purges' SQL runs against the real PostgreSQL in tests/integration/test_housekeeping.py)."""
from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from devtools.client import poll
from services.checkout.bootstrap import bootstrap as checkout_bootstrap
from services.checkout.config import Settings as CheckoutSettings
from services.notifications.bootstrap import bootstrap as notifications_bootstrap
from services.notifications.config import Settings as NotificationsSettings
from shared.messaging.consumer import housekeeping_tasks
from shared.messaging.housekeeping import Housekeeper, purge

DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # never connected to: engines connect lazily


class Batches:
    """A purge whose batches delete `counts` rows in turn (0 after them); `failures` raise first;
    `sizes` are the batch sizes it was asked for."""

    def __init__(self, *counts: int, failures: list[Exception] | None = None):
        self.counts, self.failures, self.sizes = list(counts), list(failures or []), []

    def __call__(self, size: int) -> int:
        self.sizes.append(size)
        if self.failures:
            raise self.failures.pop(0)
        return self.counts.pop(0) if self.counts else 0


def keeper(*tasks, busy=lambda: False, stop=None) -> Housekeeper:
    return Housekeeper(list(tasks), stop or threading.Event(), interval_seconds=3600, busy=busy, batch_size=10)


def test_a_purge_goes_on_batch_after_batch_until_one_comes_back_short():
    batches = Batches(10, 10, 3, 10)
    assert purge("inbox", batches, batch_size=10) == (23, False) and batches.sizes == [10, 10, 10]


def test_a_round_deletes_at_most_its_bound_and_says_rows_may_be_left():
    batches = Batches(*[10] * 7)
    assert purge("inbox", batches, batch_size=10, max_batches=5) == (50, True)
    assert purge("inbox", batches, batch_size=10, max_batches=5) == (20, False)


def test_a_task_that_fails_is_logged_the_others_run_and_the_next_round_purges(caplog):
    database_away = sa.exc.OperationalError("DELETE", {}, Exception("the database is away"))
    inbox, log = Batches(4, failures=[database_away]), Batches(2, failures=[ValueError("a bug")])
    rounds = keeper(("inbox", inbox), ("delivery log", log))
    with caplog.at_level(logging.WARNING, logger="floodgate.messaging.housekeeping"):
        rounds.round()  # a database error and a bug alike: logged, and the round goes on
    assert [record.what for record in caplog.records] == ["inbox", "delivery log"]
    rounds.round()
    assert inbox.counts == [] and log.counts == []


def running(rounds: Housekeeper):
    rounds.start()
    return rounds


def test_a_busy_machine_puts_the_round_off_for_a_while_not_for_good():
    looked, inbox, stop = [], Batches(4), threading.Event()

    def busy() -> bool:
        looked.append(True)
        return True

    running(Housekeeper([("inbox", inbox)], stop, interval_seconds=3600, busy=busy, batch_size=10,
                        first_round_seconds=0.01, catch_up_seconds=0.01, max_put_off_seconds=0.045))
    try:
        poll(lambda: inbox.sizes, timeout=5, interval=0.01, what="the round, put off no longer")
        assert len(looked) == 5  # put off a catch-up wait at a time, up to its bound
    finally:
        stop.set()


def test_a_round_that_stops_at_its_bound_is_followed_by_another_soon_not_an_interval_later():
    stop = threading.Event()
    backlog = Batches(*[10] * 45)  # twenty batches a round: three rounds
    running(Housekeeper([("inbox", backlog)], stop, interval_seconds=3600, batch_size=10,
                        first_round_seconds=0.01, catch_up_seconds=0.01))
    try:
        poll(lambda: not backlog.counts and len(backlog.sizes) == 46, timeout=5, interval=0.01,
             what="the backlog purged over three rounds")
    finally:
        stop.set()


def test_the_thread_stops_when_the_consumer_does_between_batches():
    stop = threading.Event()

    def stopping_after_a_batch(size: int) -> int:
        stop.set()  # SIGTERM during the batch
        return size

    rounds = keeper(("inbox", stopping_after_a_batch), stop=stop)
    assert purge("inbox", stopping_after_a_batch, batch_size=10, stop=stop) == (10, True)  # one batch, not twenty
    rounds.start()
    poll(lambda: not rounds.thread.is_alive(), timeout=5, what="the thread to end on the stop")


def test_checkout_purges_its_inbox_and_refused_keys_and_notifications_its_delivery_log_past_their_retentions():
    checkout = checkout_bootstrap("consumer", CheckoutSettings(service_name="checkout", database_url=DATABASE,
                                                               inbox_retention_seconds=3600))
    notifications = notifications_bootstrap("consumer", NotificationsSettings(
        service_name="notifications", database_url=DATABASE), mailer=object())
    try:
        [(inbox, task), (keys, purge_keys)] = housekeeping_tasks(checkout)
        assert inbox == "inbox" and task.args[1] == 3600
        assert keys == "refused idempotency keys" and purge_keys.args[1] == 2 * 24 * 3600
        [(name, task)] = housekeeping_tasks(notifications)  # no inbox: its delivery log is keyed by event id
        assert name == "delivery log" and task.args[1] == 30 * 24 * 3600
    finally:
        checkout.close()
        notifications.close()
