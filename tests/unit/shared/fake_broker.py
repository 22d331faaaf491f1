"""Fake brokers, no network: one for the metrics' kept connection (`shared.messaging.metrics`),
one with queues for a consumer runner (`shared.messaging.consumer`) or a relay to work against."""
from __future__ import annotations

import itertools
import queue as queues
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from types import SimpleNamespace

import pika

from devtools.client import poll
from shared.messaging import topology

# How long a call the fake never answers waits before it fails the test instead of hanging it.
GIVE_UP_SECONDS = 6.0


class StillWaiting(BaseException):
    """A call nobody answered or ended waited `GIVE_UP_SECONDS`: not an `Exception`, so no
    `except Exception` of the code under test (a scrape's, say) can take it for a broker error."""


class FakeBroker:
    """`amqp.connect` for the metrics' kept connection: counts the connections it opens (and the
    arguments of each connect); each queue's depth from `depths` (missing: not declared);
    `fail_next` connections' reads fail.

    `go_silent("connect")` or `go_silent("declare")`: from then on connects, or passive declares,
    get no answer until `answer()`, as from a node that died without closing TCP; `waiting` is set
    once a call waits."""

    def __init__(self, depths: dict[str, int]):
        self.depths, self.opened, self.fail_next = depths, [], 0
        self.connects: list[dict] = []
        self.declared: list[str] = []
        self.waiting = threading.Event()
        self._silent: str | None = None
        self._answered = threading.Event()

    def go_silent(self, where: str) -> None:
        assert where in ("connect", "declare")
        self._silent = where
        self._answered.clear()
        self.waiting.clear()

    def answer(self) -> None:
        self._silent = None
        self._answered.set()

    def connect(self, url, name, heartbeat, socket_timeout):
        self.connects.append({"heartbeat": heartbeat, "socket_timeout": socket_timeout})
        if self._silent == "connect":
            self.waiting.set()
            if not self._answered.wait(GIVE_UP_SECONDS):
                raise StillWaiting("a connect nobody answered")
        connection = FakeConnection(self)
        if self.fail_next:
            self.fail_next -= 1
            connection.broken = True
        self.opened.append(connection)
        return connection

    def wait_for_answer(self) -> None:
        self.waiting.set()
        if not self._answered.wait(GIVE_UP_SECONDS):
            raise StillWaiting("a declare nobody answered")


class FakeConnection:
    is_open, broken = True, False

    def __init__(self, broker: FakeBroker):
        self.broker = broker

    def channel(self):
        return FakeChannel(self)

    def close(self):
        self.is_open = False


class FakeChannel:
    def __init__(self, connection: FakeConnection):
        self.connection = connection
        self._open = True

    @property
    def is_open(self) -> bool:
        return self._open

    def queue_declare(self, queue, passive):
        assert passive
        broker = self.connection.broker
        if self.connection.broken:
            raise pika.exceptions.StreamLostError("connection reset")
        broker.declared.append(queue)
        if broker._silent == "declare":
            broker.wait_for_answer()
        if queue not in broker.depths:
            self._open = False
            raise pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND")
        return SimpleNamespace(method=SimpleNamespace(message_count=broker.depths[queue]))

    def close(self):
        self._open = False


def installed(monkeypatch) -> FakeBroker:
    """A fake broker behind `shared.messaging.metrics`, with a kept connection of its own."""
    from shared.messaging import metrics as messaging_metrics

    fake = FakeBroker({"checkout.dead": 3, "checkout.work": 40})
    monkeypatch.setattr(messaging_metrics.amqp, "connect", fake.connect)
    monkeypatch.setattr(messaging_metrics, "_kept", messaging_metrics._KeptConnection())
    return fake


# --- queues, for a consumer runner ---------------------------------------------------------------


@dataclass
class Message:
    properties: pika.BasicProperties
    body: bytes
    returns: int = 0  # how many times a closing connection gave it back (RabbitMQ 3.x's count)


