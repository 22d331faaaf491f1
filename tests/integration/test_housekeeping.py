"""What consumers delete as they go (shared/messaging/housekeeping.py), against the real
PostgreSQL: inbox ids and notifications' finished deliveries past their retention go, in
batches, from consumers purging side by side; what is still needed stays, and /metrics' email
totals never go back."""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from services.checkout.bootstrap import MIGRATIONS as CHECKOUT_MIGRATIONS
from services.checkout.repository import CheckoutUnitOfWork, purge_refused_keys
from services.notifications.bootstrap import MIGRATIONS as NOTIFICATIONS_MIGRATIONS
from services.notifications.repository import UnitOfWork, purge_delivery_log
from shared.messaging.housekeeping import purge, purge_inbox
from tests.integration.database import migrated_engine

DAY = 24 * 3600
RETENTION = 30 * DAY


@pytest.fixture
def notifications(infra):
    with migrated_engine(infra, "housekeeping", NOTIFICATIONS_MIGRATIONS) as engine:
        yield lambda: UnitOfWork(orm.sessionmaker(engine), "notifications")


def attempt(event_id: str) -> dict:
    return {"event_id": event_id, "event_type": "order.placed", "order_id": f"o-{event_id}",
            "to_address": "ada@example.test", "subject": "Your order", "message_id": f"<{event_id}@floodgate>",
            "occurred_at": None, "handled_by": "test:1"}


def totals(unit_of_work) -> dict:
    with unit_of_work() as uow:
        found = uow.deliveries.totals()
    return {name: found[name] for name in ("sent", "retries", "dead_letters", "retrying", "dead")}


def purged_side_by_side(task, consumers: int = 2, batch_size: int = 5) -> int:
    """What `consumers` purging at once with `task(batch_size)` deleted between them."""
    with ThreadPoolExecutor(consumers) as pool:
        return sum(pool.map(lambda _: purge("test", task, batch_size, max_batches=100)[0], range(consumers)))


def test_finished_deliveries_past_the_retention_go_and_the_email_totals_stay(notifications):
    now = datetime.now(timezone.utc)
    old, recent = now - timedelta(seconds=RETENTION + DAY), now - timedelta(seconds=RETENTION - DAY)
    with notifications() as uow:
        for k in range(23):  # sent a month and more ago, each after one failed attempt
            uow.deliveries.record_failure(attempt(f"old-{k}"), old, "retrying", "SMTP 451")
            uow.deliveries.record_sent(attempt(f"old-{k}"), old)
        uow.deliveries.record_failure(attempt("replayed"), old, "dead", "SMTP 550")  # parked, replayed, then sent
        uow.deliveries.mark_replayed(uow.deliveries.parked("replayed"))
        uow.deliveries.record_sent(attempt("replayed"), old)
        uow.deliveries.record_not_sent(attempt("superseded"), old)
        uow.deliveries.record_failure(attempt("parked"), old, "dead", "SMTP 550")  # an admin's to replay
        uow.deliveries.record_failure(attempt("still-retrying"), old, "retrying", "SMTP 451")
        uow.deliveries.record_sent(attempt("within-the-retention"), recent)
        uow.commit()
    before = totals(notifications)
    assert before == {"sent": 25, "retries": 24, "dead_letters": 2, "retrying": 1, "dead": 1}

    def batch(size: int) -> int:
        return purge_delivery_log(notifications, RETENTION, size)

    assert purged_side_by_side(batch) == 25  # the 24 sent and the superseded one, each deleted once
    assert batch(5) == 0
    assert totals(notifications) == before  # counters never go back: Prometheus would read a reset
    with notifications() as uow:
        left = {delivery.event_id for delivery in uow.deliveries.search(limit=100)}
    assert left == {"parked", "still-retrying", "within-the-retention"}


def test_the_latest_email_sent_stays_whatever_its_age(notifications):
    """/metrics' time since the last email, and its lag, are read off it: a shop quiet for a
    month would otherwise read "no email ever sent"."""
    now = datetime.now(timezone.utc)
    with notifications() as uow:
        for days in (45, 40, 35):
            uow.deliveries.record_sent(attempt(f"sent-{days}-days-ago"), now - timedelta(days=days))
        uow.commit()
    assert purge_delivery_log(notifications, RETENTION, 10) == 2
    with notifications() as uow:
        assert [d.event_id for d in uow.deliveries.search(limit=10)] == ["sent-35-days-ago"]
        assert uow.deliveries.totals()["sent"] == 3


@pytest.fixture
def checkout_engine(infra):
    with migrated_engine(infra, "housekeeping", CHECKOUT_MIGRATIONS) as engine:
        yield engine


def test_inbox_ids_past_the_retention_go_and_recent_ones_stay(checkout_engine):
    retention = 7 * DAY
    with checkout_engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO inbox (message_id, event_type, received_at) "
            "SELECT 'old-' || n, 'email.sent', now() - make_interval(secs => :age) FROM generate_series(1, 17) n"),
            {"age": retention + 60})
        connection.execute(sa.text(
            "INSERT INTO inbox (message_id, event_type, received_at) VALUES "
            "('recent', 'email.sent', now() - make_interval(secs => :age)), ('now', 'email.sent', now())"),
            {"age": retention - 60})

    assert purged_side_by_side(lambda size: purge_inbox(checkout_engine, retention, size)) == 17
    with checkout_engine.connect() as connection:
        left = set(connection.execute(sa.text("SELECT message_id FROM inbox")).scalars())
    assert left == {"recent", "now"}


def test_refused_idempotency_keys_past_the_retention_go_and_those_that_placed_orders_stay(checkout_engine):
    retention = 2 * DAY
    with checkout_engine.begin() as connection:
        def keys(prefix: str, count: int, status: int | None, age: float) -> None:
            connection.execute(sa.text(
                "INSERT INTO idempotency_keys (buyer_id, key, fingerprint, response_status, response_body, created_at) "
                "SELECT 'buyer-' || n, :prefix || n, 'f', :status, '{}', now() - make_interval(secs => :age) "
                "FROM generate_series(1, :count) n"), {"prefix": prefix, "count": count, "status": status, "age": age})
        keys("sold-out-", 17, 409, retention + 60)
        keys("bad-address-", 3, 422, retention + 60)
        keys("ordered-", 4, 201, retention + 60)  # kept as long as their orders
        keys("unanswered-", 1, None, retention + 60)  # a claim only an older version could leave
        keys("refused-today-", 2, 409, retention - 60)

    unit_of_work = functools.partial(CheckoutUnitOfWork, orm.sessionmaker(checkout_engine), "checkout")
    assert purged_side_by_side(lambda size: purge_refused_keys(unit_of_work, retention, size)) == 20
    with checkout_engine.connect() as connection:
        left = set(connection.execute(sa.text("SELECT key FROM idempotency_keys")).scalars())
    assert left == {"ordered-1", "ordered-2", "ordered-3", "ordered-4", "unanswered-1", "refused-today-1",
                    "refused-today-2"}
