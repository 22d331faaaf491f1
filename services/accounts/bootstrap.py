"""Wires what the handlers depend on from the settings, once per process."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, current_app

from services.accounts import key_encryption
from services.accounts.config import Settings
from services.accounts.key_encryption import KeyEncryptionKeys
from services.accounts.passwords import Passwords
from services.accounts.throttle import BackoffPolicy, SignInThrottle
from services.accounts.tokens import TokenIssuer


@dataclass(frozen=True)
class Dependencies:
    passwords: Passwords
    issuer: TokenIssuer
    key_encryption: KeyEncryptionKeys
    throttle: SignInThrottle
    refresh_ttl: timedelta
    max_addresses: int


def init_app(app: Flask, settings: Settings) -> None:
    """`KeyEncryptionMisconfigured` (the process does not start) when the KEK settings cannot be used."""
    keks = key_encryption.configured(settings.signing_key_encryption_keys, settings.deployment_environment)
    window = timedelta(seconds=settings.login_failure_window_seconds)
    base = timedelta(seconds=settings.login_backoff_base_seconds)
    app.extensions["floodgate.accounts"] = Dependencies(
        passwords=Passwords(
            concurrency=settings.password_hashing_concurrency, wait_seconds=settings.password_hashing_wait_seconds
        ),
        issuer=TokenIssuer(settings.jwt_issuer, settings.jwt_audience, settings.access_token_ttl_seconds, keks),
        key_encryption=keks,
        throttle=SignInThrottle(
            per_account=BackoffPolicy(
                settings.login_account_free_failures, base, timedelta(seconds=settings.login_account_backoff_max_seconds), window
            ),
            per_client=BackoffPolicy(
                settings.login_client_free_failures, base, timedelta(seconds=settings.login_client_backoff_max_seconds), window
            ),
        ),
        refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_seconds),
        max_addresses=settings.max_addresses_per_account,
    )


def dependencies() -> Dependencies:
    return current_app.extensions["floodgate.accounts"]
