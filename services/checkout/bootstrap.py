"""Checkout's composition root: its API, consumer, relay and tests are built from it. A test
passes its own `inventory` or `provider` (`create_app(settings, provider=...)` passes them on).

Each kind of process gets only what it runs: the API the inventory client and the payment
provider, the consumer the provider and the event handlers, the admitter the inventory client,
a relay or a job none of them (they are imported here, not at the top, so a relay does not load
them).
"""
from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from services.checkout import config
from services.checkout.repository import CheckoutUnitOfWork, purge_refused_keys
from shared import service

if TYPE_CHECKING:
    from services.checkout.inventory_client import InventoryClient
    from services.checkout.payments import PaymentProvider

MIGRATIONS = Path(__file__).with_name("migrations")
# An API worker runs API_THREADS (24) request threads, at most MAX_ORDERS_IN_FLIGHT (20) of them
# orders; an order takes a connection for its transaction, after its call to inventory, so 10
# connections (20 at the ceiling) cover the orders in flight. A higher MAX_ORDERS_IN_FLIGHT raises the pool with it
# (shared/service.py's `pool_size`, which PgBouncer's sizing reads too). A poll or webhook that
# comes while all 20 are in orders waits for the first to finish (tens of ms; at most 5 s, then a
# 503). One per thread (12) would leave the tests' PostgreSQL, two workers per API, too few of its
# 100 connections.
POOL_SIZES = {"api": 10}


@dataclass(frozen=True, kw_only=True)
class Checkout(service.Root):
    settings: config.Settings
    inventory: InventoryClient | None = None  # the API's and the admitter's
    provider: PaymentProvider | None = None  # the API's and the consumer's
    # The drops this API process has seen a line on: an order without a pass on one is refused
    # before its hold (`handlers.admitted_ticket`). Only grows: a line is never taken off a drop.
    drops_with_lines: set[uuid.UUID] = field(default_factory=set)

    def close(self) -> None:
        for client in (self.inventory, self.provider):
            close_client = getattr(client, "close", None)
            if close_client is not None:
                close_client()
        super().close()


def bootstrap(kind: str, settings: config.Settings | None = None, inventory: InventoryClient | None = None,
              provider: PaymentProvider | None = None) -> Checkout:
    """Checkout as a process of `kind` needs it (see `shared.service`)."""
    settings = settings or config.load(kind)
    database = service.database(settings, kind, CheckoutUnitOfWork, POOL_SIZES)
    if kind not in ("api", "consumer", "admitter"):
        return Checkout(**database, migrations=MIGRATIONS)
    if kind in ("api", "admitter"):
        from services.checkout.inventory_client import CircuitBreaker, InventoryClient

        inventory = inventory or InventoryClient(
            settings.inventory_url,
            settings.service_key,
            settings.inventory_timeout_seconds,
            CircuitBreaker(settings.inventory_breaker_threshold, settings.inventory_breaker_cooldown_seconds),
            hold_batch_size=settings.inventory_hold_batch_size if kind == "api" else 1,
            hold_calls=settings.inventory_hold_calls,
        )
    if kind == "admitter":
        return Checkout(**database, migrations=MIGRATIONS, inventory=inventory)
    from services.checkout import handlers
    from services.checkout.payments import HttpPaymentProvider

    provider = provider or HttpPaymentProvider(settings.payment_provider_url, settings.payment_webhook_secret)
    if kind == "consumer":
        return Checkout(**database, migrations=MIGRATIONS, provider=provider,
                        event_handlers=handlers.event_handlers(provider, settings),
                        purges={"refused idempotency keys": functools.partial(
                            purge_refused_keys, database["unit_of_work"], settings.refused_key_retention_seconds)})
    return Checkout(**database, migrations=MIGRATIONS, inventory=inventory, provider=provider)
