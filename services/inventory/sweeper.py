"""The sweeper (`python -m services.inventory sweeper`): gives the stock of unpaid, expired holds
back to their drops."""
from __future__ import annotations

import logging
import signal
import threading

from services.inventory.handlers import expiry
from services.inventory.bootstrap import Inventory
from shared.config import lower_priority
from shared.heartbeat import Turns
from shared.last_seen import LastSeen

log = logging.getLogger("floodgate.inventory.sweeper")


def run(root: Inventory) -> None:
    """Sweep every `sweep_interval_seconds` until SIGTERM."""
    settings = root.settings
    lower_priority(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("sweeping expired holds", extra={"interval_seconds": settings.sweep_interval_seconds})
    expiry.sweep_until_stopped(
        stop,
        root.unit_of_work,
        settings.sweep_batch_size,
        settings.sweep_interval_seconds,
        grace_seconds=settings.hold_release_grace_seconds,
        turns=Turns(settings.heartbeat_file, LastSeen(root.engine, "sweeper")),
    )
    log.info("sweeper stopped")
