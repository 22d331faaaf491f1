"""Checkout's consumer: every event it handles, run as the consumer runs it (the handler from
`handlers.event_handlers`, in a unit of work committed when it returns)."""
from datetime import datetime, timedelta, timezone

import pytest

from services.checkout import handlers
from services.checkout.payments import RefundFailed, RefundRefused
from services.checkout.schemas import OrderSchema
from shared.messaging import topology
from shared.messaging.consumer import PartnerDown, PermanentFailure
from tests.unit.checkout.fakes import SETTINGS, FakeProvider, capture, statuses, unknown_order_id

SENT_AT = datetime(2014, 10, 27, 15, 4, tzinfo=timezone.utc)


def paid(checkout):
    order = checkout.place()
    checkout.pay(capture(order, capture_id="CAP-1"))
    assert order.status == "confirmed"
    return order


def test_the_consumer_handles_these_events_and_every_one_it_subscribes_to():
    handled = set(handlers.event_handlers(FakeProvider(), SETTINGS))
    assert handled == {"reservation.expired", "reservation.lost", "payment.refund_requested", "email.sent"}
    assert handled == set(topology.SUBSCRIPTIONS["checkout"])  # else its events wait, then park


# --- reservation.expired -----------------------------------------------------------------------

def test_an_unpaid_order_whose_hold_expired_expires_and_gives_the_address_its_units_back(checkout):
    order = checkout.place()
    events = checkout.deliver("reservation.expired", {"order_id": str(order.id)})
    assert statuses(order) == ["awaiting_payment", "expired"]
    assert checkout.units_on_address(order) == 0
    [(event_type, data)] = events
    assert (event_type, data["order_id"], data["status"], data["version"]) == (
        "order.expired", str(order.id), "expired", 2)


def test_a_hold_that_expired_after_the_order_was_paid_changes_nothing(checkout):
    order = paid(checkout)
    assert checkout.deliver("reservation.expired", {"order_id": str(order.id)}) == []
    assert statuses(order) == ["awaiting_payment", "confirmed"]
    assert checkout.units_on_address(order) == 1


@pytest.mark.parametrize("data", [{"order_id": unknown_order_id()}, {"order_id": "nonsense"}, {}])
def test_an_expired_hold_of_no_order_here_changes_nothing(checkout, data):
    assert checkout.deliver("reservation.expired", data) == []


# --- reservation.lost --------------------------------------------------------------------------

def test_a_confirmed_order_whose_unit_was_lost_is_cancelled_and_refunded(checkout):
    order = paid(checkout)
    (cancellation, cancelled), (refund, requested) = checkout.deliver("reservation.lost", {"order_id": str(order.id)})
    assert statuses(order) == ["awaiting_payment", "confirmed", "cancelled"]
    assert order.cancelled_at is not None
    assert checkout.units_on_address(order) == 0
    assert cancellation == "order.cancelled"
    assert (cancelled["order_id"], cancelled["status"], cancelled["version"]) == (str(order.id), "cancelled", 3)
    assert cancelled["refund"] == {"amount": 29900, "currency": "CAD"}
    assert cancelled["reason"] == "we could not keep your unit"
    assert datetime.fromisoformat(cancelled["cancelled_at"]) == order.cancelled_at
    assert refund == "payment.refund_requested"
    assert (requested["order_id"], requested["capture_id"], requested["amount"], requested["currency"]) == (
        str(order.id), "CAP-1", 29900, "CAD")


def test_a_lost_unit_of_an_order_shipped_meanwhile_is_parked_and_logged_for_people_to_settle(checkout, caplog):
    order = paid(checkout)
    checkout.run(lambda uow: handlers.ship_order(order, uow, SETTINGS))
    published = len(checkout.uow.published)
    with pytest.raises(PermanentFailure, match="settle it"):
        checkout.deliver("reservation.lost", {"order_id": str(order.id), "reason": "sold-out"})
    assert len(checkout.uow.published) == published
    assert statuses(order) == ["awaiting_payment", "confirmed", "shipped"]
    [error] = [record for record in caplog.records if record.levelname == "ERROR"]
    assert "shipped order's unit was lost" in error.getMessage() and error.quantity == 1


def test_a_lost_unit_of_an_order_that_is_not_confirmed_changes_nothing(checkout):
    order = checkout.place()
    assert checkout.deliver("reservation.lost", {"order_id": str(order.id)}) == []
    assert checkout.deliver("reservation.lost", {"order_id": unknown_order_id()}) == []
    assert statuses(order) == ["awaiting_payment"]


# --- payment.refund_requested ------------------------------------------------------------------

def refund_request(order, capture_id="CAP-1", amount=29900, currency="CAD", reason="order cancelled before shipping"):
    return {"order_id": str(order.id), "capture_id": capture_id, "amount": amount, "currency": currency,
            "reason": reason}


