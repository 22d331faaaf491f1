"""Each service's database built from its migrations alone is the schema its models describe,
with the outbox and inbox as `shared.messaging.outbox` defines them and the workers' heartbeats as
`shared.last_seen` does: a model or shared table changed without a migration fails here, not on a
fresh database in production."""
from __future__ import annotations

import importlib
import threading
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from devtools.client import poll
from devtools.stack import SERVICES
from shared.db import drop_database
from shared.last_seen import WORKER_HEARTBEATS
from shared.messaging.outbox import define_tables
from shared.migrate import LockNotAvailable, upgrade

def expected_schema(service: str) -> sa.MetaData:
    """The service's models and the shared outbox, inbox and heartbeats, in one metadata."""
    metadata = sa.MetaData()
    models = importlib.import_module(f"services.{service}.models")
    for table in models.Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    define_tables(metadata)
    WORKER_HEARTBEATS.to_metadata(metadata)
    return metadata


def schema_differences(url: str, metadata: sa.MetaData) -> list[tuple]:
    """Alembic autogenerate's operations that would turn the database into `metadata`, flat."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            differences = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    # Column changes come grouped in a list per column.
    return [op for difference in differences for op in (difference if isinstance(difference, list) else [difference])]


@pytest.fixture
def migrated_database(infra, request):
    """(service, URL) of a scratch database that the service's migrations brought to head, as
    `python -m services.<service> migrate` does in production; dropped afterwards."""
    service = request.param
    url = f"{infra.postgres_url.rstrip('/')}/fgtest_migrations_{uuid.uuid4().hex[:8]}_{service}"
    try:
        upgrade(importlib.import_module(f"services.{service}.bootstrap").MIGRATIONS, url, create_database=True)
        yield service, url
    finally:
        drop_database(url)


@pytest.mark.parametrize("migrated_database", SERVICES, indirect=True)
def test_migrations_build_what_the_models_describe(migrated_database):
    service, url = migrated_database
    differences = schema_differences(url, expected_schema(service))

    assert differences == [], f"{service}: the migrations and the models disagree"


# Three revisions of a table the drop reads: the second commits on the way (as CREATE INDEX
# CONCURRENTLY must), the third alters the table, so it needs the table's lock.
MIGRATIONS = {
    "env.py": "from shared.migrate import run_migrations\n\nrun_migrations()\n",
    "versions/0001_stock.py": (
        "from alembic import op\nimport sqlalchemy as sa\n\nrevision = '0001'\ndown_revision = None\n\n"
        "def upgrade():\n    op.create_table('stock', sa.Column('id', sa.Integer, primary_key=True))\n"
        "    op.execute('INSERT INTO stock VALUES (1), (2)')\n"),
    "versions/0002_autocommit.py": (
        "from alembic import op\n\nrevision = '0002'\ndown_revision = '0001'\n\n"
        "def upgrade():\n    with op.get_context().autocommit_block():\n"
        "        op.execute(\"CREATE TABLE waits AS SELECT 'outside' AS run, current_setting('lock_timeout') AS lock_timeout\")\n"),
    "versions/0003_note.py": (
        "from alembic import op\nimport sqlalchemy as sa\n\nrevision = '0003'\ndown_revision = '0002'\n\n"
        "def upgrade():\n    op.add_column('stock', sa.Column('note', sa.Text))\n"
        "    op.execute(\"INSERT INTO waits SELECT 'in', current_setting('lock_timeout')\")\n"),
}


@pytest.fixture
def altering_migration(infra, tmp_path):
    """(migrations, URL): a scratch database at revision 0001, whose next migrations commit on
    the way, then alter the table 0001 made; dropped afterwards."""
    for name, text in MIGRATIONS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    url = f"{infra.postgres_url.rstrip('/')}/fgtest_migration_locks_{uuid.uuid4().hex[:8]}"
    try:
        upgrade(tmp_path, url, create_database=True, target="0001")
        yield tmp_path, url
    finally:
        drop_database(url)


def _columns_and_revision(engine) -> tuple[list[str], str]:
    with engine.connect() as conn:
        return ([row[0] for row in conn.execute(sa.text(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'stock' ORDER BY 1"))],
                conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one())


def _lock_wanted(engine, table: str) -> bool:
    """Whether some transaction waits for a lock on `table`."""
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT EXISTS (SELECT FROM pg_locks WHERE relation = CAST(:t AS regclass) "
                                    "AND NOT granted)"), {"t": table}).scalar_one()


def test_a_migration_behind_a_long_transaction_never_stalls_the_drops_queries(altering_migration, caplog):
    """A migration that must wait for a table another transaction reads gives up after its lock
    timeout, lets the queries queued behind it through, and is done once that transaction ends."""
    migrations, url = altering_migration
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    seen: dict[str, object] = {}
    long_transaction = engine.connect()
    long_transaction.execute(sa.text("SELECT count(*) FROM stock"))  # an admin's open psql, say

    def the_drop_reads_then_the_transaction_ends():
        try:
            # a deadline passed raises here: `seen` then lacks its entry, and the test fails below
            seen["migration waited"] = poll(lambda: _lock_wanted(engine, "stock"), timeout=15, interval=0.02,
                                            what="the migration waiting for the lock")
            with engine.connect() as buyer:  # queued behind the waiting migration, if it still waits
                buyer.execute(sa.text("SET statement_timeout = '10s'"))
                seen["read"] = buyer.execute(sa.text("SELECT count(*) FROM stock")).scalar_one()
            seen["migration gave up"] = poll(lambda: not _lock_wanted(engine, "stock"), timeout=15, interval=0.02,
                                             what="the migration giving up its wait")
        except sa.exc.OperationalError as error:
            seen["read"] = repr(error)
        finally:
            long_transaction.close()

    other = threading.Thread(target=the_drop_reads_then_the_transaction_ends)
    other.start()
    try:
        with caplog.at_level("WARNING", logger="floodgate.migrate"):
            upgrade(migrations, url, lock_timeout=0.3, attempts=20)
    finally:
        other.join(60)
        engine.dispose()
    assert seen == {"migration waited": True, "read": 2, "migration gave up": True}
    assert _columns_and_revision(sa.create_engine(url, poolclass=sa.pool.NullPool)) == (["id", "note"], "0003")
    assert any("trying again" in record.getMessage() for record in caplog.records)
    # a migration's transaction waits 0.3 s at most; a statement outside one (CREATE INDEX
    # CONCURRENTLY blocks no query while it waits for older transactions) as long as it takes
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
        waits = dict(conn.execute(sa.text("SELECT run, lock_timeout FROM waits")).all())
    assert waits == {"outside": "0", "in": "300ms"}


def test_a_migration_that_never_gets_its_lock_fails_clearly_and_leaves_what_it_committed(altering_migration):
    migrations, url = altering_migration
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as long_transaction:
            long_transaction.execute(sa.text("SELECT count(*) FROM stock"))
            with pytest.raises(LockNotAvailable, match="in each of 2 attempts"):
                upgrade(migrations, url, lock_timeout=0.2, attempts=2)
        # 0002 committed on the way; 0003's change rolled back, to be made by the next run
        assert _columns_and_revision(engine) == (["id"], "0002")
    finally:
        engine.dispose()
