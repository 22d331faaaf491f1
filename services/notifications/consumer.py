"""Notifications' consumer: `python -m services.notifications.consumer`.

The shared runner handles each message on a worker thread (heartbeats keep flowing while SMTP is
slow), acks after the commit and routes failures to the retry tiers or the dead-letter queue.
This module adds what email needs on top: a failure is written to the delivery log with the
outcome the runner will give it (from the runner's `current_attempt`), and an event that cannot
be mailed is parked after a few attempts instead of waiting out days of SMTP retries.
"""
from __future__ import annotations

import logging
from typing import Callable

from shared import db, logs
from shared.messaging.consumer import ConsumerRunner, PermanentFailure, current_attempt
from shared.messaging.envelope import Envelope
from services.notifications import config, handlers
from services.notifications.mailer import Mailer, SmtpMailers
from services.notifications.models import DEAD
from services.notifications.repository import UnitOfWork

log = logging.getLogger("floodgate.notifications")


class ParkedEvent(PermanentFailure):
    """An event the delivery log decided to park before the runner's last attempt."""


def mailing_handler(settings: config.Settings, mailer: Mailer, uow_factory: Callable[[], object]):
    """The runner's handler for every event notifications mails."""

    def handle(envelope: Envelope, uow) -> None:
        attempt = current_attempt.get()
        try:
            handlers.send_notification(envelope, uow, mailer)
        except Exception as error:
            # This attempt's own writes (the delivery row it expected to send) hold the row the
            # failure is logged in, from another transaction: give them up first.
            uow.rollback()
            outcome = handlers.failure_outcome(error, attempt, settings)
            try:
                handlers.record_failure(envelope, error, outcome, uow_factory())
            except Exception:  # the log is for admins; the broker still holds the event
                log.warning("could not record the failed attempt", exc_info=True, extra={"message_id": envelope.id})
            if outcome == DEAD and not isinstance(error, PermanentFailure):
                raise ParkedEvent(str(error)) from error
            raise

    return handle


def main() -> None:
    settings = config.load()
    logs.configure(f"{settings.service_name}-consumer", settings.log_level)
    # a connection per handler thread, and one more each for logging a failed attempt
    session_factory = db.make_session_factory(db.engine_for(settings, pool_size=settings.consumer_threads))

    def uow_factory() -> UnitOfWork:
        return UnitOfWork(session_factory, settings.service_name)

    mailer = SmtpMailers(settings)
    handle = mailing_handler(settings, mailer, uow_factory)
    runner = ConsumerRunner(settings, {event_type: handle for event_type in handlers.EVENT_HANDLERS}, uow_factory)
    runner.install_signal_handlers()
    try:
        runner.run()
    finally:
        mailer.close()


if __name__ == "__main__":
    main()
