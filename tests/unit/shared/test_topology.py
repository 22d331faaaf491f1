"""The topology's declarations, recorded by a fake channel (no broker)."""
from __future__ import annotations

from shared.messaging import topology


class RecordingChannel:
    def __init__(self):
        self.queues: dict[str, dict] = {}

    def queue_declare(self, queue, durable=False, arguments=None, **kwargs):
        assert durable
        self.queues[queue] = dict(arguments or {})

    def exchange_declare(self, *args, **kwargs):
        pass

    def queue_bind(self, *args, **kwargs):
        pass


def declared() -> dict[str, dict]:
    channel = RecordingChannel()
    topology.declare(channel)
    return channel.queues


def test_dead_letter_queues_keep_the_arguments_brokers_already_hold():
    """Any argument added here (an `x-delivery-limit`, say) would make every process's declaration
    fail with PRECONDITION_FAILED on a broker where the queue exists; and `-1`, unlimited on
    RabbitMQ 4.x, drops a message at its first return on 3.x."""
    queues = declared()
    for service in topology.SUBSCRIPTIONS:
        assert queues[topology.dead_letter_queue(service)] == {"x-queue-type": "quorum"}


def test_work_queues_set_their_own_delivery_limit_and_park_what_passes_it():
    queues = declared()
    for service in topology.SUBSCRIPTIONS:
        work = queues[topology.work_queue(service)]
        assert work["x-delivery-limit"] == topology.BROKER_DELIVERY_LIMIT
        assert work["x-dead-letter-routing-key"] == topology.dead_letter_queue(service)
        assert work["x-dead-letter-strategy"] == "at-least-once"
