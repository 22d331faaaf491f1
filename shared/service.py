"""A service's composition root: what each of its processes is built from, made once at start.

Every service has `services/<service>/bootstrap.py` with one function, `bootstrap(kind,
settings=None, ...)`, that reads the settings, opens the database engine with the pool that kind
of process needs, and wires the clients and event handlers that kind runs. Its API
(`app.create_app`) and its processes (`python -m services.<service> <process>`, see
`shared/processes.py`) start from it, so one file says how a service is put together; where a
service talks to the outside (checkout: `inventory`, `provider`; notifications: `mailer`), a test
passes a fake of it (`bootstrap("consumer", settings, provider=FakeProvider())`).

The kinds of process, and so the names in logs and broker connections, are the same in every
service: `<service>-api` (the operator commands run in the API's app, and log as it does),
`<service>-consumer`, `<service>-relay`, `<service>-sweeper`, `<service>-admitter` (checkout's
waiting room), `<service>-job` (migrations and scheduled jobs).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import sqlalchemy as sa
from sqlalchemy import orm

from shared import db
from shared.config import Settings

KINDS = ("api", "consumer", "relay", "sweeper", "admitter", "line-status", "job")
# Database connections each kind of process keeps (its engine's pool_size; the ceiling is twice
# that), unless its service's bootstrap says otherwise (its POOL_SIZES). An API's request threads
# hold one each at a time; a consumer's are sized by `pool_size` from its threads.
# deploy/pooling.py sizes PgBouncer from these same numbers, through `pool_size`.
DEFAULT_POOL_SIZES: Mapping[str, int] = {"api": 5, "consumer": 0, "relay": 1, "sweeper": 1, "admitter": 1,
                                         "line-status": 1, "job": 1}
# The threads of a consumer process that hold a connection besides its handlers (CONSUMER_THREADS):
# the returned lane's (shared/messaging/consumer.py), the housekeeper's and the heartbeat's
# (`LastSeen`). Each holds one at a time, so they are the consumer's pool. A handler's or the
# lane's probe of the database (`db.away` after a lost connection, `db.answers` after a pause)
# takes one more while notifications' handler still holds its own: from the ceiling, which has
# one more per thread.
CONSUMER_OWN_THREADS = 3


@dataclass(frozen=True, kw_only=True)
class Root:
    """What every service's processes share; a service's root subclasses it to add its clients."""

    kind: str
    settings: Settings
    engine: sa.Engine
    session_factory: orm.sessionmaker
    unit_of_work: Callable[[], db.UnitOfWork]
    # where this service's Alembic migrations live
    migrations: Path
    # event type -> handler(envelope, uow), for the service's consumer (empty: it consumes nothing)
    event_handlers: Mapping[str, Callable] = field(default_factory=dict)
    # Whether the consumer records each message id in the inbox so that a redelivered message
    # changes nothing. False only for handlers that are idempotent by themselves (notifications:
    # its delivery log, keyed by event id, already says whether an event's email went out).
    inbox: bool = True
    # What the consumer deletes as it goes besides its inbox (shared/messaging/housekeeping.py):
    # name -> one batch of at most the size it is given, returning the rows it deleted.
    purges: Mapping[str, Callable[[int], int]] = field(default_factory=dict)

    @property
    def service(self) -> str:
        return self.settings.service_name

    @property
    def process(self) -> str:
        """This process's name in logs, metrics and broker connections."""
        return f"{self.service}-{self.kind}"

    def close(self) -> None:
        """Let go of what the root opened (a service with clients to close extends it)."""
        self.engine.dispose()


def pool_size(kind: str, settings: Settings, overrides: Mapping[str, int] | None = None) -> int:
    """The pool a process of `kind` opens with `settings`: the service's own figure, else the
    default; a consumer keeps at least one connection per thread that holds one (CONSUMER_THREADS
    handlers and `CONSUMER_OWN_THREADS`), its ceiling one more each for a probe; an API whose orders
    hold their connection through a call (checkout's MAX_ORDERS_IN_FLIGHT) a ceiling (twice the
    pool: `db.make_engine`'s overflow) that covers them all: orders in flight never wait for each
    other's connections (the API's other requests may wait, briefly, while all are in orders).
    The process and PgBouncer's sizing (deploy/pooling.py) both ask here."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of process {kind!r}; one of {', '.join(KINDS)}")
    size = {**DEFAULT_POOL_SIZES, **(overrides or {})}[kind]
    if kind == "consumer":
        return max(size, settings.consumer_threads + CONSUMER_OWN_THREADS)
    if kind == "api":
        return max(size, math.ceil(getattr(settings, "max_orders_in_flight", 0) / 2))
    return size


def database(settings: Settings, kind: str, unit_of_work_class: type = db.UnitOfWork,
             pool_sizes: Mapping[str, int] | None = None) -> dict:
    """The database part of a root: engine, sessions and the unit-of-work factory, as keyword
    arguments for the service's `Root` subclass."""
    engine = db.engine_for(settings, pool_size=pool_size(kind, settings, pool_sizes))
    session_factory = db.make_session_factory(engine)
    return {
        "kind": kind,
        "settings": settings,
        "engine": engine,
        "session_factory": session_factory,
        "unit_of_work": functools.partial(unit_of_work_class, session_factory, settings.service_name),
    }
