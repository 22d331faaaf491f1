"""The whole RabbitMQ topology, declared here and nowhere else.

- `floodgate.events`: one durable topic exchange; the routing key is the event type.
  Events nobody is bound to go to its alternate exchange, so a `mandatory` publish of an event
  without consumers is still routed (to `floodgate.unrouted`) and never bounces.
- Per consuming service: a quorum work queue `<service>.events` bound to the event types the
  service handles; retry tiers `<service>.retry.<ms>ms` whose messages expire back into the work
  queue after their delay; and `<service>.dead` where poison messages are parked. Dead-lettering
  uses the at-least-once strategy, so a retry is never lost between queues.
- Per consuming service, `<service>.returned`: where a consumer sets aside each message the broker
  gave back to the work queue because the consumer that held it stopped without settling it
  (died, lost its connection). Its consumers take it one message at a time, so the message that
  kills its consumer is told apart from those that merely waited beside it in the prefetch
  (`shared.messaging.consumer`). RabbitMQ 3.x counts every such return towards the work queue's
  `x-delivery-limit`: without the lane, one message that killed its consumer twenty times
  parked every message held with it.
- `<service>.dead` keeps a message until an admin replays it, so nothing may count its returns:
  RabbitMQ 4.0 and later give a quorum queue without `x-delivery-limit` a limit of 20 returns,
  past which this queue (dead-lettering nowhere) drops the message. It is declared with no such
  argument all the same: `-1` (unlimited on 4.x) drops a message at its first return on 3.x, and
  an argument added to a queue that exists fails its redeclaration (PRECONDITION_FAILED) in every
  process. Instead nothing ever returns a message to it: the admin reads take each one and park
  a copy (`consumer.peek_dead_letters`, `consumer.replay_dead_letters`).

Both tables below are data: whichever process declares the topology (every relay and consumer
does, so no event is published before its queue exists) declares the same queues.
"""
from __future__ import annotations

from typing import Iterable

EVENTS_EXCHANGE = "floodgate.events"
UNROUTED_EXCHANGE = "floodgate.unrouted"
UNROUTED_QUEUE = "floodgate.unrouted"
# The broker's own safety net for a message that crashes its consumer before it can be retried.
BROKER_DELIVERY_LIMIT = 20

# Which service consumes which events: the single source of every binding.
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "inventory": ("order.confirmed", "order.cancelled", "order.expired", "order.payment_failed"),
    "checkout": ("reservation.expired", "reservation.lost", "payment.refund_requested", "email.sent"),
    "notifications": (
        "order.placed",
        "order.confirmed",
        "order.cancelled",
        "order.expired",
        "order.payment_failed",
        "order.shipped",
        "payment.refunded",
        "account.registered",
        "invite.issued",
    ),
}
# The wait before each retry of a failed event, per consuming service; the last tier repeats
# until the service's MAX_ATTEMPTS. Email may be late, never lost: notifications waits 10 s,
# 1 min, 10 min, then every hour (about three days at its 76 attempts) before parking an event.
RETRY_DELAYS_MS: dict[str, tuple[int, ...]] = {
    "inventory": (1000, 10_000, 60_000, 600_000),
    "checkout": (1000, 10_000, 60_000, 600_000),
    "notifications": (10_000, 60_000, 600_000, 3_600_000),
}


def retry_delays(service: str, override: Iterable[int] = ()) -> tuple[int, ...]:
    """`service`'s retry tiers. `override` (the setting RETRY_DELAYS_MS, for tests and local
    rehearsals only) replaces every service's tiers alike, so it must be the same in every
    process of a deployment."""
    return tuple(override) or RETRY_DELAYS_MS[service]


def work_queue(service: str) -> str:
    """The quorum queue `service` consumes its events from."""
    return f"{service}.events"


def retry_queue(service: str, delay_ms: int) -> str:
    """The delay queue whose messages return to `service`'s work queue after `delay_ms`."""
    return f"{service}.retry.{delay_ms}ms"


def returned_queue(service: str) -> str:
    """Where `service`'s consumers set aside messages given back by a consumer that stopped
    with them in hand, to take them one at a time."""
    return f"{service}.returned"


def waiting_queues(service: str) -> tuple[str, str]:
    """The queues whose messages wait for `service`'s consumers' first look: the work queue and
    the returned lane."""
    return work_queue(service), returned_queue(service)


def dead_letter_queue(service: str) -> str:
    """Where `service`'s poison and exhausted messages are parked for an admin."""
    return f"{service}.dead"


def _quorum(**arguments) -> dict:
    return {"x-queue-type": "quorum", **arguments}


def _dead_letter_to(queue: str) -> dict:
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def declare(channel, retry_delays_override: Iterable[int] = ()) -> None:
    """Declare exchanges, queues and bindings on `channel`; safe to call from every process."""
    retry_delays_override = tuple(retry_delays_override)
    channel.exchange_declare(UNROUTED_EXCHANGE, exchange_type="fanout", durable=True)
    channel.queue_declare(
        UNROUTED_QUEUE, durable=True, arguments=_quorum(**{"x-max-length": 100_000, "x-overflow": "drop-head"})
    )
    channel.queue_bind(UNROUTED_QUEUE, UNROUTED_EXCHANGE)
    channel.exchange_declare(
        EVENTS_EXCHANGE, exchange_type="topic", durable=True, arguments={"alternate-exchange": UNROUTED_EXCHANGE}
    )
    for service, event_types in SUBSCRIPTIONS.items():
        dead = dead_letter_queue(service)
        work = work_queue(service)
        # Its arguments must stay as brokers already hold them (see the module's docstring).
        channel.queue_declare(dead, durable=True, arguments=_quorum())
        for queue in (work, returned_queue(service)):
            channel.queue_declare(
                queue,
                durable=True,
                arguments=_quorum(**{"x-delivery-limit": BROKER_DELIVERY_LIMIT}, **_dead_letter_to(dead)),
            )
        for event_type in event_types:
            channel.queue_bind(work, EVENTS_EXCHANGE, routing_key=event_type)
        for delay in retry_delays(service, retry_delays_override):
            channel.queue_declare(
                retry_queue(service, delay),
                durable=True,
                arguments=_quorum(**{"x-message-ttl": int(delay)}, **_dead_letter_to(work)),
            )
