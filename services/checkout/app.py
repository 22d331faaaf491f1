"""Checkout's app factory."""
from services.checkout import api, config
from services.checkout.errors import TooBusy
from services.checkout.inventory_client import CircuitBreaker, InventoryClient
from services.checkout.load_shedding import OrderAdmission, OrderGate
from services.checkout.payments import HttpPaymentProvider
from shared import web


def create_app(settings: config.Settings | None = None):
    settings = settings or config.load()
    app = web.create_app(settings, [api.bp], title="Floodgate checkout", pool_size=10)
    app.extensions["checkout"] = api.Wiring(
        inventory=InventoryClient(
            settings.inventory_url,
            settings.service_key,
            settings.inventory_timeout_seconds,
            CircuitBreaker(settings.inventory_breaker_threshold, settings.inventory_breaker_cooldown_seconds),
        ),
        provider=HttpPaymentProvider(settings.payment_provider_url, settings.payment_webhook_secret),
    )
    # Load shedding in front of Flask: see services/checkout/load_shedding.py.
    app.wsgi_app = OrderAdmission(
        app.wsgi_app,
        OrderGate(settings.max_orders_in_flight, settings.max_retry_after_seconds),
        TooBusy("Checkout is taking as many orders as it can; retry after the time given."),
        settings.service_name,
    )
    return app
