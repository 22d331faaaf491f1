"""The inventory API's app factory: gunicorn serves `services.inventory.app:create_app()`."""
from __future__ import annotations

from flask import Flask

from services.inventory import api, config
from services.inventory.bootstrap import bootstrap
from shared import web


def create_app(settings: config.Settings | None = None) -> Flask:
    return web.create_app(bootstrap("api", settings), [api.bp], title="Floodgate inventory")
