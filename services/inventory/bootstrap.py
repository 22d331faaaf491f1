"""Inventory's composition root: its API, consumer, relay, sweeper and tests are built from it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.inventory import config
from services.inventory.repository import InventoryUnitOfWork
from shared import service

MIGRATIONS = Path(__file__).with_name("migrations")
# An API worker's request threads each hold one connection at a time, and checkout's holds arrive
# in batches (one call in flight per checkout process), so 8 connections (16 at the ceiling) are
# plenty: a burst beyond 16 requests at once waits its turn for one (at most 5 s, then a 503).
# Not one per thread (24): an idle pool keeps its 8 open, and the integration tests' stack, two
# workers per API on one PostgreSQL of 100 connections, peaked at 94 with 12 per worker.
POOL_SIZES = {"api": 8}


@dataclass(frozen=True, kw_only=True)
class Inventory(service.Root):
    settings: config.Settings


def bootstrap(kind: str, settings: config.Settings | None = None) -> Inventory:
    """Inventory as a process of `kind` needs it (see `shared.service`)."""
    settings = settings or config.load(kind)
    database = service.database(settings, kind, InventoryUnitOfWork, POOL_SIZES)
    if kind != "consumer":
        return Inventory(**database, migrations=MIGRATIONS)
    from services.inventory.handlers import events  # only the consumer handles events

    return Inventory(**database, migrations=MIGRATIONS, event_handlers=events.EVENT_HANDLERS)
