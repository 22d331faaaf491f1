"""The notifications API's app factory: gunicorn serves `services.notifications.app:create_app()`."""
from flask import Flask

from shared import control_room, web
from services.notifications import config
from services.notifications.api import bp
from services.notifications.bootstrap import bootstrap


def create_app(settings: config.Settings | None = None) -> Flask:
    root = bootstrap("api", settings)
    return web.create_app(root, [bp, control_room.workers_bp, control_room.admin_actions_bp],
                          title="Floodgate notifications", collectors=[root.email_metrics()])
