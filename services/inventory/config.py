"""The inventory service's settings; the only place that reads the environment."""
from __future__ import annotations

from dataclasses import dataclass

from shared import config


@dataclass(frozen=True)
class Settings(config.Settings):
    POSITIVE = config.Settings.POSITIVE | {
        "hold_ttl_seconds", "sweep_interval_seconds", "sweep_batch_size", "default_stock_shards"}

    service_name: str = "inventory"
    # How long a reservation holds its stock while the buyer pays.
    hold_ttl_seconds: int = 600
    sweep_interval_seconds: float = 5.0
    # A hold is released this long after it expires, so a payment checkout accepted just before
    # the expiry reaches inventory (as order.confirmed) while the hold still stands.
    hold_release_grace_seconds: float = 30.0
    sweep_batch_size: int = 500
    # Rows a new drop's stock is spread over, so concurrent holds lock different rows (1-64).
    default_stock_shards: int = 16
    # How long `GET /drops/{id}` (every drop page's read) may be answered from a worker's copy, and
    # by a CDN in front (never past the drop's opening or closing); 0: every read from the database.
    drop_max_age_seconds: float = 1.0


def load(kind: str) -> Settings:
    """The settings a process of `kind` (shared.service.KINDS) starts with."""
    return Settings.from_env(service_name="inventory").checked_for_production(kind)
