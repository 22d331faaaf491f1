"""Engines through a transaction pooler prepare nothing on the server; engines straight to
PostgreSQL keep psycopg's default; a consumer's pool holds what its threads hold at once. No
database is contacted: the arguments psycopg would be called with are caught on the way."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from shared import db, service
from shared.config import Settings

URL = "postgresql+psycopg://floodgate@127.0.0.1:6432/floodgate_checkout"


class Caught(Exception):
    pass


def psycopg_arguments(engine: sa.Engine) -> dict:
    def catch(dialect, record, cargs, cparams):
        raise Caught(cparams)

    sa.event.listen(engine, "do_connect", catch)
    try:
        with pytest.raises(Caught) as caught:
            engine.connect()
        return caught.value.args[0]
    finally:
        engine.dispose()


def test_an_engine_through_a_transaction_pooler_never_prepares_statements():
    settings = Settings.from_env({"DATABASE_URL": URL, "DATABASE_PREPARED_STATEMENTS": "false"}, service_name="checkout")
    arguments = psycopg_arguments(db.engine_for(settings, pool_size=2))
    assert "prepare_threshold" in arguments and arguments["prepare_threshold"] is None


def test_an_engine_straight_to_postgresql_keeps_psycopg_preparing_repeated_statements():
    settings = Settings.from_env({"DATABASE_URL": URL}, service_name="checkout")
    assert settings.database_prepared_statements is True
    assert "prepare_threshold" not in psycopg_arguments(db.engine_for(settings, pool_size=2))


def test_every_engine_gives_up_on_a_database_host_that_went_silent():
    """A host lost without closing its connections: a statement waiting on it ends with an error
    within about half a minute (TCP keepalives, a user timeout), a connect within 5 s."""
    arguments = psycopg_arguments(db.engine_for(Settings.from_env({"DATABASE_URL": URL}, service_name="checkout")))
    assert {name: arguments[name] for name in db.CONNECTION_SETTINGS} == db.CONNECTION_SETTINGS
    idle, interval, count = (arguments[name] for name in ("keepalives_idle", "keepalives_interval", "keepalives_count"))
    assert arguments["keepalives"] == 1 and idle + interval * count <= 30 and arguments["tcp_user_timeout"] <= 30_000
    assert arguments["connect_timeout"] <= 5


@pytest.mark.parametrize("handlers", [1, 4])
def test_a_consumers_threads_each_keep_a_connection_and_can_probe_the_database_without_waiting(handlers):
    """Its handlers, returned lane, housekeeper and heartbeat each hold a connection; a handler's
    or the lane's probe after a lost connection (`db.away`, from notifications' handler still
    holding its own) takes one more. Waiting on a full pool ends as a pool timeout, read as the
    database away: a healthy database would hold messages back."""
    settings = Settings.from_env({"DATABASE_URL": URL, "CONSUMER_THREADS": str(handlers)}, service_name="checkout")
    engine = service.database(settings, "consumer")["engine"]
    try:
        holders = handlers + 3
        probes = handlers + 1
        assert engine.pool.size() == holders  # kept open, not made and closed at each use
        assert engine.pool.size() + engine.pool._max_overflow >= holders + probes
    finally:
        engine.dispose()
