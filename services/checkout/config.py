"""Checkout's settings: the only place it reads the environment."""
from dataclasses import dataclass

from shared.config import DEV_WEBHOOK_SECRET, Settings as CommonSettings


@dataclass(frozen=True)
class Settings(CommonSettings):
    inventory_url: str = "http://127.0.0.1:8002"
    inventory_timeout_seconds: float = 2.0
    payment_provider_url: str = "http://127.0.0.1:8010"
    # development default; production reads it from a Secret
    payment_webhook_secret: str = DEV_WEBHOOK_SECRET
    webhook_tolerance_seconds: int = 300
    public_url: str = "http://127.0.0.1:8003"
    idempotency_wait_seconds: float = 10.0


def load() -> Settings:
    return Settings.from_env(service_name="checkout")
