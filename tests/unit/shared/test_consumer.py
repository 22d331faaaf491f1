"""The consumer runner's decisions, with a fake unit of work and no broker."""
from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from shared.config import Settings
from shared.messaging.consumer import (MAX_DATABASE_WAITS, PARTNER_DOWN_MAX_ATTEMPTS, DependencyDown, PartnerDown,
                                      PermanentFailure, attempts_within, handle_delivery, next_step)
from shared.messaging.envelope import Envelope

SETTINGS = Settings(service_name="notifications", retry_delays_ms=(100, 1000), max_attempts=3)


class FakeUnitOfWork:
    """Remembers claimed message ids across units, like the inbox table."""

    inbox: set

    def __init__(self, inbox: set):
        self.inbox = inbox
        self.session = self
        self.committed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def commit(self):
        self.committed = True


def run(body: bytes, handler, attempt: int = 1, inbox: set | None = None, uows: list | None = None,
        use_inbox: bool = True):
    inbox = set() if inbox is None else inbox
    uows = [] if uows is None else uows

    def factory():
        uow = FakeUnitOfWork(inbox)
        uows.append(uow)
        return uow

    return handle_delivery(body, attempt, {"order.confirmed": handler}, factory, SETTINGS, inbox=use_inbox)


def claim(session, message_id, event_type):
    if message_id in session.inbox:
        return False
    session.inbox.add(message_id)
    return True


def test_retries_walk_the_tiers_then_park(monkeypatch):
    assert next_step(1, 3, (100, 1000), "boom").delay_ms == 100
    assert next_step(2, 3, (100, 1000), "boom").delay_ms == 1000
    assert next_step(3, 3, (100, 1000), "boom").action == "dead"
    assert next_step(2, 9, (100,), "boom").delay_ms == 100


def test_a_handled_message_is_committed_then_acked_and_a_duplicate_is_skipped(monkeypatch):
    monkeypatch.setattr("shared.messaging.consumer.claim_message", claim)
    calls, inbox, uows = [], set(), []
    body = Envelope(type="order.confirmed", data={"order_id": "1"}, source="checkout").to_json()
    assert run(body, lambda env, uow: calls.append(env.id), inbox=inbox, uows=uows).action == "ack"
    assert run(body, lambda env, uow: calls.append(env.id), inbox=inbox, uows=uows).action == "ack"
    assert len(calls) == 1
    assert all(uow.committed for uow in uows)


def test_without_the_inbox_every_delivery_reaches_the_handler_which_deduplicates_itself(monkeypatch):
    """Notifications keeps no inbox: its delivery log says whether an event was already mailed."""
    def no_claim(*args):
        raise AssertionError("the inbox was written")

    monkeypatch.setattr("shared.messaging.consumer.claim_message", no_claim)
    calls, uows = [], []
    body = Envelope(type="order.confirmed", data={"order_id": "1"}, source="checkout").to_json()
    outcomes = [run(body, lambda env, uow: calls.append(env.id), uows=uows, use_inbox=False).action for _ in range(2)]
    assert outcomes == ["ack", "ack"]
    assert len(calls) == 2  # the second delivery is the handler's to recognise
    assert all(uow.committed for uow in uows)


def test_a_failing_handler_commits_nothing_and_is_retried(monkeypatch):
    monkeypatch.setattr("shared.messaging.consumer.claim_message", claim)
    uows = []

    def broken(envelope, uow):
        raise RuntimeError("SMTP said 451")

    body = Envelope(type="order.confirmed", data={}, source="checkout").to_json()
    outcome = run(body, broken, attempt=1, uows=uows)
    assert (outcome.action, outcome.delay_ms) == ("retry", 100)
    assert "451" in outcome.error
    assert not uows[0].committed
    assert run(body, broken, attempt=3).action == "dead"


