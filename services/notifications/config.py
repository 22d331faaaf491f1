"""Notifications' settings: the only place it reads the environment."""
from dataclasses import dataclass

from shared.config import Settings as CommonSettings


@dataclass(frozen=True)
class Settings(CommonSettings):
    POSITIVE = CommonSettings.POSITIVE | {
        "smtp_port", "smtp_timeout_seconds", "smtp_data_reply_timeout_seconds", "delivery_log_retention_seconds"}

    # The delivery log keeps an email that went out (or was superseded) this long: the admin's
    # "who was mailed what", and what keeps a copy of its event from being mailed again. Older
    # rows are deleted by the consumer (DeliveryLog.purge_finished), their counts carried in
    # /metrics' totals; those still retrying or parked stay until they are sent.
    delivery_log_retention_seconds: float = 30 * 24 * 3600

    # Email may be late, never lost: with the retry tiers of shared/messaging/topology.py (10 s,
    # 1 min, 10 min, then every hour) an event is parked after about three days.
    max_attempts: int = 76
    # An event missing what its email needs is parked after this many attempts, whatever
    # `max_attempts` says: waiting days for a fixed consumer helps nobody; a replay does.
    incomplete_event_attempts: int = 3
    # each handler thread keeps its own SMTP connection: a message's round trips to the SMTP server
    # and the database overlap with the next one's work
    consumer_threads: int = 4
    # Email waits for the rush (shared/messaging/deferral.py): while the APIs sharing this
    # machine keep it busy, an email goes out up to this many seconds after its event, not at
    # once. A buyer has the order, its payment link and its deadline in the answer to the order;
    # the email repeats them. What it bought a drop: docs/performance.md,
    # "Email waits for the rush".
    defer_while_busy_seconds: float = 30.0
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    # connecting, and each reply but the last
    smtp_timeout_seconds: float = 10.0
    # The reply to a message (after its final "."): a server answers once it has queued it, which
    # may take a while (RFC 5321 has clients wait up to 10 minutes). Giving up earlier, on a
    # server that then queues it all the same, mails the buyer twice.
    smtp_data_reply_timeout_seconds: float = 60.0
    smtp_starttls: bool = False
    smtp_username: str = ""
    # empty in development; production reads it from a Secret
    smtp_password: str = ""
    mail_from: str = "Floodgate <orders@floodgate.test>"


def load(kind: str) -> Settings:
    """The settings a process of `kind` (shared.service.KINDS) starts with."""
    return Settings.from_env(service_name="notifications").checked_for_production(kind)
