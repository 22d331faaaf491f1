"""A broker read for the scraped figures (dead letters, queue depths) keeps to its deadline when
the broker does not answer (a node that died without closing TCP), and never makes a second
request thread wait behind it: the API's threads stay free for buyers. A fake broker stands in:
no network."""
from __future__ import annotations

import threading
import time

import pytest

from shared.config import Settings
from shared.messaging import connection as amqp
from shared.messaging.metrics import BrokerDidNotAnswer, dead_letter_figures, queue_depths
from shared.metrics import ScrapedFigures
from tests.unit.shared.fake_broker import GIVE_UP_SECONDS, installed
from tests.unit.shared.scrape import scrape

DEADLINE = 0.2  # seconds: a short metrics query timeout, for reads the broker does not answer
ANSWERED = 5.0  # seconds: the timeout of reads it answers, ample on a busy machine
SETTINGS = Settings(service_name="checkout")


@pytest.fixture
def broker(monkeypatch):
    fake = installed(monkeypatch)
    yield fake
    fake.answer()  # lets a reader still waiting end


def read_within(seconds: float) -> dict[str, int]:
    """The depths, read again and again while an earlier read is still under way, for `seconds`
    at most (well under the fake's give-up time, so a reader held that long fails the test)."""
    give_up = time.monotonic() + seconds
    while True:
        try:
            return queue_depths(SETTINGS, ["checkout.dead"], ANSWERED)
        except BrokerDidNotAnswer:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.01)


def test_a_read_the_broker_never_answers_ends_at_its_deadline_for_its_caller_and_the_next_reads_wait_for_none(broker):
    assert queue_depths(SETTINGS, ["checkout.dead"], ANSWERED) == {"checkout.dead": 3}
    broker.go_silent("declare")

    started = time.monotonic()
    with pytest.raises(BrokerDidNotAnswer):
        queue_depths(SETTINGS, ["checkout.dead"], DEADLINE)
    with pytest.raises(BrokerDidNotAnswer):  # its reader still waits: the next read reports down at once
        queue_depths(SETTINGS, ["checkout.dead"], ANSWERED)
    assert time.monotonic() - started < GIVE_UP_SECONDS / 2

    broker.answer()  # or the connection's heartbeat gives up on it
    assert read_within(GIVE_UP_SECONDS / 2) == {"checkout.dead": 3}
    assert all(connect["heartbeat"] > 0 for connect in broker.connects)


def test_a_read_asked_for_while_another_waits_for_the_broker_reports_it_down_at_once(broker):
    broker.go_silent("declare")
    first = {}

    def read_first():
        first["depths"] = queue_depths(SETTINGS, ["checkout.dead"], 30.0)

    reader = threading.Thread(target=read_first)
    reader.start()
    assert broker.waiting.wait(GIVE_UP_SECONDS)

    with pytest.raises(BrokerDidNotAnswer):
        queue_depths(SETTINGS, ["checkout.dead"], 30.0)
    assert broker.declared == ["checkout.dead"]  # the second read never reached the broker

    broker.answer()
    reader.join(GIVE_UP_SECONDS)
    assert first["depths"] == {"checkout.dead": 3}  # the first, still within its deadline, got its answer
    assert len(broker.opened) == 1


def test_a_connect_the_broker_never_completes_ends_at_the_deadline_for_its_caller(broker):
    broker.go_silent("connect")

    with pytest.raises(BrokerDidNotAnswer):
        queue_depths(SETTINGS, ["checkout.dead"], DEADLINE)
    with pytest.raises(BrokerDidNotAnswer):  # the connect still waits: no second one beside it
        queue_depths(SETTINGS, ["checkout.dead"], DEADLINE)
    assert len(broker.connects) == 1
    assert 0 < broker.connects[0]["socket_timeout"] <= DEADLINE

    broker.answer()  # the connect completes, too late for its read
    assert read_within(GIVE_UP_SECONDS / 2) == {"checkout.dead": 3}
    assert len(broker.opened) == 1  # that connection is kept and read on


def test_a_scrape_while_the_broker_does_not_answer_reports_its_dead_letters_down(broker):
    broker.go_silent("declare")
    figures = ScrapedFigures("checkout", {"dead_letters": dead_letter_figures(SETTINGS, DEADLINE)})

    samples = scrape(figures)

    assert samples[("floodgate_metrics_source_up", ("service", "checkout"), ("source", "dead_letters"))] == 0
    assert not any(name == "floodgate_dead_letters" for name, *_ in samples)
    assert issubclass(BrokerDidNotAnswer, amqp.RECOVERABLE)  # notifications' figures report it down too


def test_two_reads_that_meet_in_one_process_both_get_the_depths(broker):
    """A scrape and a control room's poll at the same moment: the second once reported the broker
    down at once (the page showed "unknown", and the scrape lost its series), though the first
    was answered milliseconds later."""
    broker.go_silent("declare")
    answers = {}
    first = threading.Thread(target=lambda: answers.update(first=queue_depths(SETTINGS, ["checkout.dead"], ANSWERED)))
    first.start()
    assert broker.waiting.wait(GIVE_UP_SECONDS)
    threading.Timer(0.05, broker.answer).start()  # the broker answers the first read 50 ms on
    answers["second"] = queue_depths(SETTINGS, ["checkout.dead"], ANSWERED)
    first.join(GIVE_UP_SECONDS)
    assert answers == {"first": {"checkout.dead": 3}, "second": {"checkout.dead": 3}}
