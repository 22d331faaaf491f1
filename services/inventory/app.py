"""The inventory API's app factory: gunicorn serves `services.inventory.app:create_app()`."""
from __future__ import annotations

from flask import Flask

from services.inventory import api, config
from services.inventory.bootstrap import bootstrap
from services.inventory.metrics import hold_expiry_figures
from shared import control_room, web
from shared.messaging.metrics import dead_letter_figures


def create_app(settings: config.Settings | None = None) -> Flask:
    root = bootstrap("api", settings)
    timeout = root.settings.metrics_query_timeout_seconds
    app = web.create_app(root, [api.bp, control_room.workers_bp, control_room.admin_actions_bp],
                         title="Floodgate inventory", figures={
        "dead_letters": dead_letter_figures(root.settings, timeout),
        "hold_expiries": hold_expiry_figures(root.engine, timeout),
    })
    api.init_app(app, root.settings)
    return app
