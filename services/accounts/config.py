"""Accounts' settings: the only place it reads the environment."""
from dataclasses import dataclass

from shared.config import Settings as CommonSettings


@dataclass(frozen=True)
class Settings(CommonSettings):
    POSITIVE = CommonSettings.POSITIVE | {
        "access_token_ttl_seconds", "refresh_token_ttl_seconds", "password_hashing_concurrency",
        "signing_key_publish_seconds"}

    # Short: a revoked session's access tokens stop working within this; clients refresh.
    access_token_ttl_seconds: int = 900
    # A rotated-in signing key signs only after it has been published this long. Keep it at
    # least twice the verifiers' JWKS_MIN_REFRESH_SECONDS (30): each verifier fetches the key
    # set at most that often, and must have had the chance to since the key appeared.
    signing_key_publish_seconds: float = 60.0
    refresh_token_ttl_seconds: int = 14 * 24 * 3600
    # Each argon2id hash holds 19 MiB and a core for ~tens of ms; more concurrent hashes per
    # process than cores only adds memory, so a login storm queues here instead. Registrations
    # take at most half of them (at least one): sign-ins always keep the rest, but for a single
    # slot, which both share (keep it at 2 or more where sign-ups may flood).
    password_hashing_concurrency: int = 2
    password_hashing_wait_seconds: float = 5.0
    # Sign-in throttling: after the free failures, each further failure doubles the wait.
    # "account" is an account tried from one client (strict: it is the guesser's own key);
    # "account all clients" is the account from anywhere, a loose brake on guessing spread over
    # many clients, whose short ceiling is all an attacker can make the owner wait.
    login_account_free_failures: int = 5
    login_account_all_clients_free_failures: int = 100
    login_client_free_failures: int = 50
    login_backoff_base_seconds: float = 1.0
    login_account_backoff_max_seconds: float = 900.0
    login_account_all_clients_backoff_max_seconds: float = 60.0
    login_client_backoff_max_seconds: float = 300.0
    login_failure_window_seconds: float = 900.0
    # Registrations from one client (every attempt, an email already taken too) within that
    # window, then a wait doubling from the base up to the ceiling: a sign-up flood before a
    # drop must not take the hashing that buyers' sign-ins need.
    registration_client_free_attempts: int = 50
    registration_client_backoff_max_seconds: float = 300.0
    max_addresses_per_account: int = 20
    # Proxies (ingress, load balancer) in front of this service whose X-Forwarded-For is trusted;
    # 0 means clients connect directly. Wrong here, every client looks like the proxy to the
    # per-client sign-in throttle.
    trusted_proxy_hops: int = 0
    # Key-encryption keys (Fernet) for the signing keys at rest, comma-separated, newest first:
    # the first encrypts, all decrypt. Empty in development means the public dev-only KEK
    # (key_encryption.DEV_KEY_ENCRYPTION_KEY); production reads it from a Secret.
    signing_key_encryption_keys: str = ""
    # A spent refresh token (expired, used or not, or of a revoked session) is purged this
    # long after: until then, presenting a used one again still revokes its session as a theft.
    spent_refresh_token_retention_seconds: int = 7 * 24 * 3600
    # A refresh token presented again this soon after its exchange, whose successor is still
    # unused, is a retry after a lost answer (a timeout, a 5xx): it gets new tokens instead of
    # ending the session as a theft.
    refresh_token_reuse_grace_seconds: float = 30.0


def load(kind: str) -> Settings:
    """The settings a process of `kind` (shared.service.KINDS) starts with."""
    return Settings.from_env(service_name="accounts").checked_for_production(kind)
