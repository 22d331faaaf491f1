"""Accounts' settings: the only place it reads the environment."""
from dataclasses import dataclass

from shared.config import Settings as CommonSettings


@dataclass(frozen=True)
class Settings(CommonSettings):
    access_token_ttl_seconds: int = 3600
    # Each argon2id hash holds 19 MiB and a core for ~tens of ms; more concurrent hashes per
    # process than cores only adds memory, so a login storm queues here instead.
    password_hashing_concurrency: int = 2
    password_hashing_wait_seconds: float = 5.0


def load() -> Settings:
    return Settings.from_env(service_name="accounts")
