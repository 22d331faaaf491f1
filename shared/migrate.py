"""Alembic, per service: `python -m services.<service> migrate [--create-database]`.

Each service says where its migrations live (its root's `migrations`, `services/<service>/
migrations/`); their `env.py` calls `run_migrations()` below, so the wiring is written once.

A migration that alters a table waits for every transaction using it to end, and every query on
that table then waits behind the migration: one long transaction (a report, an admin's open
`psql`) would stall a live drop's orders for as long as it lasts. So each run waits for a lock
`lock_timeout` seconds at most, gives up, and tries again a little later, `attempts` times
before it fails. Each migration is a transaction of its own, with its revision: one that gives
up rolls back whole, those before it stay done, and the next run carries on from it. (A
migration that commits on the way, Alembic's `autocommit_block` for `CREATE INDEX CONCURRENTLY`,
has what came before the block committed with it, so it must be written to run again, as
accounts' are; the statements in the block wait without the limit, `_limit_lock_waits` says
why.)
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from shared import db

log = logging.getLogger("floodgate.migrate")
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout that ran out
MAX_PAUSE_SECONDS = 30.0


class LockNotAvailable(RuntimeError):
    """Every attempt waited its whole lock timeout for a table another transaction holds."""


def alembic_config(migrations: Path, database_url: str, lock_timeout: float | None = None) -> Config:
    """Alembic's configuration for the migrations in `migrations` on `database_url`; each run
    waits `lock_timeout` seconds at most for a lock (None: as long as it takes)."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["lock_timeout"] = lock_timeout
    return config


def upgrade(migrations: Path, database_url: str, create_database: bool = False, *,
            lock_timeout: float | None = None, attempts: int = 1, target: str = "head") -> None:
    """Bring the database at `database_url` to `target` (the newest revision in `migrations`).
    With a `lock_timeout`, a run that waited that long for a lock is tried again, up to
    `attempts` runs, after a pause that doubles from one second; LockNotAvailable after the last."""
    if create_database:
        db.create_database_if_missing(database_url)
    config = alembic_config(migrations, database_url, lock_timeout)
    for attempt in range(1, attempts + 1):
        try:
            command.upgrade(config, target)
            return
        except sa.exc.OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            if attempt == attempts:
                raise LockNotAvailable(
                    f"the migration waited {lock_timeout} s for a table's lock in each of {attempts} attempts: a "
                    "long transaction holds it (pg_stat_activity says whose); the migrations before it are done, "
                    "and the next run carries on from it") from None
            pause = min(MAX_PAUSE_SECONDS, 2.0 ** (attempt - 1))
            log.warning("a migration waited too long for a lock and rolled back; trying again from it",
                        extra={"attempt": attempt, "attempts": attempts, "lock_timeout_seconds": lock_timeout,
                               "pause_seconds": pause})
            time.sleep(pause)


def _limit_lock_waits(connection: sa.Connection, lock_timeout: float) -> None:
    """Set `lock_timeout` at the start of every transaction `connection` begins: each migration's
    (also the one after a migration that committed on the way), never a statement run outside
    one. There, `autocommit_block`'s `CREATE INDEX CONCURRENTLY` waits for every older transaction
    of the database, blocking none of the drop's queries meanwhile; given up after 5 s, it left
    an invalid index that the retry's `IF NOT EXISTS` then kept for good."""
    setting = f"SET LOCAL lock_timeout = '{max(1, round(lock_timeout * 1000))}ms'"

    def limited(conn: sa.Connection) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql(setting)

    sa.event.listen(connection, "begin", limited)


def run_migrations() -> None:
    """Body of every service's `migrations/env.py` (online mode only): each pending migration in
    a transaction of its own, each statement waiting for a lock the configured `lock_timeout` at
    most."""
    from alembic import context

    lock_timeout = context.config.attributes.get("lock_timeout")
    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        if lock_timeout is not None:
            _limit_lock_waits(connection, lock_timeout)
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
