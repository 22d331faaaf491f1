"""The sweeper gives the units of holds whose time ran out back to their drops."""
import threading
from types import SimpleNamespace
from datetime import timedelta

import sqlalchemy as sa

from services.inventory.handlers import expiry
from services.inventory.handlers.expiry import release_expired_holds, sweep_until_stopped
from services.inventory.models import HELD, RELEASED, SOLD
from tests.unit.inventory.fakes import DROP, NOW, inventory, reservation


def test_expired_holds_are_released_oldest_first_after_the_grace_period_and_announced():
    oldest = reservation(HELD, quantity=2, expires_at=NOW - timedelta(minutes=5))
    older = reservation(HELD, buyer_id="ben", expires_at=NOW - timedelta(minutes=1))
    within_grace = reservation(HELD, buyer_id="chloe", expires_at=NOW - timedelta(seconds=10))
    paid = reservation(SOLD, buyer_id="dan", expires_at=NOW - timedelta(minutes=9))
    uow = inventory(oldest, older, within_grace, paid, available=0)

    with uow:
        assert release_expired_holds(uow, batch_size=1, grace_seconds=30) == 1
        assert release_expired_holds(uow, batch_size=1, grace_seconds=30) == 1
        assert release_expired_holds(uow, batch_size=1, grace_seconds=30) == 0
        uow.commit()

    assert [r.status for r in (oldest, older, within_grace, paid)] == [RELEASED, RELEASED, HELD, SOLD]
    assert uow.reservations.expired_per_drop == {DROP: 2}  # the drop's expiries, for /metrics
    assert uow.stock.available[DROP] == 3
    assert (uow.stock.taken[(DROP, "ana")], uow.stock.taken[(DROP, "ben")]) == (0, 0)
    assert uow.published == [
        ("reservation.expired", {"order_id": str(oldest.order_id), "drop_id": str(DROP), "quantity": 2}),
        ("reservation.expired", {"order_id": str(older.order_id), "drop_id": str(DROP), "quantity": 1}),
    ]


def test_the_sweeper_s_heartbeat_says_it_works_only_after_a_sweep_that_did(monkeypatch):
    """A sweep failing at every turn (the schema drifted, a bug) left expired holds' units off
    sale, the drop looking sold out, while the heartbeat the alerts read said all was well."""
    stop = threading.Event()
    turns = []

    class Broken:
        def __enter__(self):
            raise sa.exc.ProgrammingError("SELECT ...", {}, Exception("column reservations.x does not exist"))

        def __exit__(self, *exc):
            return False

    def after(kind):
        def noted():
            turns.append(kind)
            if len(turns) == 3:
                stop.set()
        return noted

    heartbeats = SimpleNamespace(worked=after("worked"), failed=after("failed"))  # as shared.heartbeat.Turns
    sweep_until_stopped(stop, Broken, batch_size=10, interval_seconds=0, turns=heartbeats)
    assert turns == ["failed"] * 3

    turns.clear()
    stop.clear()
    monkeypatch.setattr(expiry, "announce_drops", lambda uow: 0)  # its SQL has the integration tests
    sweep_until_stopped(stop, lambda: inventory(), batch_size=10, interval_seconds=0, turns=heartbeats)
    assert turns == ["worked"] * 3
