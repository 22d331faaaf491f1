"""The inventory service's settings; the only place that reads the environment."""
from __future__ import annotations

from dataclasses import dataclass

from shared import config


@dataclass(frozen=True)
class Settings(config.Settings):
    service_name: str = "inventory"
    # How long a reservation holds its stock while the buyer pays.
    hold_ttl_seconds: int = 600
    sweep_interval_seconds: float = 5.0
    sweep_batch_size: int = 500


def load() -> Settings:
    return Settings.from_env(service_name="inventory")
