"""Notifications' delivery log against the real PostgreSQL: the one statement an email writes
also tells whether an earlier attempt's email was already accepted, so a redelivered event whose
inbox row is gone is still mailed once."""
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from services.notifications.bootstrap import MIGRATIONS
from services.notifications.repository import UnitOfWork
from devtools.client import poll
from shared.db import make_engine
from shared.migrate import upgrade
from tests.integration.database import migrated_engine, scratch_database


@pytest.fixture
def unit_of_work(infra):
    with migrated_engine(infra, "deliveries", MIGRATIONS) as engine:
        yield lambda: UnitOfWork(orm.sessionmaker(engine), "notifications")


def attempt(event_id: str) -> dict:
    return {"event_id": event_id, "event_type": "order.placed", "order_id": "o-1", "to_address": "ada@example.test",
            "subject": "Your order", "message_id": f"<{event_id}@floodgate>", "occurred_at": None,
            "handled_by": "test:1"}


def test_an_email_is_recorded_sent_once_and_a_failure_after_it_leaves_it_sent(unit_of_work):
    now = datetime.now(timezone.utc)
    with unit_of_work() as uow:
        uow.deliveries.record_failure(attempt("e-1"), now, "retrying", "SMTP 451")
        assert uow.deliveries.record_sent(attempt("e-1"), now) == "sent"
        uow.commit()
    with unit_of_work() as uow:
        assert uow.deliveries.record_sent(attempt("e-1"), now) is None
        uow.deliveries.record_failure(attempt("e-1"), now, "dead", "late failure")
        uow.commit()
    with unit_of_work() as uow:
        [delivery] = uow.deliveries.search(order_id="o-1")
    assert (delivery.status, delivery.attempts, delivery.retries) == ("sent", 2, 1)


def test_an_email_whose_first_attempt_rolled_back_is_recorded_by_the_next(unit_of_work):
    now = datetime.now(timezone.utc)
    with unit_of_work() as uow:
        assert uow.deliveries.record_sent(attempt("e-2"), now) == "sent"  # the SMTP server refused: no commit
    with unit_of_work() as uow:
        assert uow.deliveries.record_sent(attempt("e-2"), now) == "sent"
        uow.commit()


def order_email(event_id: str, event_type: str, version: int) -> dict:
    return {**attempt(event_id), "event_type": event_type, "order_id": "o-7", "order_version": version}


def waiting_for_a_lock(url: str) -> bool:
    """Whether a session of this (scratch) database waits for a lock: other databases on the
    server (the session stack's, a parallel run) do not count."""
    engine = sa.create_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")).scalar() > 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("first, then, then_is", [
    (("e-confirmed", "order.confirmed", 2), ("e-placed", "order.placed", 1), "superseded"),
    (("e-placed", "order.placed", 1), ("e-confirmed", "order.confirmed", 2), "sent"),
])
def test_two_emails_of_one_order_at_once_go_out_the_older_first_or_not_at_all(infra, first, then, then_is):
    """An SMTP outage ends and an order's "pay by" and "confirmed" retries come back together, on
    two consumer threads: whichever is mailing holds the other back until it commits."""
    with scratch_database(infra, "deliveries") as url:
        upgrade(MIGRATIONS, url)
        engine = make_engine(url, pool_size=2)
        unit_of_work = lambda: UnitOfWork(orm.sessionmaker(engine), "notifications")  # noqa: E731
        now = datetime.now(timezone.utc)

        def record(email) -> str | None:
            with unit_of_work() as uow:
                written = uow.deliveries.record_sent(order_email(*email), now, unless_superseded=True)
                uow.commit()
                return written

        with ThreadPoolExecutor(1) as other_thread:
            with unit_of_work() as mailing:
                assert mailing.deliveries.record_sent(order_email(*first), now, unless_superseded=True) == "sent"
                later = other_thread.submit(record, then)
                poll(lambda: waiting_for_a_lock(url), what="the other email's attempt to wait for this one's")
                assert not later.done()
                mailing.commit()  # the SMTP server accepted the first email
            assert later.result(timeout=10) == then_is
        engine.dispose()


@pytest.mark.parametrize("pay_by_mailed", [True, False], ids=["after its pay-by email", "its pay-by never mailed"])
def test_a_refund_knows_a_newer_state_of_its_order_was_mailed_even_one_being_mailed_now(infra, pay_by_mailed):
    """The refund email leaves out the order's state it was told when a newer one was mailed;
    a confirmation being mailed at that moment is waited for, not missed. Also when the order
    has had no email yet (its "pay by" not sent: its time had passed after an outage, or it is
    still retrying): the read found no row to wait on, and the refund told a buyer whose
    confirmation was going out that the order still waited for its payment."""
    with scratch_database(infra, "deliveries") as url:
        upgrade(MIGRATIONS, url)
        engine = make_engine(url, pool_size=2)
        unit_of_work = lambda: UnitOfWork(orm.sessionmaker(engine), "notifications")  # noqa: E731

        def newer(version: int, order_id: str = "o-7") -> bool:
            with unit_of_work() as uow:
                return uow.deliveries.newer_state_mailed(order_id, version)

        if pay_by_mailed:
            with unit_of_work() as uow:
                uow.deliveries.record_sent(order_email("e-placed", "order.placed", 1), datetime.now(timezone.utc),
                                           unless_superseded=True)
                uow.commit()
        assert newer(1) is False
        with ThreadPoolExecutor(1) as other_thread:
            with unit_of_work() as mailing:
                mailing.deliveries.record_sent(order_email("e-confirmed", "order.confirmed", 2),
                                               datetime.now(timezone.utc), unless_superseded=True)
                asked = other_thread.submit(newer, 1)
                poll(lambda: waiting_for_a_lock(url), what="the refund's read to wait for the confirmation")
                mailing.commit()
            assert asked.result(timeout=10) is True
        assert (newer(2), newer(3), newer(1, "o-unknown")) == (False, False, False)
        engine.dispose()


def test_a_replayed_email_parked_again_at_once_stays_parked_and_the_others_read_retrying(unit_of_work):
    """An admin replays every parked email while some recipients still refuse: a consumer takes
    one back within milliseconds and parks it again before the replay marks what it sent back.
    That one was marked `retrying` for good: missing from `?status=dead`, counted retrying."""
    now = datetime.now(timezone.utc)
    with unit_of_work() as uow:
        for event_id in ("refused-again", "replayed"):
            uow.deliveries.record_failure(attempt(event_id), now, "dead", "SMTP 550")
        uow.commit()
    with unit_of_work() as uow:
        parked = uow.deliveries.parked()
    assert parked == {"refused-again": 1, "replayed": 1}
    with unit_of_work() as uow:  # the consumer, between the broker's replay and its marking
        uow.deliveries.record_failure(attempt("refused-again"), now, "dead", "SMTP 550")
        uow.commit()
    with unit_of_work() as uow:
        uow.deliveries.mark_replayed(parked)
        uow.commit()
    with unit_of_work() as uow:
        statuses = {d.event_id: (d.status, d.dead_letters) for d in uow.deliveries.search(order_id="o-1")}
        assert uow.deliveries.parked("refused-again") == {"refused-again": 2}
    assert statuses == {"refused-again": ("dead", 2), "replayed": ("retrying", 1)}
