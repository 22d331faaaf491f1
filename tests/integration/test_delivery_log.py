"""Notifications' delivery log against the real PostgreSQL: the one statement an email writes
also tells whether an earlier attempt's email was already accepted, so a redelivered event whose
inbox row is gone is still mailed once."""
from datetime import datetime, timezone

import pytest
from sqlalchemy import orm

from services.notifications.bootstrap import MIGRATIONS
from services.notifications.repository import UnitOfWork
from shared.db import make_engine
from shared.migrate import upgrade
from tests.integration.database import scratch_database


@pytest.fixture
def unit_of_work(infra):
    with scratch_database(infra, "deliveries") as url:
        upgrade(MIGRATIONS, url)
        engine = make_engine(url, pool_size=1)
        yield lambda: UnitOfWork(orm.sessionmaker(engine), "notifications")
        engine.dispose()


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
