"""The inventory API's app factory."""
from __future__ import annotations

from flask import Flask

from services.inventory import api, config
from shared import web


def create_app(settings: config.Settings | None = None) -> Flask:
    return web.create_app(settings or config.load(), [api.bp], title="Floodgate inventory")
