"""Every service's outbox relay in one process, for the local stack (saves ~180 MiB):
`python -m devtools.relays accounts=<database url> inventory=<database url> ...`.

Each relay is built from its service's own composition root, so it sees that service's settings;
Kubernetes runs one relay per service instead (`python -m services.<service> relay`).
"""
from __future__ import annotations

import dataclasses
import importlib
import sys

from shared import logs, tracing
from shared.messaging import relay


def root(service: str, database_url: str):
    """`service`'s relay root, on `database_url`."""
    config = importlib.import_module(f"services.{service}.config")
    bootstrap = importlib.import_module(f"services.{service}.bootstrap").bootstrap
    return bootstrap("relay", dataclasses.replace(config.load("relay"), database_url=database_url))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or not all("=" in arg for arg in argv):
        sys.exit("usage: python -m devtools.relays <service>=<database url> ...")
    roots = [root(*arg.split("=", 1)) for arg in argv]
    logs.configure("relays", roots[0].settings.log_level)
    tracing.configure("relays", roots[0].settings, engines=[each.engine for each in roots])
    relay.run(roots)


if __name__ == "__main__":
    main()
