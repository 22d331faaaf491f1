"""Every service's command line: `python -m services.<service> <process>`.

Each service's `__main__.py` hands its composition root (`bootstrap`) to `main` below, with the
processes only it runs (inventory's sweeper, accounts' refresh-token purge). Every service gets:

- `relay`: publishes its outbox (`shared/messaging/relay.py`);
- `consumer`: handles the events it subscribes to (`shared/messaging/consumer.py`), for a service
  with event handlers;
- `migrate [--create-database]`: its Alembic migrations to head, straight to DATABASE_URL.

The API is not here: gunicorn serves `services.<service>.app:create_app()`.
"""
from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from typing import Callable, Mapping

from shared import logs, tracing
from shared.messaging import consumer, relay, topology
from shared.service import KINDS

Bootstrap = Callable[..., object]  # bootstrap(kind, settings=None, **dependencies) -> shared.service.Root


def _relay(bootstrap: Bootstrap, args: argparse.Namespace) -> None:
    relay.run([_started(bootstrap, "relay")])


def _consumer(bootstrap: Bootstrap, args: argparse.Namespace) -> None:
    consumer.run(_started(bootstrap, "consumer"))


def _migrate(bootstrap: Bootstrap, args: argparse.Namespace) -> None:
    from shared import migrate  # Alembic: loaded by the migration Job only

    root = _started(bootstrap, "job")
    try:
        settings = root.settings
        migrate.upgrade(root.migrations, settings.database_url, create_database=args.create_database,
                        lock_timeout=settings.migration_lock_timeout_seconds, attempts=settings.migration_attempts)
    finally:
        root.close()


def _own(bootstrap: Bootstrap, kind: str, run: Callable, args: argparse.Namespace) -> None:
    root = _started(bootstrap, kind)
    try:
        run(root, args)
    finally:
        root.close()


def _started(bootstrap: Bootstrap, kind: str):
    root = bootstrap(kind)
    logs.configure(root.process, root.settings.log_level)
    tracing.configure(root.process, root.settings, engines=[root.engine])
    return root


def kind_of(process: str) -> str:
    """The kind of process (`shared.service.KINDS`) the one named on the command line runs as:
    its own kind (`relay`, `sweeper`), or a `job`'s (`migrate`, accounts' purge)."""
    return process if process in KINDS else "job"


@dataclass(frozen=True)
class Process:
    """A process only one service runs. One named for a kind (`sweeper`) gets a root of that
    kind, any other a `job`'s."""

    help: str
    run: Callable[[object, argparse.Namespace], None]  # (root, parsed arguments)
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


def main(bootstrap: Bootstrap, service: str, extra: Mapping[str, Process] | None = None,
         argv: list[str] | None = None) -> None:
    """Run the process named on the command line; `extra` names the service's own processes."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}",
                                     description=f"Run one of the {service} service's processes (its API is gunicorn's).")
    commands = parser.add_subparsers(dest="process", required=True)
    runners: dict[str, Callable[[argparse.Namespace], None]] = {}
    commands.add_parser("relay", help="publish the outbox to the broker")
    runners["relay"] = lambda args: _relay(bootstrap, args)
    if service in topology.SUBSCRIPTIONS:
        commands.add_parser("consumer", help="handle the events this service subscribes to")
        runners["consumer"] = lambda args: _consumer(bootstrap, args)
    migrating = commands.add_parser("migrate", help="bring the database to the newest migration")
    migrating.add_argument("--create-database", action="store_true", help="create the database first (development)")
    runners["migrate"] = lambda args: _migrate(bootstrap, args)
    for name, process in (extra or {}).items():
        process.arguments(commands.add_parser(name, help=process.help))
        runners[name] = functools.partial(_own, bootstrap, kind_of(name), process.run)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    runners[args.process](args)
