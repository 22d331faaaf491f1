"""Order events that cannot name an order are parked, not retried."""
import pytest

from services.inventory.handlers import EVENT_HANDLERS
from shared.messaging.consumer import PermanentFailure
from shared.messaging.envelope import Envelope


class UntouchedUnitOfWork:
    """Fails the test if a handler reaches for the database."""

    @property
    def session(self):
        raise AssertionError("the handler touched the database")


@pytest.mark.parametrize("event_type", sorted(EVENT_HANDLERS))
@pytest.mark.parametrize("data", [{}, {"order_id": "not-a-uuid"}, {"order_id": None}])
def test_events_without_a_valid_order_id_fail_permanently(event_type, data):
    envelope = Envelope(type=event_type, data=data, source="checkout")
    with pytest.raises(PermanentFailure):
        EVENT_HANDLERS[event_type](envelope, UntouchedUnitOfWork())


def test_inventory_handles_every_event_it_subscribes_to():
    from shared.messaging.topology import SUBSCRIPTIONS

    assert set(EVENT_HANDLERS) == set(SUBSCRIPTIONS["inventory"])