def test_permanent_failures_and_malformed_bodies_are_parked_at_once(monkeypatch):
    monkeypatch.setattr("shared.messaging.consumer.claim_message", claim)

    def refused(envelope, uow):
        raise PermanentFailure("550 mailbox unavailable")

    body = Envelope(type="order.confirmed", data={}, source="checkout").to_json()
    assert run(body, refused).action == "dead"
    assert run(b"{not json", refused).action == "dead"
    assert run(b'{"id": "1"}', refused).action == "dead"


def test_an_event_type_this_consumer_has_no_handler_for_yet_is_retried_before_it_is_parked():
    """In a rolling deploy the new code's bindings route a new event type to consumers still on
    the old code: it waits in the retry tiers for the new ones instead of paging an admin."""
    unknown = Envelope(type="order.teleported", data={}, source="checkout").to_json()
    patient = Settings(service_name="notifications", retry_delays_ms=(100, 1000), max_attempts=10)

    def step(attempt):
        return handle_delivery(unknown, attempt, {"order.confirmed": lambda envelope, uow: None}, None, patient)

    assert (step(1).action, step(1).error) == ("retry", "no handler for order.teleported")
    assert step(2).action == "retry"
    assert step(3).action == "dead"  # each tier once, though a handler's failures are retried up to 10 times


def test_a_dependency_down_sends_the_message_back_to_wait_not_to_a_retry():
    def smtp_down(envelope, uow):
        raise DependencyDown("SMTP: connection refused")

    body = Envelope(type="order.confirmed", data={}, source="checkout").to_json()
    assert run(body, smtp_down, use_inbox=False).action == "wait"
    assert run(body, smtp_down, attempt=SETTINGS.max_attempts, use_inbox=False).action == "wait"  # never parked for it


def _database_error(kind, orig: Exception, invalidated: bool = False):
    return kind("UPDATE deliveries SET ...", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize("error", [
    _database_error(sa.exc.OperationalError, psycopg.OperationalError("connection failed: Connection refused")),
    _database_error(sa.exc.OperationalError, psycopg.errors.AdminShutdown("terminating connection")),
    _database_error(sa.exc.OperationalError, psycopg.errors.CannotConnectNow("the database system is starting up")),
    _database_error(sa.exc.OperationalError, psycopg.errors.ProtocolViolation("query_wait_timeout")),  # PgBouncer
    _database_error(sa.exc.OperationalError, psycopg.errors.QueryCanceled("lost"), invalidated=True),
    _database_error(sa.exc.InterfaceError, psycopg.InterfaceError("the connection is closed")),
    sa.exc.TimeoutError("QueuePool limit of size 5 overflow 0 reached"),
], ids=["refused", "shutdown", "starting-up", "pgbouncer", "lost-mid-statement", "closed", "pool"])
def test_a_database_that_is_away_makes_messages_wait_never_spending_their_attempts(error):
    def database_down(envelope, uow):
        raise error

    body = Envelope(type="order.cancelled", data={}, source="checkout").to_json()
    for attempt in (1, SETTINGS.max_attempts):  # never parked for it, however late
        outcome = handle_delivery(body, attempt, {"order.cancelled": database_down}, lambda: AwayUnitOfWork(set()),
                                  SETTINGS, inbox=False)
        assert (outcome.action, outcome.database) == ("wait", True)
        assert "the database is not answering" in outcome.error


def test_a_message_the_database_is_away_for_at_every_try_is_counted_after_its_waits():
    """It may be what takes the database away (a statement that crashes its backend: every
    backend restarts, and recovery answers nobody); uncounted, it would never be parked."""
    def crashes_the_database(envelope, uow):
        raise _database_error(sa.exc.OperationalError, psycopg.OperationalError("server closed the connection"))

    body = Envelope(type="order.cancelled", data={}, source="checkout").to_json()

    def outcome(attempt, waits):
        return handle_delivery(body, attempt, {"order.cancelled": crashes_the_database}, lambda: AwayUnitOfWork(set()),
                               SETTINGS, inbox=False, database_waits=waits).action

    assert outcome(1, MAX_DATABASE_WAITS - 1) == "wait"
    assert [outcome(1, MAX_DATABASE_WAITS), outcome(SETTINGS.max_attempts, MAX_DATABASE_WAITS)] == ["retry", "dead"]


@pytest.mark.parametrize("orig", [psycopg.errors.DeadlockDetected("deadlock detected"),
                                  psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
                                  psycopg.errors.LockNotAvailable("lock timeout")])
def test_a_statement_s_own_failure_is_retried_and_parked_as_before(orig):
    """A message whose statement keeps timing out must still reach the dead letters, not wait forever."""
    def fails(envelope, uow):
        raise _database_error(sa.exc.OperationalError, orig)

    body = Envelope(type="order.cancelled", data={}, source="checkout").to_json()
    outcomes = [handle_delivery(body, attempt, {"order.cancelled": fails}, lambda: FakeUnitOfWork(set()), SETTINGS,
                                inbox=False).action for attempt in (1, SETTINGS.max_attempts)]
    assert outcomes == ["retry", "dead"]


class AwayUnitOfWork(FakeUnitOfWork):
    """A unit of work whose database does not answer (`shared.db.away` asks it a statement)."""

    def execute(self, statement):
        raise sa.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))


