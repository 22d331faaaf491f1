"""A message that kills its consumer's process, against the real broker and real processes.

RabbitMQ 3.x counts a return towards a quorum queue's delivery limit for every message a dead
consumer held, handled or only prefetched: with the limit at 20 and a prefetch of 20, a message
that killed its consumer twenty times took the good ones held beside it to the dead-letter queue.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

from devtools.client import poll
from shared.config import Settings
from shared.messaging import connection as amqp
from shared.messaging import dead_letters, topology
from shared.messaging.consumer import RETURNS_BEFORE_PARKING, ConsumerRunner, DependencyDown, Pause
from shared.messaging.envelope import Envelope
from tests.integration import dying_consumer
from tests.unit.shared.fake_broker import NoTransaction

ROOT = Path(__file__).resolve().parents[2]
GOOD = 5


def test_a_message_that_kills_its_consumer_is_parked_alone_and_those_it_held_are_handled(infra, tmp_path,
                                                                                       monkeypatch):
    service = f"dying-test-{uuid.uuid4().hex[:8]}"
    event_type = f"{service}.happened"
    monkeypatch.setattr(topology, "SUBSCRIPTIONS", {service: (event_type,)})
    queues = [*topology.waiting_queues(service), topology.dead_letter_queue(service), topology.retry_queue(service, 200)]
    poison = Envelope(type=event_type, data={"poison": True}, source="tests")
    good = [Envelope(type=event_type, data={"n": n}, source="tests") for n in range(GOOD)]
    handled_file = tmp_path / "handled"
    handled_file.touch()
    connection = amqp.connect(infra.amqp_url, "tests")
    consumer: subprocess.Popen | None = None
    deaths = 0
    try:
        channel = connection.channel()
        topology.declare(channel, (200,))
        channel.confirm_delivery()
        for envelope in [poison, *good]:  # the poison first: the others wait behind it in the prefetch
            channel.basic_publish("", topology.work_queue(service), envelope.to_json(), envelope.properties(),
                                  mandatory=True)

        def ready(queue: str) -> int:
            return channel.queue_declare(queue, passive=True).method.message_count

        def settled() -> bool:
            """Restarts the consumer each time it died, as its Deployment would."""
            nonlocal consumer, deaths
            if consumer is not None and consumer.poll() is not None:
                assert consumer.returncode == dying_consumer.EXIT_CODE, "the consumer died of something else"
                consumer, deaths = None, deaths + 1
            if consumer is None:
                consumer = subprocess.Popen(
                    [sys.executable, "-m", "tests.integration.dying_consumer", infra.amqp_url, service,
                     str(handled_file)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return ready(topology.dead_letter_queue(service)) > 0 and not any(
                ready(queue) for queue in topology.waiting_queues(service))

        poll(settled, timeout=120, interval=0.2, what="a message parked and none waiting")

        parked = dead_letters.parked(infra.amqp_url, service)
        assert [letter["message_id"] for letter in parked] == [poison.id]
        assert "kills its consumer" in parked[0]["last_error"]
        handled = handled_file.read_text().split()
        # killed at its first try, then tried alone in the returned lane until parked
        assert handled.count(poison.id) == deaths == RETURNS_BEFORE_PARKING + 1
        assert sorted(set(handled) - {poison.id}) == sorted(e.id for e in good)
    finally:
        if consumer is not None:
            consumer.terminate()
            consumer.wait(timeout=30)
        if connection.is_open:
            for queue in queues:
                connection.channel().queue_delete(queue)
            connection.close()


def test_a_returned_message_waits_out_a_dependency_outage_pause_after_pause_and_is_not_parked(infra, monkeypatch):
    """Read with a subscription of prefetch 1, the lane's one message, put back at each pause's
    start, came again at once and was turned away by the pause's cancel: each pause counted a
    return against it, and a minute's outage parked it as a message that kills its consumer."""
    service = f"lane-test-{uuid.uuid4().hex[:8]}"
    event_type = f"{service}.happened"
    monkeypatch.setattr(topology, "SUBSCRIPTIONS", {service: (event_type,)})
    settings = Settings(service_name=service, amqp_url=infra.amqp_url, retry_delays_ms=(200,), max_attempts=3)
    down, tries, sent = threading.Event(), [], []
    down.set()

    def handler(envelope, uow):
        tries.append(envelope.id)
        if down.is_set():
            raise DependencyDown("SMTP: connection refused")
        sent.append(envelope.id)

    runner = ConsumerRunner(settings, {event_type: handler}, NoTransaction, "tests", inbox=False)
    runner.pause = Pause(first=0.05, longest=0.05)
    consuming = threading.Thread(target=runner.run, name="lane-test-consumer")
    envelope = Envelope(type=event_type, data={}, source="tests")
    connection = amqp.connect(infra.amqp_url, "tests")
    try:
        channel = connection.channel()
        topology.declare(channel, settings.retry_delays_ms)
        channel.confirm_delivery()
        properties = envelope.properties()
        properties.headers = {**(properties.headers or {}), "x-returns": RETURNS_BEFORE_PARKING - 1}
        channel.basic_publish("", topology.returned_queue(service), envelope.to_json(), properties, mandatory=True)

        consuming.start()
        def parked() -> int:
            return channel.queue_declare(topology.dead_letter_queue(service), passive=True).method.message_count

        poll(lambda: len(tries) >= 20 or parked(), timeout=60, interval=0.05, what="twenty tries, a pause after each")
        assert not parked(), f"parked after {len(tries)} tries"
        down.clear()
        poll(lambda: sent, timeout=30, interval=0.05, what="the message handled once the dependency is back")

        assert sent == [envelope.id]
        assert dead_letters.parked(infra.amqp_url, service) == []
    finally:
        runner.stop.set()
        if consuming.is_alive():
            consuming.join(timeout=10)
        for queue in (*topology.waiting_queues(service), topology.dead_letter_queue(service),
                      topology.retry_queue(service, 200)):
            connection.channel().queue_delete(queue)
        connection.close()
