"""The accounts app factory: gunicorn serves `services.accounts.app:create_app()`; `flask --app
services.accounts.app <command>` runs the operator commands (services/accounts/cli.py)."""
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from shared import control_room, web
from services.accounts import api, cli, config
from services.accounts.bootstrap import bootstrap


def create_app(settings: config.Settings | None = None) -> Flask:
    root = bootstrap("api", settings)
    app = web.create_app(root, [api.bp, control_room.workers_bp], title="Floodgate accounts", verifier=root.verifier)
    cli.init_app(app)
    if root.settings.trusted_proxy_hops > 0:
        # The sign-in throttle counts per client address: take it from the trusted proxies.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=root.settings.trusted_proxy_hops)
    return app
