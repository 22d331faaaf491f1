"""The figures an API reads from its database and the broker when Prometheus scrapes it: each
service's outbox backlog, its workers' heartbeats and its dead letters; one unreadable source
leaves the others standing. A fake engine and a fake broker read stand in: no network."""
from __future__ import annotations

import logging
from pathlib import Path

import pika
import pytest
import sqlalchemy as sa

from shared import web
from shared.config import Settings
from shared.messaging import topology
from shared.last_seen import heartbeat_figures
from shared.messaging import metrics as messaging_metrics
from shared.messaging.metrics import dead_letter_figures, outbox_figures
from shared.metrics import ScrapedFigures
from shared.service import Root
from tests.unit.shared.fake_broker import installed
from tests.unit.shared.fake_database import FakeEngine
from tests.unit.shared.scrape import scrape

DATABASE_DOWN = sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_the_outbox_backlog_is_its_unpublished_rows_and_the_oldest_ones_wait():
    engine = FakeEngine([{"pending": 1250, "oldest_age": 73.5}])
    samples = scrape(ScrapedFigures("checkout", {"outbox": outbox_figures("checkout", engine, 2.0)}))

    assert samples[("floodgate_outbox_pending", ("service", "checkout"))] == 1250
    assert samples[("floodgate_outbox_oldest_pending_age_seconds", ("service", "checkout"))] == 73.5
    assert samples[("floodgate_metrics_source_up", ("service", "checkout"), ("source", "outbox"))] == 1
    # one read, which PostgreSQL gives up after the timeout
    assert engine.statements("SET LOCAL statement_timeout") == [("SET LOCAL statement_timeout = 2000", None)]
    assert len(engine.statements("SELECT")) == 1


def test_an_empty_outbox_has_no_age():
    engine = FakeEngine([{"pending": 0, "oldest_age": None}])
    samples = scrape(ScrapedFigures("accounts", {"outbox": outbox_figures("accounts", engine, 2.0)}))

    assert samples[("floodgate_outbox_pending", ("service", "accounts"))] == 0
    assert samples[("floodgate_outbox_oldest_pending_age_seconds", ("service", "accounts"))] == 0


def test_each_kind_of_worker_shows_its_freshest_beat_and_how_many_run():
    engine = FakeEngine([{"kind": "consumer", "age": 2.5, "alive": 2}, {"kind": "relay", "age": 301.0, "alive": 0}])
    samples = scrape(ScrapedFigures("inventory", {"heartbeats": heartbeat_figures("inventory", engine, 2.0)}))

    age = "floodgate_worker_heartbeat_age_seconds"
    alive = "floodgate_worker_processes_alive"
    assert samples[(age, ("kind", "consumer"), ("service", "inventory"))] == 2.5
    assert samples[(age, ("kind", "relay"), ("service", "inventory"))] == 301.0
    assert samples[(alive, ("kind", "consumer"), ("service", "inventory"))] == 2
    assert samples[(alive, ("kind", "relay"), ("service", "inventory"))] == 0
    (_, params), = engine.statements("SELECT")
    assert params == {"alive": 60.0}


def test_dead_letters_events_waiting_and_retrying_are_the_depths_of_the_services_queues_read_at_once():
    asked = []
    tiers = [topology.retry_queue("checkout", delay) for delay in topology.retry_delays("checkout")]

    def depths(settings, queues, timeout):
        asked.append((queues, timeout))
        return {"checkout.dead": 4, "checkout.events": 1200, "checkout.returned": 3, **{tier: 2 for tier in tiers}}

    settings = Settings(service_name="checkout")
    samples = scrape(ScrapedFigures("checkout", {"dead_letters": dead_letter_figures(settings, 1.5, depths)}))

    assert samples[("floodgate_dead_letters", ("service", "checkout"))] == 4
    # given back by a consumer that stopped, set aside to be taken one at a time: waiting too
    assert samples[("floodgate_events_waiting", ("service", "checkout"))] == 1203
    # a refund the provider cannot take waits in the tiers up to a day: FloodgateEventsRetrying
    assert samples[("floodgate_events_retrying", ("service", "checkout"))] == 2 * len(tiers) == 8
    assert asked == [(["checkout.dead", "checkout.events", "checkout.returned", *tiers], 1.5)]


