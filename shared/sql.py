"""The order path's statements, sent straight to the driver inside the session's transaction.

`Session.execute` spends about as much Python time on a statement as psycopg does sending it
(execution context, parameter processing, result wrapping; ~100 µs on this machine, measured in
the commit that brought this in), and the order path sends a dozen statements per order across
checkout and inventory, plus the inbox, outbox and delivery-log statements of every consumer.
A `Statement` is written once with `:name` parameters, like `sa.text`, and run on the psycopg
connection under the session's SQLAlchemy connection: same transaction, same commit, same pool.

What SQLAlchemy did for those statements is done here: a driver error becomes the same
`sqlalchemy.exc.DBAPIError` subclass (so `except sa.exc.IntegrityError` and the services' 503 for
a lost database work unchanged), a lost connection is invalidated so the pool does not hand it
out again, and with tracing on each statement is a client span, as SQLAlchemy's instrumentation
makes one. Values are adapted by psycopg: JSON columns take `Json(value)`.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy import orm

from shared import tracing

Json = Jsonb  # what a JSON (JSONB) column's parameter is wrapped in

# `:name` parameters, not a `::type` cast nor a colon inside a word.
_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class Statement:
    """One SQL statement with `:name` parameters, converted once to psycopg's `%(name)s`."""

    def __init__(self, sql: str):
        self.sql = " ".join(sql.split())
        self._driver_sql = _PARAMETER.sub(r"%(\1)s", self.sql.replace("%", "%%"))
        self._span_name = self.sql.split(" ", 1)[0].upper()

    def run(self, session: orm.Session, params: Mapping[str, Any]) -> psycopg.Cursor:
        """Execute in `session`'s transaction (begun if need be); the cursor holds any rows."""
        if tracing.enabled():
            with tracing.span(self._span_name, kind="client",
                              attributes={"db.system": "postgresql", "db.statement": self.sql}):
                return self._execute(session, params)
        return self._execute(session, params)

    def first(self, session: orm.Session, params: Mapping[str, Any]) -> tuple | None:
        """The first row (a tuple), or None."""
        return self.run(session, params).fetchone()

    def scalar(self, session: orm.Session, params: Mapping[str, Any]) -> Any:
        """The first column of the first row, or None."""
        row = self.first(session, params)
        return None if row is None else row[0]

    def _execute(self, session: orm.Session, params: Mapping[str, Any]) -> psycopg.Cursor:
        try:
            return _driver_of(session).execute(self._driver_sql, params)
        except psycopg.Error as error:
            raise _as_sqlalchemy_error(session.connection(), self.sql, params, error) from error

    def __repr__(self) -> str:
        return f"Statement({self.sql!r})"


_DRIVER = "shared.sql.driver"  # session.info: (the transaction, its psycopg connection)


def _driver_of(session: orm.Session) -> psycopg.Connection:
    """The psycopg connection of `session`'s transaction (begun if need be). Remembered for the
    transaction: asking the session for its connection cost as much as a statement's conversion."""
    known = session.info.get(_DRIVER)
    if known is not None and known[0] is session.get_transaction():
        return known[1]
    driver = session.connection().connection.driver_connection  # begins the transaction
    session.info[_DRIVER] = (session.get_transaction(), driver)
    return driver


def _as_sqlalchemy_error(connection: sa.Connection, sql: str, params: Mapping[str, Any],
                         error: psycopg.Error) -> sa.exc.DBAPIError:
    """What SQLAlchemy raises for `error`, after invalidating a connection that is gone."""
    dialect = connection.dialect
    lost = dialect.is_disconnect(error, connection.connection.dbapi_connection, None)
    if lost:
        connection.invalidate(error)
    return sa.exc.DBAPIError.instance(sql, dict(params), error, dialect.loaded_dbapi.Error,
                                      hide_parameters=connection.engine.hide_parameters,
                                      connection_invalidated=lost, dialect=dialect)
