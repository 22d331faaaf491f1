"""What notifications tells the control room: the email figures /metrics reports, read by the
same collector, every service's dead letters, and a replay recorded with how many went back. The
delivery log, the broker and the database stand in: no network."""
from __future__ import annotations

from datetime import datetime, timezone

import pika
import psycopg
import pytest
import sqlalchemy as sa

from services.notifications import figures, handlers
from services.notifications.config import Settings
from services.notifications.errors import BrokerUnavailable, ReplayNotRecorded
from services.notifications.metrics import EmailMetrics
from shared.admin_actions import AdminAction
from tests.unit.shared.fake_admin_actions import FakeAdminActions

SETTINGS = Settings(service_name="notifications")
NOW = datetime(2014, 10, 27, 15, 5, tzinfo=timezone.utc)
LAST_SENT = datetime(2014, 10, 27, 15, 4, 58, tzinfo=timezone.utc)
TOTALS = {"sent": 40, "retries": 3, "dead_letters": 1, "retrying": 2, "dead": 1,
          "oldest_pending": datetime(2014, 10, 27, 15, 4, 10, tzinfo=timezone.utc), "now": NOW,
          "last_lag": 4.5, "last_sent": LAST_SENT.timestamp()}
DEPTHS = {"notifications.events": 120, "notifications.returned": 4, "notifications.dead": 3,
          "notifications.retry.10000ms": 2, "notifications.retry.60000ms": 5}


class ReadEmailMetrics(EmailMetrics):
    """The collector /metrics uses, with its delivery-log and broker reads answered here."""

    def __init__(self, totals=TOTALS, depths=DEPTHS, database_error=None, broker_error=None):
        super().__init__(SETTINGS, session_factory=None)
        self.totals, self.depths = totals, depths
        self.database_error, self.broker_error = database_error, broker_error

    def _delivery_totals(self):
        if self.database_error:
            raise self.database_error
        return dict(self.totals)

    def _queue_depths(self):
        if self.broker_error:
            raise self.broker_error
        return dict(self.depths)


def test_the_backlog_is_what_waits_in_the_email_queue_its_returned_lane_and_retry_tiers_and_the_oldest_unsent_has_an_age():
    email = figures.email_figures(ReadEmailMetrics(), "notifications")

    assert (email["backlog"], email["in_work_queue"], email["in_retry_tiers"]) == (131, 124, 7)
    assert email["oldest_unsent_age_seconds"] == 50
    assert email["last_sent_at"] == LAST_SENT and email["last_delivery_lag_seconds"] == 4.5
    assert (email["retrying"], email["dead"], email["sent"]) == (2, 1, 40)
    assert email["sources"] == {"database": True, "broker": True}


def test_before_the_first_email_there_is_no_last_one():
    email = figures.email_figures(ReadEmailMetrics(totals=dict(TOTALS, last_sent=0.0)), "notifications")
    assert email["last_sent_at"] is None


def test_a_figure_whose_source_is_away_is_unknown_not_zero():
    without_broker = figures.email_figures(
        ReadEmailMetrics(broker_error=pika.exceptions.AMQPConnectionError("away")), "notifications")
    assert without_broker["backlog"] is None and without_broker["in_work_queue"] is None
    assert without_broker["oldest_unsent_age_seconds"] == 50
    assert without_broker["sources"] == {"database": True, "broker": False}

    without_database = figures.email_figures(ReadEmailMetrics(database_error=OSError("down")), "notifications")
    assert without_database["oldest_unsent_age_seconds"] is None and without_database["sent"] is None
    assert without_database["backlog"] == 131
    assert without_database["sources"] == {"database": False, "broker": True}


def test_every_consuming_services_dead_letters_are_counted_without_touching_a_message():
    asked = []

    def depths(settings, queues, timeout):
        asked.append((queues, timeout))
        return {"checkout.dead": 1, "inventory.dead": 0, "notifications.dead": 4}

    assert figures.dead_letters(SETTINGS, 2.0, depths) == {"checkout": 1, "inventory": 0, "notifications": 4}
    assert asked == [(["checkout.dead", "inventory.dead", "notifications.dead"], 2.0)]


def test_without_the_broker_the_dead_letters_are_unknown():
    def depths(settings, queues, timeout):
        raise pika.exceptions.AMQPConnectionError("away")

    assert figures.dead_letters(SETTINGS, 2.0, depths) is None


# --- a replay is recorded ---------------------------------------------------------------------------

class FakeDeliveries:
    def __init__(self, parked: dict[str, int] | None = None):
        self.replayed = []
        self.attempts = {"m-1": 3, "m-2": 1, **(parked or {})}  # the parked ones, with their attempts

    def parked(self, event_id=None):
        return {e: attempts for e, attempts in self.attempts.items() if event_id in (None, e)}

    def mark_replayed(self, parked):
        self.replayed.append(parked)


