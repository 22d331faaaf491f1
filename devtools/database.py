"""PostgreSQL going away under the stack, as failure tests and rehearsals inflict it: the local
cluster restarted with Debian's `pg_ctlcluster`, or every client connection of a server cut
(what the services see of a restart, where the server cannot restart in place)."""
from __future__ import annotations

import os
import shutil
import subprocess

import sqlalchemy as sa
from sqlalchemy.engine import make_url

CLUSTERS = "/etc/postgresql"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", None)


def _newest_version() -> str | None:
    versions = sorted(os.listdir(CLUSTERS)) if os.path.isdir(CLUSTERS) else []
    return versions[-1] if versions else None


def restartable(url: str) -> bool:
    """True when `url` names this machine's PostgreSQL and `pg_ctlcluster` can restart it."""
    return make_url(url).host in LOCAL_HOSTS and shutil.which("pg_ctlcluster") is not None \
        and _newest_version() is not None


def restart() -> None:
    """Restart the local cluster (fast mode: every session is cut, no waiting for clients); return
    when it accepts connections again. Every database on it goes away meanwhile, everyone's."""
    version = _newest_version()
    if not shutil.which("pg_ctlcluster") or version is None:
        raise RuntimeError("restarting the database needs pg_ctlcluster (Debian's PostgreSQL)")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", "--mode", "fast", version, "main", "restart"],
                   check=True, capture_output=True, timeout=120)


def cut_client_connections(url: str) -> int:
    """Terminate every client connection of the server `url` names but this one; how many."""
    engine = sa.create_engine(make_url(url).set(database="postgres"), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return len(conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'")).all())
    finally:
        engine.dispose()


def answers(url: str, timeout: int = 1) -> bool:
    """True when a new connection to `url` is accepted and runs a query (a server starting up
    accepts the connection but refuses the query)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": timeout})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()
