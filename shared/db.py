"""Database engine, sessions and the unit of work every service uses."""
from __future__ import annotations

from typing import Callable

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.engine import make_url

from shared.config import Settings
from shared.messaging.outbox import add_event


# libpq's connection settings for every engine. A database host that disappears without closing
# its connections (a node lost, a partition) leaves a statement waiting on an answer that never
# comes: without keepalives the kernel waits about two hours before it gives up on an idle
# connection, and fifteen minutes on one with unacknowledged data. A consumer's handler thread
# stuck so, its connection thread still beating the liveness heartbeat, was never restarted.
# Here a dead peer ends the statement with an error within about half a minute (the work is
# retried, as after any failure), and a connect gets no more than 5 s.
CONNECTION_SETTINGS = {
    "connect_timeout": 5,
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms: data sent and not acknowledged
}


# SQLSTATEs that say the database is away rather than that a statement failed: the connection's
# own failures (class 08, PgBouncer's too: no server connection within query_wait_timeout, say)
# and a server shutting down, crashed or starting up (57P01-57P03).
AWAY = ("08", "57P01", "57P02", "57P03")


def unavailable(error: BaseException) -> bool:
    """Whether `error` says the database (or its pooler) is away: no connection could be had,
    or the one in use was lost. A statement's own failure (a deadlock, a timeout, a constraint,
    bad data) is not: it has a server's SQLSTATE outside `AWAY`."""
    if isinstance(error, sa.exc.TimeoutError):  # no pooled connection within the pool's timeout
        return True
    if not isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    if error.connection_invalidated:
        return True
    state = getattr(error.orig, "sqlstate", None)
    return state is None or state.startswith(AWAY)


def deadlocked(error: BaseException) -> bool:
    """Whether PostgreSQL ended the transaction to break a deadlock (SQLSTATE 40P01): the same
    work, made again, may well go through."""
    return getattr(getattr(error, "orig", error), "sqlstate", None) == "40P01"


def away(error: BaseException, unit_of_work: Callable[[], object]) -> bool:
    """Whether `error` came of the database being away, and it still is: `unavailable(error)`,
    and a fresh unit of work (`unit_of_work()`) cannot run a statement either. A failure that
    only looks like an outage is the work's own: a statement that crashed its backend, or PgBouncer
    ending a transaction a slow handler left idle; such work, waited on as an outage, would never
    be counted, nor parked."""
    return unavailable(error) and not answers(unit_of_work)


def answers(unit_of_work: Callable[[], object]) -> bool:
    """Whether the database answers a fresh unit of work (`unit_of_work()`): False only when its
    `SELECT 1` fails as the database being away (`unavailable`); any other failure is an answer,
    and the work's own failure then counts as such. (A connection refused as it starts, a wrong
    password or too many clients, comes from psycopg without a SQLSTATE: it reads as away.)"""
    try:
        with unit_of_work() as uow:
            uow.session.execute(sa.text("SELECT 1"))
        return True
    except Exception as error:  # noqa: BLE001 - only an outage says no
        return not unavailable(error)


def make_engine(url: str, pool_size: int = 5, prepared_statements: bool = True, **kwargs) -> sa.Engine:
    """A pooled engine, its connections with `CONNECTION_SETTINGS`.

    Connections are not pinged before each use (a round trip per transaction, a fifth of an
    order's database time): after a database restart the first statement on a stale connection
    fails, SQLAlchemy then discards every connection the pool held, and the APIs answer that one
    request with a retryable 503.

    `prepared_statements=False` (the setting DATABASE_PREPARED_STATEMENTS) for a URL that goes
    through a transaction pooler: psycopg otherwise prepares a statement on the server after its
    fifth use, and the next transaction, on another server connection, does not find it.
    """
    kwargs["connect_args"] = {**CONNECTION_SETTINGS, **kwargs.get("connect_args", {})}
    # a statement's error names its SQL, not its values: an unexpected one is logged whole, and
    # its values may be a password's hash, an email or a buyer's address
    kwargs.setdefault("hide_parameters", True)
    if not prepared_statements:
        kwargs["connect_args"]["prepare_threshold"] = None
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        future=True,
        **kwargs,
    )


def engine_for(settings: Settings, pool_size: int = 5) -> sa.Engine:
    """`make_engine` on a service's database as its settings describe it: the URL, and whether
    that URL goes through a transaction pooler."""
    return make_engine(settings.database_url, pool_size=pool_size,
                       prepared_statements=settings.database_prepared_statements)


def read_briefly(engine: sa.Engine, statement: sa.Executable, timeout_seconds: float,
                 params: dict | None = None) -> list[sa.Row]:
    """The rows of one read-only `statement`, which PostgreSQL cancels after `timeout_seconds`
    (for /metrics: a slow database must not hold a scrape, nor a connection, for long)."""
    with engine.connect() as connection, connection.begin():
        connection.execute(sa.text(f"SET LOCAL statement_timeout = {max(1, int(timeout_seconds * 1000))}"))
        return connection.execute(statement, params or {}).all()


def make_session_factory(engine: sa.Engine) -> orm.sessionmaker:
    """Sessions that keep loaded objects readable after commit (views dump them afterwards)."""
    return orm.sessionmaker(bind=engine, expire_on_commit=False, future=True)


class UnitOfWork:
    """One database transaction around one domain operation.

    `with uow:` opens a session; leaving the block without `commit()` rolls back, so a handler
    that raises changes nothing.
    """

    def __init__(self, session_factory: Callable[[], orm.Session], source: str):
        self._session_factory = session_factory
        self.source = source
        self.session: orm.Session | None = None
        self.committed = False

    def __enter__(self) -> "UnitOfWork":
        self.session = self._session_factory()
        self.committed = False
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if not self.committed:
                # Detach first: loaded objects stay readable for a view that only read them.
                self.session.expunge_all()
                self.session.rollback()
        finally:
            self.session.close()
            self.session = None

    def commit(self) -> None:
        """Commit the transaction; the block may go on and open another one."""
        self.session.commit()
        self.committed = True

    def rollback(self) -> None:
        """Abandon the transaction."""
        self.session.rollback()

    def publish(self, event_type: str, data: dict) -> None:
        """Record an event in the outbox, in this transaction; the relay publishes it later."""
        add_event(self.session, self.source, event_type, data)


def create_database_if_missing(url: str) -> bool:
    """Create the database named in `url` when it does not exist; return True if created.

    Used by the development stack and the tests; in Kubernetes the databases are provisioned.
    """
    target = make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            )
            if exists:
                return False
            conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
            return True
    finally:
        admin.dispose()


def drop_database(url: str) -> None:
    """Drop the database named in `url`, disconnecting its sessions (tests clean up with it)."""
    target = make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def ping(engine: sa.Engine) -> None:
    """Raise when the database does not answer a trivial query."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
