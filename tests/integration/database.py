"""Reading a service's database from a test, to assert what no endpoint shows (and cleaning up
after a test whose traces would change the next ones)."""
import contextlib
import uuid
from typing import Iterator

import sqlalchemy as sa

from shared.db import create_database_if_missing, drop_database


def rows(stack, service: str, sql: str, **params) -> list:
    engine = sa.create_engine(stack.infra.database_url(service), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def scalar(stack, service: str, sql: str, **params):
    found = rows(stack, service, sql, **params)
    return found[0][0] if found else None


def execute(stack, service: str, sql: str, **params) -> None:
    engine = sa.create_engine(stack.infra.database_url(service), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    finally:
        engine.dispose()


@contextlib.contextmanager
def scratch_database(infra, label: str) -> Iterator[str]:
    """The URL of a new, empty database on the session's PostgreSQL, dropped afterwards."""
    url = f"{infra.postgres_url.rstrip('/')}/fgtest_{label}_{uuid.uuid4().hex[:8]}"
    create_database_if_missing(url)
    try:
        yield url
    finally:
        drop_database(url)


@contextlib.contextmanager
def migrated_engine(infra, label: str, migrations, pool_size: int = 2) -> Iterator[sa.Engine]:
    """An engine on a new database holding a service's schema (`migrations`), dropped afterwards."""
    from shared.db import make_engine
    from shared.migrate import upgrade

    with scratch_database(infra, label) as url:
        upgrade(migrations, url)
        engine = make_engine(url, pool_size=pool_size)
        try:
            yield engine
        finally:
            engine.dispose()
