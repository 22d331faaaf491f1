"""The sweeper's work: give the stock of holds whose time ran out back to their drops, and
announce drops, until stopped."""
from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from services.inventory.handlers.drops import announce_drops
from shared.heartbeat import Turns

log = logging.getLogger("floodgate.inventory")


def release_expired_holds(uow, batch_size: int, grace_seconds: float = 0) -> int:
    """Release up to `batch_size` holds whose time ran out `grace_seconds` ago; replicas share
    the work (SKIP LOCKED)."""
    expired = uow.reservations.expired_holds(batch_size, grace_seconds)
    if not expired:
        return 0
    uow.stock.give_back(expired)
    uow.reservations.count_expired(expired)
    for reservation in expired:
        uow.publish(
            "reservation.expired",
            {"order_id": str(reservation.order_id), "drop_id": str(reservation.drop_id), "quantity": reservation.quantity},
        )
    log.info("expired holds released", extra={"count": len(expired)})
    return len(expired)


def sweep_until_stopped(
    stop: threading.Event,
    uow_factory,
    batch_size: int,
    interval_seconds: float,
    grace_seconds: float = 0,
    turns: Turns | None = None,
) -> None:
    """Release expired holds and announce drops until `stop` is set; a full batch means more
    holds are waiting, so no pause. `turns` is told of each turn, whether it did its work
    (`shared.heartbeat.Turns`)."""
    turns = turns or Turns("")
    while not stop.is_set():
        released = 0
        try:
            with uow_factory() as uow:
                released = release_expired_holds(uow, batch_size, grace_seconds)
                uow.commit()
            with uow_factory() as uow:
                announce_drops(uow)
                uow.commit()
            turns.worked()
        except sa.exc.SQLAlchemyError:
            log.warning("sweep failed, trying again later", exc_info=True)
            turns.failed()
        if released < batch_size:
            stop.wait(interval_seconds)
