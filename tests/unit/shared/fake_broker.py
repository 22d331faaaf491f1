"""A fake broker for the metrics' kept connection (`shared.messaging.metrics`): no network."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pika

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
