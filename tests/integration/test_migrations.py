"""Each service's database built from its migrations alone is the schema its models describe,
with the outbox and inbox as `shared.messaging.outbox` defines them and the workers' heartbeats as
`shared.last_seen` does: a model or shared table changed without a migration fails here, not on a
fresh database in production."""
from __future__ import annotations

import importlib
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from devtools.stack import SERVICES
from shared.db import drop_database
from shared.last_seen import WORKER_HEARTBEATS
from shared.messaging.outbox import define_tables
from shared.migrate import upgrade

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
