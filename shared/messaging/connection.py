"""Opening broker connections: one per process or thread, after gunicorn forks.

A broker URL names one node (`amqp://user:pass@host:5672/vhost`) or several, separated by commas
(`amqp://...@rabbit-0:5672/%2F,amqp://...@rabbit-1:5672/%2F,...`): the nodes of a cluster. A
connection goes to the first of them that answers; each new connection of a process starts one
node further along, so a relay or consumer whose node went away tries another node first.
"""
from __future__ import annotations

import itertools
import logging
import random
import re
import threading
from typing import Iterator

import pika

from shared.heartbeat import Heartbeat, reconnecting_file

log = logging.getLogger("floodgate.messaging")

# Errors after which a fresh connection may succeed.
RECOVERABLE = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    pika.exceptions.ConnectionClosedByBroker,
    ConnectionError,
    OSError,
)


def addresses(url: str) -> list[str]:
    """The broker URLs in `url`: one, or several separated by commas (each starting `amqp`)."""
    # A comma inside one URL (in a query option, say) is not followed by a scheme.
    return [part.strip() for part in re.split(r",(?=\s*amqps?://)", url) if part.strip()]


def parameters(url: str, name: str, heartbeat: int = 30, socket_timeout: float = 5) -> pika.URLParameters:
    """Connection parameters for one node, with short timeouts and a name that shows in the
    management UI and in `rabbitmqctl list_connections client_properties`."""
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 30
    params.socket_timeout = socket_timeout
    params.connection_attempts = 1
    params.client_properties = {"connection_name": name}
    return params


# Which node this process's next connection tries first.
_next_start = itertools.count()


def connect(url: str, name: str, heartbeat: int = 30, socket_timeout: float = 5) -> pika.BlockingConnection:
    """A blocking connection to the first node of `url` that answers; not thread-safe, so open
    one per process or thread.

    Each call starts one node further along the list (and goes round the others after it), so a
    reconnect after a lost node tries the next node first instead of waiting on the lost one.
    """
    nodes = addresses(url)
    if not nodes:
        raise ValueError("no broker address in the AMQP URL")
    start = next(_next_start) % len(nodes)
    ordered = nodes[start:] + nodes[:start]
    return pika.BlockingConnection([parameters(node, name, heartbeat, socket_timeout) for node in ordered])


def backoff(initial: float = 0.2, cap: float = 10.0) -> Iterator[float]:
    """Capped exponential delays with jitter, for reconnect loops."""
    delay = initial
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(cap, delay * 2)


class Reconnects:
    """A relay's or consumer's waits between attempts to reach the broker (or its database):
    capped doubling (`backoff`), from the shortest again only once a connection has done a turn
    of work (`worked`). A broker that accepts a connection and drops or cancels it at once, or a
    database that is away while the broker answers, is not then tried again ten times a second.

    While it waits the worker beats `reconnecting_file(heartbeat_file)` (shared/heartbeat.py):
    alive, not ready, so the kubelet neither restarts it (that cannot bring the broker back, and
    its back-off would delay the worker once the broker is) nor counts it ready in a rollout."""

    def __init__(self, stop: threading.Event, heartbeat_file: str, logger: logging.Logger):
        self._stop = stop
        self._liveness = Heartbeat(reconnecting_file(heartbeat_file))
        self._log = logger
        self._delays = backoff()
        self._waited = False

    def worked(self) -> None:
        """The connection did a turn of work: the next outage starts from the shortest wait."""
        if self._waited:
            self._delays, self._waited = backoff(), False

    def wait(self, message: str, error: Exception) -> None:
        """Log why, beat the liveness file, and wait the next pause (less if asked to stop)."""
        pause = next(self._delays)
        self._waited = True
        self._log.warning(message, extra={"error": repr(error), "retry_in": round(pause, 2)})
        self._liveness.beat()
        self._stop.wait(pause)
