"""Wires what the handlers depend on from the settings, once per process."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from services.accounts.config import Settings
from services.accounts.passwords import Passwords
from services.accounts.tokens import TokenIssuer


@dataclass(frozen=True)
class Dependencies:
    passwords: Passwords
    issuer: TokenIssuer


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["floodgate.accounts"] = Dependencies(
        passwords=Passwords(
            concurrency=settings.password_hashing_concurrency, wait_seconds=settings.password_hashing_wait_seconds
        ),
        issuer=TokenIssuer(settings.jwt_issuer, settings.jwt_audience, settings.access_token_ttl_seconds),
    )


def dependencies() -> Dependencies:
    return current_app.extensions["floodgate.accounts"]
