"""Inventory's composition root: its API, consumer, relay, sweeper and tests are built from it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.inventory import config
from services.inventory.repository import InventoryUnitOfWork
from shared import service
from shared.config import API_THREADS

MIGRATIONS = Path(__file__).with_name("migrations")
# An API worker's request threads each hold one connection at a time: the pool's ceiling (twice
# its size) is one per thread.
POOL_SIZES = {"api": API_THREADS // 2}


@dataclass(frozen=True, kw_only=True)
class Inventory(service.Root):
    settings: config.Settings


def bootstrap(kind: str, settings: config.Settings | None = None) -> Inventory:
    """Inventory as a process of `kind` needs it (see `shared.service`)."""
    settings = settings or config.load()
    database = service.database(settings, kind, InventoryUnitOfWork, POOL_SIZES)
    if kind != "consumer":
        return Inventory(**database, migrations=MIGRATIONS)
    from services.inventory.handlers import events  # only the consumer handles events

    return Inventory(**database, migrations=MIGRATIONS, event_handlers=events.EVENT_HANDLERS)
