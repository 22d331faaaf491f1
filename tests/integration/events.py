"""Events published straight to the broker, as the outbox relays publish them."""
from __future__ import annotations


from shared.messaging import topology
from shared.messaging import connection as amqp
from shared.messaging.envelope import Envelope


def publish(stack, envelopes: list[Envelope]) -> None:
    """Publish as the outbox relays do: persistent, mandatory, confirmed."""
    connection = amqp.connect(stack.infra.amqp_url, "tests")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for envelope in envelopes:
            channel.basic_publish(topology.EVENTS_EXCHANGE, envelope.type, envelope.to_json(), envelope.properties(),
                                  mandatory=True)
    finally:
        connection.close()


def redeliver_reversed(stack, queue: str, order_id: str, count: int, timeout: float = 30) -> list[tuple[str, str]]:
    """Take `count` messages about `order_id` from `queue` and put them back newest first, as a
    retry tier or a slow node can deliver them: the same messages (ids, headers, bodies), in
    reverse order; other messages go back as they were. Returns the (event type, message id) of
    the order's messages in the new delivery order. Nobody may be consuming `queue`."""
    from devtools.client import poll

    connection = amqp.connect(stack.infra.amqp_url, "tests")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        taken, ours = [], []

        def take_ours():
            method, properties, body = channel.basic_get(queue)
            if method is not None:
                taken.append((method, properties, body))
                if order_id.encode() in body:
                    ours.append((method, properties, body))
            return len(ours) >= count

        poll(take_ours, timeout=timeout, interval=0.05, what=f"{count} messages about {order_id} in {queue}")
        others = [message for message in taken if message not in ours]
        for method, properties, body in others + ours[::-1]:
            channel.basic_publish("", queue, body, properties, mandatory=True)
        channel.basic_ack(taken[-1][0].delivery_tag, multiple=True)
        return [(method.routing_key, properties.message_id) for method, properties, _ in ours[::-1]]
    finally:
        connection.close()
