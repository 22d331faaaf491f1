"""Reading a service's database from a test, to assert what no endpoint shows (and cleaning up
after a test whose traces would change the next ones)."""
import sqlalchemy as sa


def scalar(stack, service: str, sql: str, **params):
    engine = sa.create_engine(stack.infra.database_url(service), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()
    finally:
        engine.dispose()


def execute(stack, service: str, sql: str, **params) -> None:
    engine = sa.create_engine(stack.infra.database_url(service), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    finally:
        engine.dispose()