class QueueBroker:
    """`amqp.connect` for a consumer runner: queues of messages by name (`put`), delivered to the
    consumers of a connection when it processes data events, on the thread that calls it. What the
    runner publishes lands in `queues`; what it acks is in `acked`.

    `refuse_connects`: that many connects fail as with the broker away, `down` every one;
    `lose(connection)`: its next read fails as a connection the broker dropped;
    `cancel_consumers`: every consumer is cancelled by the broker at its connection's next read.

    As RabbitMQ 3.x's quorum queues, a closing connection gives back what it did not ack to the
    head of its queue, each message marked `redelivered` and counted (`x-delivery-count`);
    `delivery_limits` names queues with an `x-delivery-limit` and where they dead-letter a
    message given back more often."""

    def __init__(self, delivery_limits: dict[str, tuple[int, str]] | None = None):
        self.delivery_limits = delivery_limits or {}
        self.queues: dict[str, deque[Message]] = defaultdict(deque)
        self.acked: list[Message] = []
        self.connections: list[QueueConnection] = []
        self.refuse_connects = 0
        self.down = False
        self.cancel_consumers = False

    def connect(self, url, name, heartbeat=30, socket_timeout=5):
        if self.down or self.refuse_connects:
            self.refuse_connects = max(0, self.refuse_connects - 1)
            raise pika.exceptions.AMQPConnectionError("connection refused")
        connection = QueueConnection(self)
        self.connections.append(connection)
        return connection

    def put(self, queue: str, body: bytes, **properties) -> None:
        self.queues[queue].append(Message(pika.BasicProperties(**properties), body))

    def consuming(self) -> bool:
        """Whether an open connection has a consumer."""
        return any(connection.is_open and connection.consumers for connection in self.connections)

    def lose(self, connection: "QueueConnection") -> None:
        connection.lost = True


class QueueConnection:
    def __init__(self, broker: QueueBroker):
        self.broker = broker
        self.is_open = True
        self.lost = False
        self.consumers: dict[str, tuple[QueueChannel, str, object]] = {}
        self.channels: list[QueueChannel] = []
        self.unacked: dict[int, tuple[str, Message, QueueChannel]] = {}
        self._tags = itertools.count(1)
        self._callbacks: queues.Queue = queues.Queue()

    def channel(self) -> "QueueChannel":
        channel = QueueChannel(self)
        self.channels.append(channel)
        return channel

    def add_callback_threadsafe(self, callback) -> None:
        if not self.is_open:
            raise pika.exceptions.ConnectionWrongStateError("connection closed")
        self._callbacks.put(callback)

    def process_data_events(self, time_limit=0) -> None:
        if self.lost:
            self.close()
            raise pika.exceptions.StreamLostError("connection reset by peer")
        if self.broker.cancel_consumers:
            for tag, (channel, _queue, _on_message) in list(self.consumers.items()):
                del self.consumers[tag]
                for on_cancel in channel.on_cancel:
                    on_cancel(SimpleNamespace(method=SimpleNamespace(consumer_tag=tag)))
        self._deliver()
        # Back within 50 ms whatever the limit (the runner reads again): a stopped runner stops at once.
        wait = min(time_limit, 0.05)
        try:
            callback = self._callbacks.get(timeout=wait) if wait else self._callbacks.get_nowait()
        except queues.Empty:
            return
        callback()
        while not self._callbacks.empty():
            self._callbacks.get_nowait()()

    def _deliver(self) -> None:
        for channel, queue, on_message in list(self.consumers.values()):
            waiting = self.broker.queues[queue]
            while waiting and sum(held is channel for *_, held in self.unacked.values()) < channel.prefetch:
                message = waiting.popleft()
                tag = next(self._tags)
                self.unacked[tag] = (queue, message, channel)
                on_message(channel, SimpleNamespace(delivery_tag=tag, redelivered=message.returns > 0),
                           message.properties, message.body)

    def close(self) -> None:
        # What the runner did not ack goes back to the head of its queue, counted.
        for _, (queue, message, _channel) in sorted(self.unacked.items(), reverse=True):
            message.returns += 1
            message.properties.headers = {**(message.properties.headers or {}), "x-delivery-count": message.returns}
            limit, dead = self.broker.delivery_limits.get(queue, (None, None))
            if limit is not None and message.returns > limit:
                self.broker.queues[dead].append(message)
            else:
                self.broker.queues[queue].appendleft(message)
        self.unacked.clear()
        self.consumers.clear()
        self.is_open = False


