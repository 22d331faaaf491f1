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
    # resellers share addresses: units of one drop per shipping address, across buyers
    per_address_limit: int = 2
    # load shedding: orders handled at once per process, and the inventory circuit breaker
    max_orders_in_flight: int = 6
    # the longest Retry-After a shed buyer is given (it follows the refused/admitted ratio)
    max_retry_after_seconds: int = 10
    inventory_breaker_threshold: int = 5
    inventory_breaker_cooldown_seconds: float = 3.0


def load() -> Settings:
    return Settings.from_env(service_name="checkout")
