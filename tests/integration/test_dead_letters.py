"""Replaying parked events, against the real broker: every one parked goes back, once.

Services of the tests' own (queues declared here), so the replayed messages stay in their work
queue to be counted, or reach a consumer run here.
"""
from __future__ import annotations

import threading
import time
import uuid

import pika

from shared.config import Settings
from shared.messaging import connection as amqp
from shared.messaging import dead_letters, topology
from shared.messaging.consumer import ConsumerRunner, current_attempt
from shared.messaging.envelope import Envelope
from tests.unit.shared.fake_broker import NoTransaction, parked_by_the_delivery_limit

PARKED = 1_050  # more than a replay once took (1,000)


def test_replaying_all_sends_back_every_parked_event_once_and_says_which(infra):
    service = f"replay-test-{uuid.uuid4().hex[:8]}"
    queues = topology.dead_letter_queue(service), topology.work_queue(service)
    connection = amqp.connect(infra.amqp_url, "tests")
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_declare(queue, auto_delete=False)
        channel.confirm_delivery()
        ids = [f"event-{n}" for n in range(PARKED)]
        for message_id in ids:
            channel.basic_publish("", queues[0], b"{}", pika.BasicProperties(message_id=message_id), mandatory=True)

        replayed = dead_letters.replay(infra.amqp_url, service)

        assert sorted(replayed) == sorted(ids)
        assert channel.queue_declare(queues[0], passive=True).method.message_count == 0
        assert channel.queue_declare(queues[1], passive=True).method.message_count == PARKED
        assert dead_letters.replay(infra.amqp_url, service) == []  # nothing left to send back
    finally:
        if connection.is_open:
            for queue in queues:
                connection.channel().queue_delete(queue)
            connection.close()


def test_discarding_a_settled_event_removes_it_and_leaves_the_others_parked(infra):
    service = f"discard-test-{uuid.uuid4().hex[:8]}"
    dead = topology.dead_letter_queue(service)
    connection = amqp.connect(infra.amqp_url, "tests")
    try:
        channel = connection.channel()
        channel.queue_declare(dead, auto_delete=False)
        channel.confirm_delivery()
        for message_id in ("refund-1", "refund-2", "refund-3"):
            channel.basic_publish("", dead, b"{}", pika.BasicProperties(message_id=message_id), mandatory=True)

        assert [letter["message_id"] for letter in dead_letters.discard(infra.amqp_url, service, {"refund-2"})] == [
            "refund-2"]

        assert sorted(letter["message_id"] for letter in dead_letters.parked(infra.amqp_url, service)) == [
            "refund-1", "refund-3"]
        assert dead_letters.discard(infra.amqp_url, service, {"refund-2"}) == []  # gone for good
    finally:
        if connection.is_open:
            connection.channel().queue_delete(dead)
            connection.close()


def test_a_replayed_letter_the_broker_once_parked_is_retried_after_failing_again(infra, monkeypatch):
    """A letter parked by the work queue's delivery limit carries the broker's `x-death` naming
    that queue; were it kept on the replayed message and on its retry copy, the retry queue's
    expiry back into the work queue would look like a dead-letter cycle to the broker, which
    would never deliver the retry."""
    service = f"replay-test-{uuid.uuid4().hex[:8]}"
    event_type = f"{service}.happened"
    monkeypatch.setattr(topology, "SUBSCRIPTIONS", {service: (event_type,)})
    settings = Settings(service_name=service, amqp_url=infra.amqp_url, retry_delays_ms=(200,), max_attempts=3)
    work, dead = topology.work_queue(service), topology.dead_letter_queue(service)
    attempts: list[int] = []

    def fails_once(envelope, uow):
        attempts.append(current_attempt.get())
        if len(attempts) == 1:
            raise ConnectionError("SMTP server went away")

    runner = ConsumerRunner(settings, {event_type: fails_once}, NoTransaction, "tests", inbox=False)
    consuming = threading.Thread(target=runner.run, name="replay-test-consumer")
    connection = amqp.connect(infra.amqp_url, "tests")
    try:
        channel = connection.channel()
        topology.declare(channel, settings.retry_delays_ms)
        channel.confirm_delivery()
        envelope = Envelope(type=event_type, data={}, source="tests")
        channel.basic_publish("", dead, envelope.to_json(), pika.BasicProperties(
            message_id=envelope.id, type=event_type, delivery_mode=pika.DeliveryMode.Persistent,
            headers={**parked_by_the_delivery_limit(work, event_type), "x-attempt": 1}), mandatory=True)
        assert dead_letters.replay(infra.amqp_url, service) == [envelope.id]

        consuming.start()
        deadline = time.monotonic() + 20
        while len(attempts) < 2 and time.monotonic() < deadline:
            runner.stop.wait(0.05)

        assert attempts == [1, 2]
    finally:
        runner.stop.set()
        if consuming.is_alive():
            consuming.join(timeout=10)
        for queue in (work, dead, topology.returned_queue(service), topology.retry_queue(service, 200)):
            connection.channel().queue_delete(queue)
        connection.close()