class QueueChannel:
    def __init__(self, connection: QueueConnection):
        self.connection = connection
        self.prefetch = 0
        self.on_cancel: list = []
        self.queues_read: set[str] = set()  # consumed, or read with basic_get
        self.closed_by_broker = False  # as RabbitMQ closes a channel (its delivery-acknowledgement timeout)

    @property
    def is_closed(self) -> bool:
        return self.closed_by_broker or not self.connection.is_open

    def exchange_declare(self, exchange, **kwargs):
        pass

    def queue_declare(self, queue, passive=False, **kwargs):
        waiting = self.connection.broker.queues[queue]  # declaring creates it
        return SimpleNamespace(method=SimpleNamespace(message_count=len(waiting)))

    def queue_bind(self, queue, exchange, routing_key=None, **kwargs):
        pass

    def confirm_delivery(self):
        pass

    def basic_qos(self, prefetch_count=0, **kwargs):
        self.prefetch = prefetch_count

    def add_on_cancel_callback(self, callback):
        self.on_cancel.append(callback)

    def basic_consume(self, queue, on_message_callback, **kwargs):
        self.queues_read.add(queue)
        tag = f"ctag-{len(self.connection.consumers) + 1}"
        self.connection.consumers[tag] = (self, queue, on_message_callback)
        return tag

    def basic_cancel(self, consumer_tag):
        self.connection.consumers.pop(consumer_tag, None)

    def basic_get(self, queue):
        self.queues_read.add(queue)
        waiting = self.connection.broker.queues[queue]
        if not waiting:
            return None, None, None
        message = waiting.popleft()
        tag = next(self.connection._tags)
        self.connection.unacked[tag] = (queue, message, self)
        return SimpleNamespace(delivery_tag=tag, redelivered=message.returns > 0), message.properties, message.body

    def basic_publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        assert exchange == "" and routing_key in self.connection.broker.queues, f"unroutable: {routing_key}"
        self.connection.broker.queues[routing_key].append(Message(properties, body))

    def basic_ack(self, delivery_tag):
        _, message, _channel = self.connection.unacked.pop(delivery_tag)
        self.connection.broker.acked.append(message)


def parked_by_the_delivery_limit(queue: str, event_type: str) -> dict:
    """The headers RabbitMQ adds to a message its quorum queue `queue` dead-lettered past the
    delivery limit."""
    return {
        "x-death": [{"count": 1, "reason": "delivery_limit", "queue": queue, "time": datetime.now(timezone.utc),
                     "exchange": topology.EVENTS_EXCHANGE, "routing-keys": [event_type]}],
        "x-first-death-queue": queue,
        "x-first-death-reason": "delivery_limit",
        "x-first-death-exchange": topology.EVENTS_EXCHANGE,
        "x-last-death-queue": queue,
        "x-last-death-reason": "delivery_limit",
        "x-last-death-exchange": topology.EVENTS_EXCHANGE,
    }


class NoTransaction:
    """A unit of work for handlers that touch no database: entered, committed, nothing kept; a
    statement (the consumer's `SELECT 1` probe) is answered."""

    @property
    def session(self):
        return self

    def execute(self, statement):
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def commit(self):
        pass


def eventually(condition, what: str) -> None:
    """Poll `condition` until it holds, failing after GIVE_UP_SECONDS (devtools.client.poll)."""
    poll(condition, timeout=GIVE_UP_SECONDS, interval=0.01, what=what)


def counted_pauses(monkeypatch) -> list[int]:
    """The reconnect waits, numbered from the shortest (1) as each back-off hands them out."""
    pauses = []

    def backoff():
        for n in itertools.count(1):
            pauses.append(n)
            yield n / 1000

    monkeypatch.setattr("shared.messaging.connection.backoff", backoff)
    return pauses