def test_a_source_that_cannot_be_read_is_left_out_and_said_to_be_down(caplog):
    def broker_away():
        raise ConnectionRefusedError("broker away")

    figures = ScrapedFigures("inventory", {
        "outbox": outbox_figures("inventory", FakeEngine(error=DATABASE_DOWN), 2.0),
        "dead_letters": broker_away,
        "heartbeats": heartbeat_figures("inventory", FakeEngine([]), 2.0),
    })
    with caplog.at_level(logging.WARNING, logger="floodgate.metrics"):
        samples = scrape(figures)

    up = "floodgate_metrics_source_up"
    assert samples[(up, ("service", "inventory"), ("source", "outbox"))] == 0
    assert samples[(up, ("service", "inventory"), ("source", "dead_letters"))] == 0
    assert samples[(up, ("service", "inventory"), ("source", "heartbeats"))] == 1
    assert not any(name.startswith(("floodgate_outbox", "floodgate_dead_letters")) for name, *_ in samples)
    assert [r.source for r in caplog.records] == ["outbox", "dead_letters"]


class NoTokens:
    def verify(self, token):  # pragma: no cover - no request here carries a token
        raise AssertionError("no token expected")


def test_every_services_api_reports_its_outbox_and_its_workers_heartbeats():
    def rows(statement):
        if "FROM outbox" in statement:
            return [{"pending": 7, "oldest_age": 12.0}]
        return [{"kind": "relay", "age": 3.0, "alive": 1}]

    engine = FakeEngine(rows)
    root = Root(kind="api", settings=Settings(service_name="accounts"), engine=engine, session_factory=None,
                unit_of_work=None, migrations=Path("."))
    app = web.create_app(root, [], title="accounts", verifier=NoTokens())

    page = app.test_client().get("/metrics").get_data(as_text=True)

    assert 'floodgate_outbox_pending{service="accounts"} 7.0' in page
    assert 'floodgate_worker_heartbeat_age_seconds{kind="relay",service="accounts"} 3.0' in page
    assert 'floodgate_metrics_source_up{service="accounts",source="outbox"} 1.0' in page


@pytest.mark.parametrize("timeout, expected", [(2.0, "2000"), (0.25, "250"), (0.0001, "1")])
def test_every_scraped_read_carries_a_statement_timeout(timeout, expected):
    engine = FakeEngine([{"pending": 0, "oldest_age": None}])
    list(outbox_figures("checkout", engine, timeout)())
    assert engine.statements("SET LOCAL")[0][0] == f"SET LOCAL statement_timeout = {expected}"


@pytest.fixture
def broker(monkeypatch):
    return installed(monkeypatch)


def test_queue_depths_are_read_on_one_kept_connection_scrape_after_scrape(broker):
    settings = Settings()
    for _ in range(5):
        depths = messaging_metrics.queue_depths(settings, ["checkout.work", "checkout.dead", "not.declared"], 2.0)
        assert depths == {"checkout.work": 40, "checkout.dead": 3, "not.declared": 0}
    assert len(broker.opened) == 1 and broker.opened[0].is_open


def test_a_kept_connection_that_went_away_is_replaced_within_the_same_read(broker):
    settings = Settings()
    messaging_metrics.queue_depths(settings, ["checkout.dead"], 2.0)
    broker.opened[0].broken = True  # the broker restarted meanwhile
    assert messaging_metrics.queue_depths(settings, ["checkout.dead"], 2.0) == {"checkout.dead": 3}
    assert len(broker.opened) == 2 and not broker.opened[0].is_open


def test_a_broker_that_does_not_answer_a_new_connection_either_fails_the_read(broker):
    broker.fail_next = 1
    with pytest.raises(pika.exceptions.StreamLostError):
        messaging_metrics.queue_depths(Settings(), ["checkout.dead"], 2.0)
    assert len(broker.opened) == 1  # a new connection is not tried twice in one read
    assert messaging_metrics.queue_depths(Settings(), ["checkout.dead"], 2.0) == {"checkout.dead": 3}
