"""Order events: a confirmation sells the order's units, an order that ends gives them back, an
event older than what the reservation already acted on changes nothing (docs/contracts.md,
"Order versions"), and an event that cannot name an order is parked, not retried."""
import uuid

import pytest

from services.inventory.handlers.events import EVENT_HANDLERS
from services.inventory.models import HELD, RELEASED, SOLD
from shared.messaging.consumer import PermanentFailure
from shared.messaging.envelope import Envelope
from tests.unit.inventory.fakes import DROP, FakeUnitOfWork, inventory, reservation

ENDED = ("order.cancelled", "order.expired", "order.payment_failed")
NO_VERSION = object()


def deliver(uow, event_type: str, order_id, version=NO_VERSION) -> None:
    """Handle one event as the consumer does: in a unit of work, committed when the handler returns."""
    data = {"order_id": str(order_id)}
    if version is not NO_VERSION:
        data["version"] = version
    with uow:
        EVENT_HANDLERS[event_type](Envelope(type=event_type, data=data, source="checkout"), uow)
        uow.commit()


def test_a_confirmed_order_sells_its_hold_and_records_the_version():
    hold = reservation(HELD)
    uow = inventory(hold, available=4)
    deliver(uow, "order.confirmed", hold.order_id, version=2)
    assert (hold.status, hold.order_version) == (SOLD, 2)
    assert uow.stock.available[DROP] == 4 and uow.stock.taken[(DROP, "ana")] == 1
    assert uow.published == [] and uow.committed


def test_a_confirmation_delivered_again_changes_nothing_more():
    hold = reservation(HELD)
    uow = inventory(hold, available=4)
    deliver(uow, "order.confirmed", hold.order_id, version=2)
    deliver(uow, "order.confirmed", hold.order_id, version=2)
    assert (hold.status, hold.order_version) == (SOLD, 2)
    assert uow.stock.available[DROP] == 4 and uow.published == []


@pytest.mark.parametrize("version", [2, 1])
def test_a_confirmation_of_a_unit_checkout_already_sold_reads_it_and_locks_nothing(version):
    sold = reservation(SOLD, order_version=2)  # sold by checkout's call as it confirmed the payment
    uow = inventory(sold, available=4)
    locked = []
    uow.reservations.for_update = lambda order_id: locked.append(order_id)
    deliver(uow, "order.confirmed", sold.order_id, version=version)
    assert locked == [] and (sold.status, sold.order_version) == (SOLD, 2)
    assert uow.stock.available[DROP] == 4 and uow.published == [] and uow.committed


@pytest.mark.parametrize("status, order_version, event_type, version", [
    # a late payment held the unit again (3), and sold it, after order.expired (2) was sent
    (HELD, 3, "order.expired", 2),
    (SOLD, 3, "order.expired", 2),
    (SOLD, 3, "order.payment_failed", 2),
    # a retried order.confirmed (2) after order.cancelled (3) gave the unit back
    (RELEASED, 3, "order.confirmed", 2),
])
def test_an_event_older_than_the_reservation_changes_nothing(status, order_version, event_type, version):
    existing = reservation(status, order_version=order_version)
    uow = inventory(existing, available=1)
    deliver(uow, event_type, existing.order_id, version=version)
    assert (existing.status, existing.order_version) == (status, order_version)
    assert uow.stock.available[DROP] == 1
    assert uow.stock.taken[(DROP, "ana")] == (0 if status == RELEASED else 1)
    assert uow.published == []


def test_a_confirmation_after_the_hold_was_released_sells_the_units_again_while_the_drop_has_them():
    expired = reservation(RELEASED, quantity=2, order_version=2)
    uow = inventory(expired, available=3)
    deliver(uow, "order.confirmed", expired.order_id, version=3)
    assert (expired.status, expired.order_version) == (SOLD, 3)
    assert uow.stock.available[DROP] == 1 and uow.stock.taken[(DROP, "ana")] == 2
    assert uow.published == []