def test_a_requested_refund_is_made_at_the_provider_and_the_buyer_told(checkout):
    order = paid(checkout)
    [(event_type, data)] = checkout.deliver("payment.refund_requested", refund_request(order))
    assert checkout.provider.refunds == [("CAP-1", 29900, "CAD")]
    assert order.refund_id == "RF-CAP-1" and order.refunded_at is not None
    assert event_type == "payment.refunded"
    assert (data["order_id"], data["status"]) == (str(order.id), "confirmed")
    assert data["refund"] == {"amount": 29900, "currency": "CAD", "refund_id": "RF-CAP-1"}
    assert data["reason"] == "order cancelled before shipping"


def test_refunding_a_capture_that_is_not_the_orders_payment_leaves_the_orders_payment_as_it_is(checkout):
    """A payment of the wrong amount, refunded, then the right one; and a second capture of the
    confirmed order, refunded: the order's payment stays captured, and each buyer is told."""
    order = checkout.place()
    result, [(_, wrong)] = checkout.pay(capture(order, event_id="WH-W", capture_id="CAP-W", amount=100))
    assert result == "amount-mismatch-refunded"
    checkout.deliver("payment.refund_requested", wrong)
    result, _ = checkout.pay(capture(order, event_id="WH-1", capture_id="CAP-1"))
    assert result == "confirmed"
    result, [(_, second)] = checkout.pay(capture(order, event_id="WH-2", capture_id="CAP-2"))
    assert result == "second-capture-refunded"
    [(event_type, told)] = checkout.deliver("payment.refund_requested", second)
    assert checkout.provider.refunds == [("CAP-W", 100, "CAD"), ("CAP-2", 29900, "CAD")]
    assert event_type == "payment.refunded" and told["refund"]["refund_id"] == "RF-CAP-2"
    assert (order.refund_id, order.refunded_at) == (None, None)
    assert OrderSchema().dump(order)["payment"]["status"] == "captured"


def test_a_refund_the_provider_did_not_confirm_is_retried_with_nothing_recorded(checkout):
    order = paid(checkout)
    published = list(checkout.uow.published)
    checkout.provider.failure = RefundFailed("provider answered 502")
    with pytest.raises(PartnerDown) as raised:
        checkout.deliver("payment.refund_requested", refund_request(order))
    assert not isinstance(raised.value, PermanentFailure)
    assert order.refund_id is None and order.refunded_at is None
    assert checkout.uow.published == published


def test_a_refund_the_provider_refuses_is_parked_at_once_with_its_reason(checkout):
    order = paid(checkout)
    checkout.provider.failure = RefundRefused("provider answered 422: capture already refunded elsewhere")
    with pytest.raises(PermanentFailure, match="refused the refund of capture CAP-1: provider answered 422"):
        checkout.deliver("payment.refund_requested", refund_request(order))
    assert order.refund_id is None


def test_a_refund_for_an_unknown_order_is_parked_at_once_without_calling_the_provider(checkout):
    with pytest.raises(PermanentFailure):
        checkout.deliver("payment.refund_requested", {"order_id": unknown_order_id(), "capture_id": "CAP-1",
                                                      "amount": 29900, "currency": "CAD"})
    assert checkout.provider.refunds == []
    assert checkout.uow.published == []


# --- email.sent --------------------------------------------------------------------------------

def email_sent(order, event_type="order.confirmed", sent_at=SENT_AT):
    return {"order_id": str(order.id), "event_type": event_type, "sent_at": sent_at.isoformat()}


def test_the_confirmation_email_going_out_shows_on_the_order(checkout):
    order = paid(checkout)
    assert checkout.deliver("email.sent", email_sent(order)) == []
    assert order.email_sent_at == SENT_AT


def test_the_first_confirmation_email_is_the_one_the_order_shows(checkout):
    order = paid(checkout)
    checkout.deliver("email.sent", email_sent(order))
    checkout.deliver("email.sent", email_sent(order, sent_at=SENT_AT + timedelta(hours=1)))
    assert order.email_sent_at == SENT_AT


def test_a_shipping_email_that_went_out_instead_of_a_superseded_confirmation_shows_on_the_order(checkout):
    """An email outage lasting until the order shipped: notifications sends only the newer
    state's email. The order said "confirmation not sent" for good, and its page kept reading it."""
    order = paid(checkout)
    checkout.deliver("email.sent", email_sent(order, event_type="order.shipped"))
    assert order.email_sent_at == SENT_AT


def test_other_emails_and_unknown_orders_change_nothing(checkout):
    order = paid(checkout)
    checkout.deliver("email.sent", email_sent(order, event_type="order.placed"))
    checkout.deliver("email.sent", {"order_id": unknown_order_id(), "event_type": "order.confirmed",
                                    "sent_at": SENT_AT.isoformat()})
    assert order.email_sent_at is None
