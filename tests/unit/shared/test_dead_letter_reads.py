"""Reading and replaying parked events, against a fake broker that keeps quorum queues as
RabbitMQ 4.x does: a message a closing channel puts back counts as a delivery, and past the
default limit of 20 a queue that dead-letters nowhere (`<service>.dead`) drops it."""
from __future__ import annotations

import copy
import itertools
import json
import logging
from collections import defaultdict, deque
from dataclasses import dataclass
from types import SimpleNamespace

import pika
import pytest

from shared.messaging import consumer, dead_letters, topology
from tests.unit.shared.fake_broker import parked_by_the_delivery_limit

SERVICE = "checkout"
DEAD = topology.dead_letter_queue(SERVICE)
WORK = topology.work_queue(SERVICE)
DEFAULT_DELIVERY_LIMIT = 20  # RabbitMQ 4.0 and later, for a quorum queue declared without one
READS = DEFAULT_DELIVERY_LIMIT + 10


@dataclass
class Message:
    properties: pika.BasicProperties
    body: bytes
    returns: int = 0


class FakeBroker:
    def __init__(self):
        self.queues: dict[str, deque] = defaultdict(deque)
        self.dropped: list[Message] = []
        self.refuse_publishes = False

    def connect(self, url, name, *args, **kwargs):
        return FakeConnection(self)

    def park(self, *message_ids: str) -> None:
        for message_id in message_ids:
            headers = {"x-attempt": 5, "x-last-error": "refund provider said 503"}
            properties = pika.BasicProperties(message_id=message_id, type="payment.refund_requested", headers=headers)
            self.queues[DEAD].append(Message(properties, b'{"order_id": "%s"}' % message_id.encode()))
        self.queues[WORK]  # the service's work queue exists too

    def ids(self, queue: str) -> list[str]:
        return [message.properties.message_id for message in self.queues[queue]]


class FakeConnection:
    def __init__(self, broker: FakeBroker):
        self.broker = broker
        self.is_open = True
        self.channels: list[FakeChannel] = []

    def channel(self):
        channel = FakeChannel(self.broker)
        self.channels.append(channel)
        return channel

    def close(self):
        self.is_open = False
        for channel in self.channels:
            channel.close()


class FakeChannel:
    def __init__(self, broker: FakeBroker):
        self.broker = broker
        self.unacked: dict[int, tuple[str, Message]] = {}
        self.tags = itertools.count(1)

    def queue_declare(self, queue, passive=False, **kwargs):
        if queue not in self.broker.queues:
            raise pika.exceptions.ChannelClosedByBroker(404, f"NOT_FOUND - no queue '{queue}'")
        return SimpleNamespace(method=SimpleNamespace(message_count=len(self.broker.queues[queue])))

    def confirm_delivery(self):
        pass

    def basic_get(self, queue):
        if not self.broker.queues[queue]:
            return None, None, None
        message = self.broker.queues[queue].popleft()
        tag = next(self.tags)
        self.unacked[tag] = (queue, message)
        return SimpleNamespace(delivery_tag=tag), copy.deepcopy(message.properties), message.body

    def basic_publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        if self.broker.refuse_publishes:
            raise pika.exceptions.NackError([])
        assert exchange == "" and routing_key in self.broker.queues
        self.broker.queues[routing_key].append(Message(copy.deepcopy(properties), body))

    def basic_ack(self, delivery_tag):
        del self.unacked[delivery_tag]

    def close(self):
        # Unacked messages go back to the head of their queue, each return counted.
        for _, (queue, message) in sorted(self.unacked.items(), reverse=True):
            message.returns += 1
            if message.returns > DEFAULT_DELIVERY_LIMIT:
                self.broker.dropped.append(message)
            else:
                self.broker.queues[queue].appendleft(message)
        self.unacked.clear()


@pytest.fixture
def broker(monkeypatch):
    broker = FakeBroker()
    monkeypatch.setattr("shared.messaging.connection.connect", broker.connect)
    return broker


def listed(letters: list[dict]) -> list[str]:
    return [letter["message_id"] for letter in letters]


def test_listing_the_dead_letters_again_and_again_loses_none(broker):
    broker.park("refund-1", "refund-2", "refund-3")

    listings = [listed(dead_letters.parked("amqp://broker", SERVICE)) for _ in range(READS)]

    assert listings == [["refund-1", "refund-2", "refund-3"]] * READS
    assert broker.ids(DEAD) == ["refund-1", "refund-2", "refund-3"]
    assert broker.dropped == []


def test_a_listing_shows_what_an_admin_needs_and_leaves_every_letter_parked_once(broker):
    broker.park("refund-1")

    [letter] = dead_letters.parked("amqp://broker", SERVICE)

    assert letter == {"message_id": "refund-1", "type": "payment.refund_requested", "attempts": 5,
                      "last_error": "refund provider said 503", "body": '{"order_id": "refund-1"}',
                      "service": SERVICE}
    assert broker.ids(DEAD) == ["refund-1"]
    assert broker.queues[DEAD][0].properties.headers["x-attempt"] == 5


def test_with_more_parked_than_the_limit_each_listing_shows_the_next_ones(broker):
    broker.park("refund-1", "refund-2", "refund-3")

    assert listed(consumer.peek_dead_letters("amqp://broker", SERVICE, limit=2)) == ["refund-1", "refund-2"]
    assert listed(consumer.peek_dead_letters("amqp://broker", SERVICE, limit=2)) == ["refund-3", "refund-1"]
    assert sorted(broker.ids(DEAD)) == ["refund-1", "refund-2", "refund-3"]


