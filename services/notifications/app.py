"""The notifications API's app factory."""
from shared import web
from services.notifications import config
from services.notifications.api import bp


def create_app(settings: config.Settings | None = None):
    return web.create_app(settings or config.load(), [bp], title="Floodgate notifications", pool_size=2)
