"""Alembic, per service: `python -m services.<service> migrate [--create-database]`.

Each service says where its migrations live (its root's `migrations`, `services/<service>/
migrations/`); their `env.py` calls `run_migrations()` below, so the wiring is written once.
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from shared import db


def alembic_config(migrations: Path, database_url: str) -> Config:
    """Alembic's configuration for the migrations in `migrations` on `database_url`."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(migrations: Path, database_url: str, create_database: bool = False) -> None:
    """Bring the database at `database_url` to the newest revision in `migrations`."""
    if create_database:
        db.create_database_if_missing(database_url)
    command.upgrade(alembic_config(migrations, database_url), "head")


def run_migrations() -> None:
    """Body of every service's `migrations/env.py` (online mode only)."""
    from alembic import context
    import sqlalchemy as sa

    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
