"""Events published straight to the broker, as the outbox relays publish them."""
from __future__ import annotations

import pika

from shared.messaging import topology
from shared.messaging.envelope import Envelope


def publish(stack, envelopes: list[Envelope]) -> None:
    """Publish as the outbox relays do: persistent, mandatory, confirmed."""
    connection = pika.BlockingConnection(pika.URLParameters(stack.infra.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for envelope in envelopes:
            channel.basic_publish(topology.EVENTS_EXCHANGE, envelope.type, envelope.to_json(), envelope.properties(),
                                  mandatory=True)
    finally:
        connection.close()