class AnsweringUnitOfWork(FakeUnitOfWork):
    """A unit of work whose database answers a statement (`shared.db.away` asks one)."""

    def execute(self, statement):
        return None


def test_a_failure_that_only_looks_like_an_outage_while_the_database_answers_is_counted():
    """A statement that crashed its backend, say: waited on as an outage, the message would come
    round for ever, never counted nor parked, and pause the consumer each time."""
    def crashes_its_backend(envelope, uow):
        raise _database_error(sa.exc.OperationalError, psycopg.OperationalError("server closed the connection"),
                              invalidated=True)

    body = Envelope(type="order.cancelled", data={}, source="checkout").to_json()
    outcomes = [handle_delivery(body, attempt, {"order.cancelled": crashes_its_backend},
                                lambda: AnsweringUnitOfWork(set()), SETTINGS, inbox=False).action
                for attempt in (1, SETTINGS.max_attempts)]
    assert outcomes == ["retry", "dead"]


def test_an_outside_service_down_is_retried_for_a_day_through_the_tiers_not_the_few_attempts():
    """Checkout's five attempts over eleven minutes parked every refund of a drop as money owed
    when the payment provider was down longer; a day of its tiers is 148 attempts."""
    body = Envelope(type="order.confirmed", source="tests", data={}).to_json()

    def provider_down(envelope, uow):
        raise PartnerDown("the provider did not confirm the refund: provider answered 503")

    checkout = Settings(service_name="checkout", max_attempts=5)
    day = attempts_within((1000, 10_000, 60_000, 600_000), checkout.partner_down_seconds)
    assert day == 4 + 24 * 6 and day > 5
    for attempt, delay in ((1, 1000), (4, 600_000), (5, 600_000), (day - 1, 600_000)):
        outcome = handle_delivery(body, attempt, {"order.confirmed": provider_down}, lambda: FakeUnitOfWork(set()),
                                  checkout, inbox=False)
        assert (outcome.action, outcome.delay_ms) == ("retry", delay), attempt
    last = handle_delivery(body, day, {"order.confirmed": provider_down}, lambda: FakeUnitOfWork(set()), checkout,
                           inbox=False)
    assert last.action == "dead" and "answered 503" in last.error


def test_short_tiers_give_an_outside_service_down_a_bounded_number_of_attempts():
    """Tests' tiers (200 ms, 500 ms) over a day were 172,800 attempts of a refund, one every half
    second; a tier of 0 never ended the count. Bounded, and shortened by the setting."""
    assert attempts_within((200, 500), 24 * 3600) == PARTNER_DOWN_MAX_ATTEMPTS
    assert attempts_within((0,), 60) == PARTNER_DOWN_MAX_ATTEMPTS
    assert attempts_within((200, 500), 2) == 6  # tried at 0, 0.2, 0.7, 1.2, 1.7 and 2.2 s
