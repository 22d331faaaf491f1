"""The accounts app factory."""
from __future__ import annotations

from werkzeug.middleware.proxy_fix import ProxyFix

from shared import auth, web
from services.accounts import api, bootstrap, cli, config, tokens
from services.accounts.repository import AccountsUnitOfWork


def create_app(settings: config.Settings | None = None):
    settings = settings or config.load()
    app = web.create_app(settings, [api.bp], title="Floodgate accounts")
    bootstrap.init_app(app, settings)
    cli.init_app(app)
    if settings.trusted_proxy_hops > 0:
        # The sign-in throttle counts per client address: take it from the trusted proxies.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_hops)
    # Accounts verifies its own tokens from its own table, never by calling itself over HTTP;
    # a read is cheap, so a key minted by a rotation moments ago is picked up within a second.
    session_factory = app.extensions["floodgate"].session_factory

    def own_key_set(_url: str) -> dict:
        with AccountsUnitOfWork(session_factory, settings.service_name) as uow:
            return tokens.key_set(uow.signing_keys.active())

    keys = auth.KeySet(settings.jwks_url, min_refresh_seconds=1.0, fetch=own_key_set)
    auth.init_app(app, auth.TokenVerifier(keys, settings.jwt_issuer, settings.jwt_audience), settings.service_key)
    return app
