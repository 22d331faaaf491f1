"""Alembic, per service: `python -m shared.migrate <service> [--create-database]`.

Each service keeps its migrations in `services/<service>/migrations/`; their `env.py` calls
`run_migrations()` below, so the wiring is written once.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config

from shared import db
from shared.config import Settings

SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"


def alembic_config(service: str, database_url: str) -> Config:
    """Alembic's configuration for `service`'s migrations on `database_url`."""
    config = Config()
    config.set_main_option("script_location", str(SERVICES_DIR / service / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(service: str, database_url: str, create_database: bool = False) -> None:
    """Bring `service`'s database to the newest revision."""
    if create_database:
        db.create_database_if_missing(database_url)
    command.upgrade(alembic_config(service, database_url), "head")


def run_migrations() -> None:
    """Body of every service's `migrations/env.py` (online mode only)."""
    from alembic import context
    import sqlalchemy as sa

    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


def main() -> None:
    """Command line: migrate one service's database."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("service")
    parser.add_argument("--create-database", action="store_true", help="create the database first (development)")
    args = parser.parse_args()
    settings = Settings.from_env(service_name=args.service)
    upgrade(args.service, settings.database_url, args.create_database)


if __name__ == "__main__":
    main()
