"""Notifications' consumer: `python -m services.notifications.consumer`."""
import functools

from shared import db, logs
from shared.messaging.consumer import ConsumerRunner
from services.notifications import config, handlers
from services.notifications.mailer import SmtpMailer
from services.notifications.repository import UnitOfWork


def main() -> None:
    settings = config.load()
    logs.configure(f"{settings.service_name}-consumer", settings.log_level)
    session_factory = db.make_session_factory(db.make_engine(settings.database_url, pool_size=1))
    mailer = SmtpMailer.from_settings(settings)
    event_handlers = {
        event_type: functools.partial(handler, mailer=mailer) for event_type, handler in handlers.EVENT_HANDLERS.items()
    }
    runner = ConsumerRunner(settings, event_handlers, lambda: UnitOfWork(session_factory, settings.service_name))
    runner.install_signal_handlers()
    try:
        runner.run()
    finally:
        mailer.close()


if __name__ == "__main__":
    main()
