"""Accounts' composition root: its API, relay, jobs, operator commands and tests are built from it.

Only the API (and the operator commands, which run in it) signs and verifies tokens, so only a
root of kind "api" reads the key-encryption keys: the relay and the purge job are given neither
them nor anything they protect, and do not even load the code (it is imported below, not at
the top).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from services.accounts import config
from services.accounts.repository import AccountsUnitOfWork
from shared import service

if TYPE_CHECKING:
    from services.accounts.key_encryption import KeyEncryptionKeys
    from services.accounts.passwords import Passwords
    from services.accounts.throttle import RegistrationThrottle, SignInThrottle
    from services.accounts.tokens import TokenIssuer
    from shared.auth import TokenVerifier

MIGRATIONS = Path(__file__).with_name("migrations")
POOL_SIZES: dict = {}  # the defaults of shared/service.py


@dataclass(frozen=True, kw_only=True)
class Accounts(service.Root):
    settings: config.Settings
    # None outside the API (see the module's docstring)
    passwords: Passwords | None = None
    issuer: TokenIssuer | None = None
    key_encryption: KeyEncryptionKeys | None = None
    throttle: SignInThrottle | None = None
    registration_throttle: RegistrationThrottle | None = None
    verifier: TokenVerifier | None = None

    @property
    def refresh_ttl(self) -> timedelta:
        return timedelta(seconds=self.settings.refresh_token_ttl_seconds)

    @property
    def refresh_reuse_grace(self) -> timedelta:
        return timedelta(seconds=self.settings.refresh_token_reuse_grace_seconds)


def bootstrap(kind: str, settings: config.Settings | None = None) -> Accounts:
    """Accounts as a process of `kind` needs it (see `shared.service`).

    `KeyEncryptionMisconfigured` (the API does not start) when the KEK settings cannot be used."""
    settings = settings or config.load(kind)
    database = service.database(settings, kind, AccountsUnitOfWork, POOL_SIZES)
    if kind != "api":
        return Accounts(**database, migrations=MIGRATIONS)
    from services.accounts import key_encryption, tokens
    from services.accounts.passwords import Passwords
    from services.accounts.throttle import RegistrationThrottle, SignInThrottle
    from shared import auth

    keks = key_encryption.configured(settings.signing_key_encryption_keys, settings.deployment_environment)
    unit_of_work = database["unit_of_work"]

    def own_key_set(_url: str) -> dict:
        # Accounts verifies its own tokens from its own table, never by calling itself over
        # HTTP; a read is cheap, so a key minted by a rotation moments ago is picked up within a
        # second.
        with unit_of_work() as uow:
            return tokens.key_set(uow.signing_keys.active())

    # its own tokens, verified from its own table: fetched again every JWKS_MAX_AGE_SECONDS as
    # every verifier does, so a key retired by rotate-keys stops verifying here too
    own_keys = auth.KeySet(settings.jwks_url, min_refresh_seconds=1.0, fetch=own_key_set,
                           max_age_seconds=settings.jwks_max_age_seconds)
    auth.keep_fresh_in_worker(own_keys)
    return Accounts(
        **database,
        migrations=MIGRATIONS,
        passwords=Passwords(
            concurrency=settings.password_hashing_concurrency, wait_seconds=settings.password_hashing_wait_seconds
        ),
        issuer=tokens.TokenIssuer(settings.jwt_issuer, settings.jwt_audience, settings.access_token_ttl_seconds, keks,
                                  timedelta(seconds=settings.signing_key_publish_seconds)),
        key_encryption=keks,
        throttle=SignInThrottle.from_settings(settings),
        registration_throttle=RegistrationThrottle.from_settings(settings),
        verifier=auth.TokenVerifier(own_keys, settings.jwt_issuer, settings.jwt_audience),
    )
