"""Notifications' settings: the only place it reads the environment."""
from dataclasses import dataclass

from shared.config import Settings as CommonSettings


@dataclass(frozen=True)
class Settings(CommonSettings):
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_timeout_seconds: float = 10.0
    smtp_starttls: bool = False
    smtp_username: str = ""
    # empty in development; production reads it from a Secret
    smtp_password: str = ""
    mail_from: str = "Floodgate <orders@floodgate.test>"


def load() -> Settings:
    return Settings.from_env(service_name="notifications")
