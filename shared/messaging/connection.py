"""Opening broker connections: one per process or thread, after gunicorn forks."""
from __future__ import annotations

import logging
import random
from typing import Iterator

import pika

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


def parameters(url: str, name: str, heartbeat: int = 30) -> pika.URLParameters:
    """Connection parameters with short timeouts and a name that shows in the management UI."""
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 30
    params.socket_timeout = 5
    params.connection_attempts = 1
    params.client_properties = {"connection_name": name}
    return params


def connect(url: str, name: str, heartbeat: int = 30) -> pika.BlockingConnection:
    """A blocking connection; not thread-safe, so open one per process or thread."""
    return pika.BlockingConnection(parameters(url, name, heartbeat))


def backoff(initial: float = 0.2, cap: float = 10.0) -> Iterator[float]:
    """Capped exponential delays with jitter, for reconnect loops."""
    delay = initial
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(cap, delay * 2)
