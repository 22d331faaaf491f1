"""Checkout's composition root: its API, consumer, relay and tests are built from it. A test
passes its own `inventory` or `provider`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.checkout import config, handlers
from services.checkout.inventory_client import CircuitBreaker, InventoryClient
from services.checkout.payments import HttpPaymentProvider, PaymentProvider
from services.checkout.repository import CheckoutUnitOfWork
from shared import service

MIGRATIONS = Path(__file__).with_name("migrations")
# An API worker runs 8 request threads; most of an order's time is spent outside the database
# (the inventory call), so 10 connections (20 at the ceiling) keep every thread supplied.
POOL_SIZES = {"api": 10}


@dataclass(frozen=True, kw_only=True)
class Checkout(service.Root):
    settings: config.Settings
    inventory: InventoryClient
    provider: PaymentProvider


def bootstrap(kind: str, settings: config.Settings | None = None, inventory: InventoryClient | None = None,
              provider: PaymentProvider | None = None) -> Checkout:
    """Checkout as a process of `kind` needs it (see `shared.service`)."""
    settings = settings or config.load()
    inventory = inventory or InventoryClient(
        settings.inventory_url,
        settings.service_key,
        settings.inventory_timeout_seconds,
        CircuitBreaker(settings.inventory_breaker_threshold, settings.inventory_breaker_cooldown_seconds),
    )
    provider = provider or HttpPaymentProvider(settings.payment_provider_url, settings.payment_webhook_secret)
    return Checkout(
        **service.database(settings, kind, unit_of_work_class=CheckoutUnitOfWork, pool_sizes=POOL_SIZES),
        migrations=MIGRATIONS,
        event_handlers=handlers.event_handlers(provider, settings),
        inventory=inventory,
        provider=provider,
    )
