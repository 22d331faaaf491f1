"""Replaying parked events, against the real broker: every one parked goes back, once.

A service of the test's own (queues declared here, no consumer), so the replayed messages stay
in its work queue to be counted.
"""
from __future__ import annotations

import uuid

import pika

from shared.messaging import connection as amqp
from shared.messaging import dead_letters, topology

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