def test_replaying_one_event_again_and_again_leaves_the_others_parked(broker):
    broker.park("refund-1", "refund-2", "refund-3")

    for _ in range(READS):
        assert dead_letters.replay("amqp://broker", SERVICE, "refund-that-is-not-parked") == []
    assert dead_letters.replay("amqp://broker", SERVICE, "refund-2") == ["refund-2"]

    assert broker.ids(DEAD) == ["refund-1", "refund-3"]
    assert broker.ids(WORK) == ["refund-2"]
    assert broker.queues[WORK][0].properties.headers["x-attempt"] == 0
    assert broker.dropped == []


def test_discarding_a_settled_event_removes_it_alone_and_logs_what_it_was(broker, caplog):
    broker.park("refund-1", "refund-2", "refund-3")

    with caplog.at_level(logging.WARNING, logger="floodgate.consumer"):
        assert listed(dead_letters.discard("amqp://broker", SERVICE, {"refund-2", "refund-that-is-not-parked"})) == [
            "refund-2"]

    assert broker.ids(DEAD) == ["refund-1", "refund-3"]
    assert broker.ids(WORK) == []
    [logged] = [r for r in caplog.records if r.getMessage() == "dead letter discarded"]
    assert (logged.message_id, logged.last_error) == ("refund-2", "refund provider said 503")
    assert broker.dropped == []


def test_the_command_line_replays_the_parked_events_of_a_service(broker, capsys):
    broker.park("refund-1", "refund-2")

    dead_letters.main(["replay", "--service", SERVICE])

    assert broker.ids(WORK) == ["refund-1", "refund-2"]
    assert broker.ids(DEAD) == []
    assert f"2 event(s) of {SERVICE} sent back to {WORK}" in capsys.readouterr().err


def test_the_command_line_prints_each_discarded_letter_in_full(broker, capsys):
    broker.park("refund-1", "refund-2")

    dead_letters.main(["discard", "--service", SERVICE, "--message-id", "refund-2"])

    [printed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == {"message_id": "refund-2", "type": "payment.refund_requested", "attempts": 5,
                       "last_error": "refund provider said 503", "body": '{"order_id": "refund-2"}',
                       "service": SERVICE}
    assert broker.ids(DEAD) == ["refund-1"]


def test_the_command_line_fails_naming_an_id_that_was_not_parked(broker, capsys):
    broker.park("refund-1", "refund-2")

    with pytest.raises(SystemExit) as exit:
        dead_letters.main(["discard", "--service", SERVICE, "--message-id", "refund-2", "--message-id", "refund-9"])

    assert "refund-9" in str(exit.value.code)
    assert [json.loads(line)["message_id"] for line in capsys.readouterr().out.splitlines()] == ["refund-2"]
    assert broker.ids(DEAD) == ["refund-1"]


def test_a_letter_with_a_malformed_attempt_count_is_still_listed(broker):
    broker.park("refund-1")
    broker.queues[DEAD][0].properties.headers["x-attempt"] = "five"

    assert [(letter["message_id"], letter["attempts"]) for letter in dead_letters.parked("amqp://broker", SERVICE)] == [
        ("refund-1", 0)]
    assert broker.ids(DEAD) == ["refund-1"]


def test_a_replayed_event_leaves_the_broker_s_dead_lettering_history_behind(broker):
    """Parked by the work queue's delivery limit, it names that queue in `x-death`; kept, a retry
    of it would look like a dead-letter cycle to the broker, which would never deliver it."""
    broker.park("refund-1")
    broker.queues[DEAD][0].properties.headers.update(parked_by_the_delivery_limit(WORK, "payment.refund_requested"))

    assert dead_letters.replay("amqp://broker", SERVICE) == ["refund-1"]

    assert broker.queues[WORK][0].properties.headers == {
        "x-attempt": 0, "x-last-error": "refund provider said 503", "x-replayed": True}


def test_a_letter_whose_copy_the_broker_refuses_stays_where_it_was(broker):
    broker.park("refund-1")
    broker.refuse_publishes = True

    with pytest.raises(pika.exceptions.NackError):
        dead_letters.parked("amqp://broker", SERVICE)

    assert broker.ids(DEAD) == ["refund-1"]


def test_a_service_whose_dead_letter_queue_does_not_exist_has_none(broker):
    assert dead_letters.parked("amqp://broker", SERVICE) == []
    assert dead_letters.replay("amqp://broker", SERVICE) == []
    assert dead_letters.discard("amqp://broker", SERVICE, {"refund-1"}) == []


def test_a_replayed_event_may_wait_for_its_database_again_and_be_given_back_again(broker):
    """Parked after its waits for the database were used up (`MAX_DATABASE_WAITS`), a replay kept
    the count: at the next outage its tries counted at once, and it was parked again. Likewise
    one parked for killing its consumer (`RETURNS_BEFORE_PARKING`), replayed once that is mended."""
    broker.park("refund-1")
    broker.queues[DEAD][0].properties.headers.update({"x-database-waits": consumer.MAX_DATABASE_WAITS,
                                                      "x-returns": consumer.RETURNS_BEFORE_PARKING})

    assert dead_letters.replay("amqp://broker", SERVICE) == ["refund-1"]

    headers = broker.queues[WORK][0].properties.headers
    assert "x-database-waits" not in headers and "x-returns" not in headers
