"""Notifications' composition root: its API, consumer, relay and tests are built from it. A test
passes its own `mailer`.

Only the consumer mails: it alone gets the mailer and the event handlers (imported here, not at
the top, so the API and a relay do not load them).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.notifications import config
from services.notifications.repository import UnitOfWork, purge_delivery_log
from shared import service

if TYPE_CHECKING:
    from services.notifications.mailer import Mailer

MIGRATIONS = Path(__file__).with_name("migrations")
# The admin API is light (the consumer keeps a connection per handler thread, CONSUMER_THREADS).
POOL_SIZES = {"api": 2}


@dataclass(frozen=True, kw_only=True)
class Notifications(service.Root):
    settings: config.Settings
    mailer: Mailer | None = None  # the consumer's

    def email_metrics(self):
        """The email figures /metrics adds: the delivery log's totals and the queues' depths."""
        from services.notifications.metrics import EmailMetrics

        return EmailMetrics(self.settings, self.session_factory)

    def close(self) -> None:
        close_mailer = getattr(self.mailer, "close", None)
        if close_mailer is not None:
            close_mailer()
        super().close()


def bootstrap(kind: str, settings: config.Settings | None = None, mailer: Mailer | None = None) -> Notifications:
    """Notifications as a process of `kind` needs it (see `shared.service`)."""
    settings = settings or config.load(kind)
    database = service.database(settings, kind, UnitOfWork, POOL_SIZES)
    if kind != "consumer":
        return Notifications(**database, migrations=MIGRATIONS)
    from services.notifications import handlers
    from services.notifications.mailer import SmtpMailers

    mailer = mailer or SmtpMailers(settings)  # connects on a handler thread's first email
    return Notifications(
        **database,
        migrations=MIGRATIONS,
        event_handlers=handlers.event_handlers(settings, mailer, database["unit_of_work"]),
        inbox=False,  # the delivery log, keyed by event id, makes every handler idempotent
        purges={"delivery log": functools.partial(purge_delivery_log, database["unit_of_work"],
                                                  settings.delivery_log_retention_seconds)},
        mailer=mailer,
    )
