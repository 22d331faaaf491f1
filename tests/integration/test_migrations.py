"""Each service's database built from its migrations alone is the schema its models describe,
with the outbox and inbox as `shared.messaging.outbox` defines them: a model or shared table
changed without a migration fails here, not on a fresh database in production."""
from __future__ import annotations

import importlib
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from devtools.stack import SERVICES
from shared.db import drop_database
from shared.messaging.outbox import define_tables
from shared.migrate import upgrade

# What the migrations create and the models do not declare yet (real gaps, not autogenerate
# noise): indexes the queries rely on and server defaults that backfilled existing rows. The ORM
# never creates tables, so nothing breaks today; each entry goes once its model declares it, and
# the test says when one is stale, so the list only shrinks.
UNDECLARED = {
    "accounts": {
        ("index", "addresses", "addresses_account_id"),
        ("index", "login_throttle", "login_throttle_last_failure_at"),
        ("index", "refresh_tokens", "refresh_tokens_expires_at"),
        ("index", "refresh_tokens", "refresh_tokens_session_id"),
        ("index", "refresh_tokens", "refresh_tokens_used_at"),
        ("index", "sessions", "sessions_account_id"),
        ("index", "sessions", "sessions_revoked_at"),
        ("server default", "accounts", "created_at"),
        ("server default", "invites", "uses"),
        ("server default", "signing_keys", "created_at"),
    },
    "inventory": {
        ("server default", "drops", "per_buyer_limit"),
        ("server default", "drops", "restocked"),
        ("server default", "drops", "shipping_countries"),
        ("server default", "drops", "stock_shards"),
    },
    "checkout": {
        ("index", "orders", "orders_buyer_newest"),
    },
    "notifications": {
        ("index", "deliveries", "deliveries_pending_since"),
        ("index", "deliveries", "deliveries_status"),
        ("index", "deliveries", "deliveries_to_address"),
        ("server default", "deliveries", "attempts"),
        ("server default", "deliveries", "dead_letters"),
        ("server default", "deliveries", "retries"),
        ("server default", "deliveries", "updated_at"),
    },
}


def expected_schema(service: str) -> sa.MetaData:
    """The service's models and the shared outbox and inbox, in one metadata."""
    metadata = sa.MetaData()
    models = importlib.import_module(f"services.{service}.models")
    for table in models.Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    define_tables(metadata)
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


def undeclared(difference: tuple) -> tuple | None:
    """The UNDECLARED key of something only the database has, else None."""
    kind = difference[0]
    if kind == "remove_index":
        return "index", difference[1].table.name, difference[1].name
    if kind == "modify_default" and difference[6] is None:
        return "server default", difference[2], difference[3]
    return None


@pytest.fixture
def migrated_database(infra, request):
    """(service, URL) of a scratch database that the service's migrations brought to head, as
    `shared.migrate` does in production; dropped afterwards."""
    service = request.param
    url = f"{infra.postgres_url.rstrip('/')}/fgtest_migrations_{uuid.uuid4().hex[:8]}_{service}"
    try:
        upgrade(service, url, create_database=True)
        yield service, url
    finally:
        drop_database(url)


@pytest.mark.parametrize("migrated_database", SERVICES, indirect=True)
def test_migrations_build_what_the_models_describe(migrated_database):
    service, url = migrated_database
    differences = schema_differences(url, expected_schema(service))

    unexplained = [difference for difference in differences if undeclared(difference) not in UNDECLARED[service]]
    assert unexplained == [], f"{service}: the migrations and the models disagree"
    stale = UNDECLARED[service] - {undeclared(difference) for difference in differences}
    assert not stale, f"{service}: the models declare these now; take them out of UNDECLARED"