@pytest.mark.parametrize("reason, available, stock", [
    ("sold-out", 0, {}),
    ("not-open", 5, {"closed": [DROP]}),
    # the buyer bought up to the limit of this drop meanwhile
    ("limit-exceeded", 5, {"per_buyer_limit": 1}),
])
def test_a_confirmation_after_the_hold_was_released_reports_the_units_lost_when_they_cannot_be_taken(
        reason, available, stock):
    expired = reservation(RELEASED, order_version=2)
    bought_meanwhile = reservation(SOLD)
    uow = inventory(expired, bought_meanwhile, available=available, **stock)
    deliver(uow, "order.confirmed", expired.order_id, version=3)
    assert (expired.status, expired.order_version) == (RELEASED, 3)
    assert uow.stock.available[DROP] == available and uow.stock.taken[(DROP, "ana")] == 1
    assert uow.published == [("reservation.lost", {
        "order_id": str(expired.order_id), "drop_id": str(DROP), "quantity": 1, "reason": reason})]
    assert uow.committed  # handled, not retried: checkout cancels and refunds the order


@pytest.mark.parametrize("event_type", ENDED)
@pytest.mark.parametrize("status", [HELD, SOLD])
def test_an_order_that_ends_gives_its_units_back_whether_held_or_sold(event_type, status):
    existing = reservation(status, quantity=2, order_version=2)
    uow = inventory(existing, available=3)
    deliver(uow, event_type, existing.order_id, version=3)
    assert (existing.status, existing.order_version) == (RELEASED, 3)
    assert uow.stock.available[DROP] == 5 and uow.stock.taken[(DROP, "ana")] == 0
    assert uow.published == []


@pytest.mark.parametrize("event_type", ENDED)
def test_units_already_given_back_are_not_given_back_twice(event_type):
    swept = reservation(RELEASED, quantity=2, order_version=2)
    uow = inventory(swept, available=3)
    deliver(uow, event_type, swept.order_id, version=3)
    deliver(uow, event_type, swept.order_id, version=3)
    assert swept.status == RELEASED
    assert uow.stock.available[DROP] == 3 and uow.stock.taken[(DROP, "ana")] == 0


@pytest.mark.parametrize("version", [NO_VERSION, "2", True], ids=["absent", "text", "boolean"])
def test_an_event_without_an_integer_version_is_applied_as_it_comes(version):
    sold = reservation(SOLD, order_version=3)
    uow = inventory(sold, available=0)
    deliver(uow, "order.cancelled", sold.order_id, version=version)
    assert (sold.status, sold.order_version) == (RELEASED, 3)
    assert uow.stock.available[DROP] == 1


def test_a_confirmed_order_without_a_reservation_is_parked_for_a_human():
    uow = inventory(available=1)
    with pytest.raises(PermanentFailure):
        deliver(uow, "order.confirmed", uuid.uuid4(), version=2)
    assert uow.stock.available[DROP] == 1 and uow.published == [] and not uow.committed


@pytest.mark.parametrize("event_type", ENDED)
def test_an_ended_order_without_a_reservation_is_acknowledged_and_changes_nothing(event_type):
    uow = inventory(available=1)
    deliver(uow, event_type, uuid.uuid4(), version=2)
    assert uow.committed
    assert uow.stock.available[DROP] == 1 and uow.published == []


@pytest.mark.parametrize("event_type", sorted(EVENT_HANDLERS))
@pytest.mark.parametrize("data", [{}, {"order_id": "not-a-uuid"}, {"order_id": None}])
def test_events_without_a_valid_order_id_fail_permanently(event_type, data):
    envelope = Envelope(type=event_type, data=data, source="checkout")
    uow = FakeUnitOfWork()
    with pytest.raises(PermanentFailure):
        EVENT_HANDLERS[event_type](envelope, uow)
    assert uow.published == []


def test_inventory_handles_every_event_it_subscribes_to():
    from shared.messaging.topology import SUBSCRIPTIONS

    assert set(EVENT_HANDLERS) == set(SUBSCRIPTIONS["inventory"])
