"""shared.sql against the real PostgreSQL: statements run in the session's transaction, and a
driver error is the SQLAlchemy error the services already handle (a lost connection included)."""
import uuid

import pytest
import sqlalchemy as sa

from shared.db import make_engine, make_session_factory
from shared.sql import Json, Statement
from tests.integration.database import scratch_database

INSERT = Statement("INSERT INTO things (id, doc) VALUES (:id, :doc) RETURNING id")
COUNT = Statement("SELECT count(*) FROM things WHERE id = :id")


@pytest.fixture
def session_factory(infra):
    with scratch_database(infra, "sql") as url:
        engine = make_engine(url, pool_size=1)
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE things (id uuid PRIMARY KEY, doc jsonb NOT NULL)"))
        yield make_session_factory(engine)
        engine.dispose()


def test_a_statement_is_part_of_the_sessions_transaction(session_factory):
    kept, dropped = uuid.uuid4(), uuid.uuid4()
    with session_factory() as session:
        assert INSERT.scalar(session, {"id": kept, "doc": Json({"a": [1, "é"]})}) == kept
        session.commit()
        INSERT.run(session, {"id": dropped, "doc": Json({})})  # the session's next transaction
        session.rollback()
        assert COUNT.scalar(session, {"id": kept}) == 1  # and the one after that
    with session_factory() as session:
        assert COUNT.scalar(session, {"id": kept}) == 1
        assert COUNT.scalar(session, {"id": dropped}) == 0
        assert session.execute(sa.text("SELECT doc FROM things WHERE id = :id"), {"id": kept}).scalar() == {"a": [1, "é"]}


def test_a_duplicate_is_sqlalchemys_integrity_error(session_factory):
    same = uuid.uuid4()
    with session_factory() as session:
        INSERT.run(session, {"id": same, "doc": Json({})})
        with pytest.raises(sa.exc.IntegrityError):
            INSERT.run(session, {"id": same, "doc": Json({})})


def test_a_lost_connection_is_an_operational_error_and_leaves_the_pool(session_factory):
    with session_factory() as session:
        pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with session_factory() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(sa.exc.OperationalError) as lost:
            COUNT.run(session, {"id": uuid.uuid4()})
        assert lost.value.connection_invalidated
    with session_factory() as session:  # the pool hands out a live connection, not the dead one
        assert session.execute(sa.text("SELECT pg_backend_pid()")).scalar() != pid
        assert COUNT.scalar(session, {"id": uuid.uuid4()}) == 0


def test_a_database_host_that_answers_nothing_costs_a_connect_its_timeout_not_minutes():
    """A listening socket that never answers, as a host behind a partition: the engine's
    connect gives up after its connect_timeout (shared.db.CONNECTION_SETTINGS)."""
    import socket
    import time

    from shared.db import CONNECTION_SETTINGS

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nothing ever answers the startup packet
    try:
        engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/nothing", pool_size=1)
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError):
            engine.connect()
        assert time.monotonic() - started < CONNECTION_SETTINGS["connect_timeout"] + 3
        engine.dispose()
    finally:
        silent.close()


def test_a_statements_error_names_its_sql_but_not_its_values(session_factory):
    """An unexpected error is logged whole (shared/errors.py): its values were in it, and they may
    be a password's hash, an email or a buyer's address."""
    secret, sql = "SECRET-HASH-$argon2id$v=19", "SELECT CAST(:secret AS text), 1 / :zero"
    for run in (lambda session: Statement(sql).run(session, {"secret": secret, "zero": 0}),
                lambda session: session.execute(sa.text(sql), {"secret": secret, "zero": 0})):
        with session_factory() as session, pytest.raises(sa.exc.DataError) as failed:  # division by zero
            run(session)
        assert "1 / " in str(failed.value)
        assert secret not in str(failed.value) and secret not in repr(failed.value)
