"""`python -m services.inventory.sweeper`: gives the stock of unpaid, expired holds back to their drops."""
from __future__ import annotations

import logging
import signal
import threading

from services.inventory import config, handlers
from shared import db, logs
from shared.config import lower_priority
from shared.heartbeat import Heartbeat

log = logging.getLogger("floodgate.inventory.sweeper")


def main() -> None:
    settings = config.load()
    logs.configure(settings.service_name, settings.log_level)
    lower_priority(settings)
    session_factory = db.make_session_factory(db.engine_for(settings, pool_size=1))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("sweeping expired holds", extra={"interval_seconds": settings.sweep_interval_seconds})
    handlers.sweep_until_stopped(
        stop,
        lambda: db.UnitOfWork(session_factory, "inventory"),
        settings.sweep_batch_size,
        settings.sweep_interval_seconds,
        grace_seconds=settings.hold_release_grace_seconds,
        on_turn=Heartbeat(settings.heartbeat_file).beat,
    )
    log.info("sweeper stopped")


if __name__ == "__main__":
    main()