class ReplayUnitOfWork:
    """What a replay needs of notifications' unit of work; uncommitted writes are dropped."""

    def __init__(self):
        self.deliveries = FakeDeliveries()
        self.admin_actions = FakeAdminActions()
        self.committed = False

    def __enter__(self):
        self.committed = False
        return self

    def __exit__(self, *exc_info):
        if not self.committed:
            self.admin_actions.rollback()

    def commit(self):
        self.admin_actions.commit()
        self.committed = True


def replay_by_admin(service: str | None = None) -> AdminAction:
    return AdminAction(admin_subject="admin-7", admin_email="ops@floodgate.test", method="POST",
                       path="/dead-letters/replay", drop_id=None, body={"service": service, "message_id": "m-1"})


def test_a_replay_is_recorded_with_how_many_went_back_in_the_transaction_that_marks_them(monkeypatch):
    monkeypatch.setattr(handlers.parked_letters, "replay", lambda url, service, message_id: ["m-1"])
    uow = ReplayUnitOfWork()

    assert handlers.replay("m-1", SETTINGS, uow, "notifications", action=replay_by_admin("notifications")) == 1

    assert uow.committed and uow.deliveries.replayed == [{"m-1": 3}]
    [recorded] = uow.admin_actions.kept
    assert recorded.admin_email == "ops@floodgate.test" and recorded.outcome == {"replayed": 1}


def test_replaying_all_marks_exactly_the_deliveries_sent_back(monkeypatch):
    monkeypatch.setattr(handlers.parked_letters, "replay", lambda url, service, message_id: ["m-1", "m-2"])
    uow = ReplayUnitOfWork()

    assert handlers.replay(None, SETTINGS, uow, "notifications") == 2

    assert uow.deliveries.replayed == [{"m-1": 3, "m-2": 1}]  # not every parked one: those are the broker's to say


def test_a_replay_marks_its_letters_as_they_were_before_they_went_back(monkeypatch):
    """A consumer may take a letter back and park it again before the replay marks it: the mark
    names the attempts the letter had before, so the delivery log leaves that one parked."""
    uow = ReplayUnitOfWork()

    def sent_back_and_parked_again(url, service, message_id):
        uow.deliveries.attempts["m-1"] += 1
        return ["m-1"]

    monkeypatch.setattr(handlers.parked_letters, "replay", sent_back_and_parked_again)
    assert handlers.replay(None, SETTINGS, uow, "notifications") == 1

    assert uow.deliveries.replayed == [{"m-1": 3}]


def test_a_replay_of_another_services_letters_is_recorded_too_even_when_nothing_went_back(monkeypatch):
    monkeypatch.setattr(handlers.parked_letters, "replay", lambda url, service, message_id: [])
    uow = ReplayUnitOfWork()

    assert handlers.replay("m-1", SETTINGS, uow, "checkout", action=replay_by_admin("checkout")) == 0

    assert uow.deliveries.replayed == []  # notifications' delivery log is not checkout's
    [recorded] = uow.admin_actions.kept
    assert recorded.body == {"service": "checkout", "message_id": "m-1"} and recorded.outcome == {"replayed": 0}


def test_a_replay_whose_record_meets_the_database_away_says_how_many_went_back(monkeypatch):
    """A bare 503 database-unavailable said nothing was done: the admin would replay again."""
    monkeypatch.setattr(handlers.parked_letters, "replay", lambda url, service, message_id: ["m-1", "m-2"])
    uow = ReplayUnitOfWork()

    def away(parked):
        raise sa.exc.OperationalError("UPDATE deliveries", {}, psycopg.OperationalError("connection refused"))

    uow.deliveries.mark_replayed = away
    with pytest.raises(ReplayNotRecorded) as answer:
        handlers.replay(None, SETTINGS, uow, "notifications", action=replay_by_admin("notifications"))
    problem = answer.value.to_dict()
    assert (problem["status"], problem["replayed"]) == (503, 2) and "Do not replay them again" in problem["detail"]
    assert uow.admin_actions.kept == [] and not uow.committed


def test_a_replay_the_broker_refuses_records_nothing(monkeypatch):
    def refused(url, service, message_id):
        raise pika.exceptions.AMQPConnectionError("away")

    monkeypatch.setattr(handlers.parked_letters, "replay", refused)
    uow = ReplayUnitOfWork()
    with pytest.raises(BrokerUnavailable):
        handlers.replay("m-1", SETTINGS, uow, "checkout", action=replay_by_admin("checkout"))
    assert uow.admin_actions.kept == [] and not uow.committed
