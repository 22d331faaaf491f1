"""`python -m services.inventory.consumer`: turns order events into sales and released stock."""
from __future__ import annotations

from services.inventory import config, handlers
from shared import db, logs
from shared.messaging.consumer import ConsumerRunner


def main() -> None:
    settings = config.load()
    logs.configure(settings.service_name, settings.log_level)
    session_factory = db.make_session_factory(db.engine_for(settings, pool_size=2))
    runner = ConsumerRunner(settings, handlers.EVENT_HANDLERS, lambda: db.UnitOfWork(session_factory, "inventory"))
    runner.install_signal_handlers()
    runner.run()


if __name__ == "__main__":
    main()
