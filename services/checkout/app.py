"""Checkout's app factory."""
from services.checkout import api, config
from services.checkout.inventory_client import InventoryClient
from shared import web


def create_app(settings: config.Settings | None = None):
    settings = settings or config.load()
    app = web.create_app(settings, [api.bp], title="Floodgate checkout", pool_size=10)
    app.extensions["checkout.inventory"] = InventoryClient(
        settings.inventory_url, settings.service_key, settings.inventory_timeout_seconds
    )
    return app
