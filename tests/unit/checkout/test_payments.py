"""Every outcome of the payment webhook (`handlers.take_payment`), as the buyer and the other
services would notice it: the order's status and history, the events published, the refunds."""
from datetime import datetime

import pytest

from services.checkout import errors, handlers
from services.checkout.handlers import CAPTURE_COMPLETED, CAPTURE_DENIED, PaymentNotice
from services.checkout.payments import RefundRefused
from services.checkout.models import OrderTransition
from shared.messaging.consumer import PermanentFailure
from tests.unit.checkout.fakes import (capture, denial, given_back, hold_ran_out, requested_refund, statuses,
                                      unknown_order_id)

REFUSALS = [errors.SoldOut("sold out"), errors.SaleNotOpen("closed"), errors.LimitExceeded("one per buyer")]


def expired(checkout, order):
    checkout.deliver("reservation.expired", {"order_id": str(order.id)})
    assert order.status == "expired"


def declined(checkout, order):
    checkout.pay(denial(order))
    assert order.status == "payment_failed"


def confirmed(checkout, order):
    checkout.pay(capture(order, event_id="WH-0", capture_id="CAP-0"))
    assert order.status == "confirmed"


def cancelled(checkout, order):
    checkout.cancel(order)
    assert order.status == "cancelled"


def refused_once_as_the_order_expires(checkout, order, refusal):
    """For `inventory.meanwhile`: the first renewal refused with `refusal` while checkout's
    consumer expires the order; the next ones held."""
    def meanwhile():
        checkout.inventory.reserve_refusal = refusal
        checkout.inventory.meanwhile = lambda: setattr(checkout.inventory, "reserve_refusal", None)
        expired(checkout, order)
    return meanwhile


def test_a_payment_in_time_confirms_the_order_and_sells_its_hold(checkout):
    order = checkout.place()
    result, events = checkout.pay(capture(order))
    assert result == "confirmed"
    assert statuses(order) == ["awaiting_payment", "confirmed"]
    assert order.payment_capture_id == "CAP-1"
    assert checkout.inventory.sold == [(str(order.id), 2)]
    [(event_type, data)] = events
    assert event_type == "order.confirmed"
    assert (data["order_id"], data["status"], data["version"]) == (str(order.id), "confirmed", 2)
    assert data["total"] == {"amount": 29900, "currency": "CAD"}
    assert datetime.fromisoformat(data["confirmed_at"]) == order.confirmed_at
    assert data["status_url"] == f"http://127.0.0.1:8003/orders/{order.id}"


def test_a_payment_in_time_confirms_the_order_while_inventory_is_not_answering(checkout):
    order = checkout.place()
    checkout.inventory.sell_refusal = errors.InventoryUnavailable("inventory is down")
    result, events = checkout.pay(capture(order))
    assert result == "confirmed"
    assert order.status == "confirmed"
    # the sale follows from order.confirmed once inventory is back
    assert [event_type for event_type, _ in events] == ["order.confirmed"]


def test_a_payment_in_time_calls_inventory_only_once_its_confirmation_is_committed(checkout):
    # the webhook's transaction, and the order's row lock, are not held across the sale
    order = checkout.place()
    outcome, _ = checkout.run(lambda uow: handlers.apply_payment(capture(order), uow, checkout.settings))
    assert order.status == "confirmed" and checkout.inventory.sold == []
    assert (outcome.order_id, outcome.sale_version) == (str(order.id), 2)
    handlers.sell_paid_units(outcome, checkout.inventory)
    assert checkout.inventory.sold == [(str(order.id), 2)]


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda refusal: refusal.slug)
def test_a_payment_in_time_whose_sale_is_refused_stays_confirmed_for_order_confirmed_to_follow_up(checkout, refusal):
    # Only clocks apart by more than the sweeper's grace make this: the hold was given back
    # though the order's own expiry had not passed. Inventory's consumer of order.confirmed
    # takes the units again, or reports them lost (below).
    order = checkout.place()
    checkout.inventory.sell_refusal = refusal
    result, events = checkout.pay(capture(order))
    assert result == "confirmed"
    assert checkout.inventory.sold == [(str(order.id), 2)]
    assert statuses(order) == ["awaiting_payment", "confirmed"]
    assert [(event_type, data["version"]) for event_type, data in events] == [("order.confirmed", 2)]


def test_a_payment_in_time_whose_order_was_cancelled_before_its_sale_sells_nothing_and_logs_no_failure(checkout, caplog):
    order = checkout.place()
    checkout.inventory.sell_refusal = errors.StaleOrderVersion("a newer state gave the units back")
    result, _ = checkout.pay(capture(order))
    assert result == "confirmed"
    assert not [record for record in caplog.records if record.levelname in ("WARNING", "ERROR")]


def test_a_payment_in_time_whose_units_are_gone_is_cancelled_and_refunded_when_inventory_reports_them_lost(checkout):
    order = checkout.place()
    checkout.inventory.sell_refusal = errors.SoldOut("sold out")
    result, _ = checkout.pay(capture(order))
    assert result == "confirmed"
    events = checkout.deliver("reservation.lost", {"order_id": str(order.id), "drop_id": str(order.drop_id),
                                                   "quantity": 1, "reason": "sold-out"})
    assert statuses(order) == ["awaiting_payment", "confirmed", "cancelled"]
    assert [event_type for event_type, _ in events] == ["order.cancelled", "payment.refund_requested"]
    refund = requested_refund(events)
    assert (refund["capture_id"], refund["amount"]) == ("CAP-1", order.total_amount)


def test_a_late_payment_holds_the_stock_again_and_confirms(checkout):
    order = checkout.place()
    hold_ran_out(order)
    result, events = checkout.pay(capture(order))
    assert result == "late-confirmed"
    assert statuses(order) == ["awaiting_payment", "confirmed"]
    assert checkout.inventory.reserved[-1] == {"order_id": str(order.id), "quantity": 1, "renew": True,
                                               "order_version": 2}
    # sold at once, as an on-time payment's hold is: the sweeper cannot give the paid unit away
    # while inventory's consumer is behind on order.confirmed
    assert checkout.inventory.sold == [(str(order.id), 2)]
    assert order.hold_expires_at > datetime.now(order.hold_expires_at.tzinfo)
    assert checkout.units_on_address(order) == 1  # still counted once
    [(event_type, data)] = events
    assert (event_type, data["status"], data["version"]) == ("order.confirmed", "confirmed", 2)


@pytest.mark.parametrize("ended", [expired, declined])
def test_a_late_payment_for_an_ended_order_holds_the_stock_again_and_counts_the_address_again(checkout, ended):
    order = checkout.place()
    ended(checkout, order)
    assert checkout.units_on_address(order) == 0
    ended_as = order.status
    result, events = checkout.pay(capture(order))
    assert result == "late-confirmed"
    assert statuses(order) == ["awaiting_payment", ended_as, "confirmed"]
    assert checkout.inventory.reserved[-1]["renew"] and checkout.inventory.reserved[-1]["order_version"] == 3
    assert checkout.units_on_address(order) == 1
    [(event_type, data)] = events
    assert (event_type, data["status"], data["version"]) == ("order.confirmed", "confirmed", 3)


@pytest.mark.parametrize("ended", [expired, declined])
def test_a_late_payment_is_refunded_when_orders_placed_since_took_its_address_allowance(checkout, ended):
    first, second = checkout.place("key-1", buyer_id="ann"), checkout.place("key-2", buyer_id="bob")
    ended(checkout, first)
    if ended is expired:
        expired(checkout, second)
    else:
        checkout.pay(denial(second, event_id="WH-D2"))
    ended_as = first.status
    checkout.place("key-3", buyer_id="cy"), checkout.place("key-4", buyer_id="dee")
    assert checkout.settings.per_address_limit == 2 == checkout.units_on_address(first)

    result, events = checkout.pay(capture(first))

    assert result == "late-refunded"
    assert statuses(first) == ["awaiting_payment", ended_as]
    assert checkout.units_on_address(first) == 2
    [(event_type, data)] = events
    assert event_type == "payment.refund_requested" and data["capture_id"] == "CAP-1"
    assert "shipping address" in data["reason"]
    assert checkout.inventory.released[-1] == str(first.id)  # the renewed hold given back at once
    assert checkout.inventory.unguarded == [("reserve", str(first.id)), ("release", str(first.id))]


def test_a_late_payment_without_stock_expires_the_order_and_is_refunded(checkout):
    order = checkout.place()
    hold_ran_out(order)
    checkout.inventory.reserve_refusal = errors.SoldOut("sold out")
    result, events = checkout.pay(capture(order))
    assert result == "late-refunded"
    assert statuses(order) == ["awaiting_payment", "expired"]
    assert checkout.units_on_address(order) == 0
    (expiry, expired_data), (refund, refund_data) = events
    assert (expiry, expired_data["order_id"], expired_data["status"], expired_data["version"]) == (
        "order.expired", str(order.id), "expired", 2)
    assert refund == "payment.refund_requested"
    assert {k: refund_data[k] for k in ("order_id", "capture_id", "amount", "currency")} == {
        "order_id": str(order.id), "capture_id": "CAP-1", "amount": 29900, "currency": "CAD"}
    assert refund_data["reason"].startswith("late payment and ")


def test_a_late_payment_for_an_expired_order_without_stock_is_refunded_and_the_order_stays_expired(checkout):
    order = checkout.place()
    expired(checkout, order)
    checkout.inventory.reserve_refusal = errors.SoldOut("sold out")
    result, events = checkout.pay(capture(order))
    assert result == "late-refunded"
    assert statuses(order) == ["awaiting_payment", "expired"]
    [(event_type, data)] = events
    assert event_type == "payment.refund_requested"
    assert (data["capture_id"], data["amount"], data["currency"]) == ("CAP-1", 29900, "CAD")


def test_a_late_payments_renewal_is_asked_with_no_transaction_open(checkout):
    # behind PgBouncer an open transaction is a server connection (and the order's row lock)
    # held for as long as inventory takes to answer
    order = checkout.place()
    hold_ran_out(order)
    during_renewal = []
    checkout.inventory.meanwhile = lambda: during_renewal.append(checkout.uow.open)
    result, _ = checkout.pay(capture(order))
    assert result == "late-confirmed"
    assert during_renewal == [False]


def test_a_late_payment_whose_order_expires_during_its_renewal_is_looked_at_again_and_confirmed(checkout):
    order = checkout.place()
    hold_ran_out(order)

    def swept():  # inventory's sweeper gave the hold back, and checkout's consumer expired the order
        checkout.inventory.meanwhile = None
        expired(checkout, order)

    checkout.inventory.meanwhile = swept
    result, events = checkout.pay(capture(order))
    assert result == "late-confirmed"
    assert statuses(order) == ["awaiting_payment", "expired", "confirmed"]
    # asked for the order as first read, then for the expired one: the sale is for the last
    assert [(asked["renew"], asked["order_version"]) for asked in checkout.inventory.reserved[1:]] == [
        (True, 2), (True, 3)]
    assert checkout.inventory.sold == [(str(order.id), 3)]
    assert checkout.units_on_address(order) == 1
    assert [(event_type, data["version"]) for event_type, data in events] == [
        ("order.expired", 2), ("order.confirmed", 3)]


def test_the_same_late_payment_delivered_twice_at_once_confirms_once(checkout):
    order = checkout.place()
    hold_ran_out(order)
    second = []

    def delivered_again():  # the provider's retry, applied while the first waits for inventory
        checkout.inventory.meanwhile = None
        second.append(checkout.pay(capture(order)))

    checkout.inventory.meanwhile = delivered_again
    result, events = checkout.pay(capture(order))
    [(second_result, _)] = second
    assert (second_result, result) == ("late-confirmed", "duplicate")
    assert statuses(order) == ["awaiting_payment", "confirmed"]
    assert [event_type for event_type, _ in events] == ["order.confirmed"]
    assert checkout.inventory.sold == [(str(order.id), 2)]


def test_a_second_late_capture_never_gives_back_the_hold_another_one_confirmed_the_order_with(checkout):
    """Two captures of an order whose hold ran out, at once: both renew the one hold. The first
    confirms the order, and its sale does not reach inventory (down): the order.confirmed event
    sells it later. The second, which then finds the order confirmed, gave back the hold it had
    renewed, the paid order's own: its unit went back on sale."""
    order = checkout.place()
    hold_ran_out(order)
    first = []

    def confirmed_meanwhile():
        checkout.inventory.meanwhile = None
        checkout.inventory.sell_refusal = errors.InventoryUnavailable("inventory is down")
        first.append(checkout.pay(capture(order, event_id="WH-1", capture_id="CAP-1")))

    checkout.inventory.meanwhile = confirmed_meanwhile
    result, _ = checkout.pay(capture(order, event_id="WH-2", capture_id="CAP-2"))
    assert (first[0][0], result) == ("late-confirmed", "second-capture-refunded")
    assert order.status == "confirmed" and str(order.id) not in checkout.inventory.released


def test_a_late_payment_whose_order_keeps_changing_is_refused_unapplied_for_the_provider_to_send_again(checkout):
    # A real order changes at most twice here (expired, then confirmed by another capture, which
    # ends the renewals); this one is made to change during every renewal, so the bound is met.
    order = checkout.place()
    expired(checkout, order)

    def changed():
        checkout.run(lambda uow: order.history.append(
            OrderTransition(from_status="expired", to_status="expired", reason="changed meanwhile")))

    checkout.inventory.meanwhile = changed
    with pytest.raises(errors.OrderChanging) as refused:
        checkout.pay(capture(order))
    assert refused.value.status == 503
    renewals = checkout.inventory.reserved[1:]
    assert len(renewals) == handlers.RENEWAL_ATTEMPTS  # each one's answer looked at: none asked in vain
    assert order.status == "expired" and order.payment_capture_id is None
    assert checkout.uow.payment_events.rows == {}  # the provider's next attempt is applied afresh
    checkout.inventory.meanwhile = None
    assert checkout.pay(capture(order))[0] == "late-confirmed"


def test_a_late_payment_refused_for_the_order_as_it_was_is_not_applied_to_the_order_as_it_is(checkout):
    order = checkout.place()
    hold_ran_out(order)

    # the refusal answers version 2; the order moved on meanwhile
    checkout.inventory.meanwhile = refused_once_as_the_order_expires(checkout, order, errors.SoldOut("sold out"))
    result, events = checkout.pay(capture(order))
    assert result == "late-confirmed"
    assert statuses(order) == ["awaiting_payment", "expired", "confirmed"]
    assert "payment.refund_requested" not in [event_type for event_type, _ in events]


def test_a_late_payment_whose_renewal_inventory_finds_stale_reads_the_order_again(checkout):
    order = checkout.place()
    hold_ran_out(order)

    # inventory had a newer version of the order than the one read
    checkout.inventory.meanwhile = refused_once_as_the_order_expires(
        checkout, order, errors.StaleOrderVersion("a newer state gave the units back"))
    result, _ = checkout.pay(capture(order))
    assert result == "late-confirmed"
    assert [asked["order_version"] for asked in checkout.inventory.reserved[1:]] == [2, 3]
    assert checkout.inventory.sold == [(str(order.id), 3)]


def test_a_late_payment_while_inventory_is_away_is_refused_unapplied(checkout):
    order = checkout.place()
    expired(checkout, order)
    checkout.inventory.reserve_refusal = errors.InventoryUnavailable("inventory is down")
    with pytest.raises(errors.InventoryUnavailable):
        checkout.pay(capture(order))
    assert order.status == "expired" and order.payment_capture_id is None
    assert checkout.uow.payment_events.rows == {}


def test_a_late_payment_whose_order_is_cancelled_during_its_renewal_is_refunded_and_the_renewed_hold_given_back(
        checkout):
    # the cancel's order.cancelled and the renewal are both the order's next version: the
    # renewal may take the units again after the cancel gave them back
    order = checkout.place()
    hold_ran_out(order)

    def cancelled_meanwhile():
        checkout.inventory.meanwhile = None
        cancelled(checkout, order)

    checkout.inventory.meanwhile = cancelled_meanwhile
    result, events = checkout.pay(capture(order))
    assert result == "refunded"
    assert statuses(order) == ["awaiting_payment", "cancelled"]
    assert checkout.inventory.released[-1] == str(order.id)
    assert checkout.inventory.sold == []
    refund = requested_refund(events)
    assert refund["capture_id"] == "CAP-1"


def test_a_payment_for_a_cancelled_order_is_refunded(checkout):
    order = checkout.place()
    cancelled(checkout, order)
    result, events = checkout.pay(capture(order))
    assert result == "refunded"
    assert order.status == "cancelled"
    [(event_type, data)] = events
    assert event_type == "payment.refund_requested"
    assert (data["order_id"], data["capture_id"], data["amount"], data["currency"]) == (
        str(order.id), "CAP-1", 29900, "CAD")
    assert data["reason"] == "payment arrived for an order that is cancelled"


def test_the_same_provider_event_twice_is_applied_once(checkout):
    order = checkout.place()
    checkout.pay(capture(order, event_id="WH-1", capture_id="CAP-1"))
    result, events = checkout.pay(capture(order, event_id="WH-1", capture_id="CAP-2"))
    assert result == "duplicate"
    assert events == []
    assert statuses(order) == ["awaiting_payment", "confirmed"]
    assert order.payment_capture_id == "CAP-1"
    assert len(checkout.inventory.sold) == 1


@pytest.mark.parametrize("event_type", [CAPTURE_DENIED, "CHECKOUT.ORDER.APPROVED"])
@pytest.mark.parametrize("order_id", [unknown_order_id(), "not-an-order-id"])
def test_news_of_no_money_for_an_order_this_shop_does_not_know_is_refused_and_left_unapplied(checkout, order_id,
                                                                                           event_type):
    notice = PaymentNotice("WH-1", event_type, order_id, "CAP-1", 29900, "CAD")
    with pytest.raises(errors.OrderNotFound):
        checkout.pay(notice)
    assert checkout.uow.published == []
    assert checkout.uow.payment_events.rows == {}  # the provider's retry is looked at afresh


@pytest.mark.parametrize("order_id", [unknown_order_id(), "not-an-order-id"])
def test_money_captured_for_an_order_this_shop_does_not_know_is_parked_for_an_admin_to_refund(checkout, order_id):
    """Answered 404 before: the provider gave up after its retries, the buyer charged, nobody told."""
    notice = PaymentNotice("WH-1", CAPTURE_COMPLETED, order_id, "CAP-1", 29900, "CAD")

    result, events = checkout.pay(notice)

    assert result == "unknown-order-refund-parked"
    [(event_type, data)] = events
    assert (event_type, data["capture_id"], data["amount"], data["currency"]) == (
        "payment.refund_requested", "CAP-1", 29900, "CAD")
    with pytest.raises(PermanentFailure, match="CAP-1"):  # parked, where the dead-letter alert shows money owed
        checkout.deliver("payment.refund_requested", data)
    assert checkout.provider.refunds == []  # never refunded blindly
    assert checkout.pay(notice)[0] == "duplicate"


def test_a_declined_payment_fails_the_order_and_gives_the_address_its_units_back(checkout):
    order = checkout.place()
    assert checkout.units_on_address(order) == 1
    result, events = checkout.pay(denial(order))
    assert result == "payment_failed"
    assert statuses(order) == ["awaiting_payment", "payment_failed"]
    assert checkout.units_on_address(order) == 0
    [(event_type, data)] = events
    assert (event_type, data["order_id"], data["status"], data["version"]) == (
        "order.payment_failed", str(order.id), "payment_failed", 2)


@pytest.mark.parametrize("ended", [confirmed, expired, cancelled])
def test_a_decline_for_an_order_no_longer_awaiting_payment_is_ignored(checkout, ended):
    order = checkout.place()
    ended(checkout, order)
    history = statuses(order)
    result, events = checkout.pay(denial(order))
    assert result == f"ignored-{order.status}"
    assert statuses(order) == history
    assert events == []


def test_another_kind_of_provider_event_is_noted_and_changes_nothing(checkout):
    order = checkout.place()
    pending = PaymentNotice("WH-P", "PAYMENT.CAPTURE.PENDING", str(order.id), "CAP-1", 29900, "CAD")
    result, events = checkout.pay(pending)
    assert result == "noted"
    assert events == []
    assert statuses(order) == ["awaiting_payment"] and order.payment_capture_id is None
    assert checkout.pay(pending) == ("duplicate", [])


def test_the_same_capture_reported_again_is_already_captured(checkout):
    order = checkout.place()
    checkout.pay(capture(order, event_id="WH-1", capture_id="CAP-1"))
    result, events = checkout.pay(capture(order, event_id="WH-2", capture_id="CAP-1"))
    assert result == "already-captured"
    assert events == []
    assert statuses(order) == ["awaiting_payment", "confirmed"]
    assert len(checkout.inventory.sold) == 1


def test_a_second_capture_for_the_same_order_is_refunded_as_paid(checkout):
    order = checkout.place()
    checkout.pay(capture(order, event_id="WH-1", capture_id="CAP-1"))
    result, events = checkout.pay(capture(order, event_id="WH-2", capture_id="CAP-2", amount=10000, currency="USD"))
    assert result == "second-capture-refunded"
    assert statuses(order) == ["awaiting_payment", "confirmed"]
    assert order.payment_capture_id == "CAP-1"
    [(event_type, data)] = events
    assert event_type == "payment.refund_requested"
    assert (data["order_id"], data["capture_id"], data["amount"], data["currency"]) == (
        str(order.id), "CAP-2", 10000, "USD")


@pytest.mark.parametrize("amount, currency", [(100, "CAD"), (29900, "USD")])
def test_a_payment_of_the_wrong_amount_is_refunded_and_the_order_stays_payable(checkout, amount, currency):
    order = checkout.place()
    result, events = checkout.pay(capture(order, event_id="WH-1", capture_id="CAP-1", amount=amount, currency=currency))
    assert result == "amount-mismatch-refunded"
    assert statuses(order) == ["awaiting_payment"] and order.payment_capture_id is None
    [(event_type, data)] = events
    assert event_type == "payment.refund_requested"
    assert (data["capture_id"], data["amount"], data["currency"]) == ("CAP-1", amount, currency)
    assert data["reason"] == "the amount paid differs from the order total"

    result, _ = checkout.pay(capture(order, event_id="WH-2", capture_id="CAP-2"))
    assert result == "confirmed"
    assert order.payment_capture_id == "CAP-2"


@pytest.mark.parametrize("how, told", [("REFUNDED", "refunded"), ("REVERSED", "reversed")])
def test_a_paid_order_whose_payment_the_provider_gives_back_is_cancelled_and_its_units_go_back_on_sale(
        checkout, how, told):
    """A refund made in the provider's dashboard, or a chargeback the buyer won: the order was
    left confirmed, and shipped, with the money gone."""
    order = checkout.place()
    confirmed(checkout, order)

    result, events = checkout.pay(given_back(order, how, capture_id="CAP-0", undone_by="REF-9"))

    assert result == "cancelled"
    assert statuses(order) == ["awaiting_payment", "confirmed", "cancelled"]
    assert order.history[-1].reason == f"payment {told} at the provider"
    assert (order.refund_id, order.refunded_at is not None) == ("REF-9", True)
    assert checkout.units_on_address(order) == 0
    # the units go back on sale (inventory's consumer of order.cancelled), the buyer is told,
    # and no refund is asked for: the money is back already
    [(event_type, data)] = events
    assert (event_type, data["status"], data["version"]) == ("order.cancelled", "cancelled", 3)
    assert data["refund"] == {"amount": 29900, "currency": "CAD"}
    assert data["reason"] == f"your payment was {told} at the payment provider"
    assert checkout.provider.refunds == []
    assert checkout.pay(given_back(order, how, capture_id="CAP-0", undone_by="REF-9")) == ("duplicate", [])


def test_a_shipped_order_whose_payment_the_provider_gives_back_stays_shipped_and_is_logged_for_people(checkout, caplog):
    order = checkout.place()
    confirmed(checkout, order)
    checkout.run(lambda uow: handlers.ship_order(order, uow, checkout.settings))

    result, events = checkout.pay(given_back(order, "REVERSED", capture_id="CAP-0", undone_by="REV-1"))

    assert (result, events) == ("shipped-reversed", [])
    assert statuses(order) == ["awaiting_payment", "confirmed", "shipped"]
    assert order.refund_id == "REV-1" and order.refunded_at is not None  # its payment shows "refunded"
    assert [record.message for record in caplog.records if record.levelname == "ERROR"] == [
        "a shipped order's payment was reversed at the provider: settle it with the buyer"]


def test_parts_given_back_at_the_provider_that_add_up_to_the_payment_cancel_the_order(checkout):
    """A dashboard refund of part, then a chargeback of the rest: each part alone left the order
    confirmed, to ship with all the money gone."""
    order = checkout.place()
    confirmed(checkout, order)
    assert checkout.pay(given_back(order, "REFUNDED", event_id="WH-R1", capture_id="CAP-0", amount=100))[0] == (
        "part-refunded-noted")
    result, events = checkout.pay(given_back(order, "REVERSED", event_id="WH-R2", capture_id="CAP-0", amount=29800,
                                             undone_by="REV-2"))
    assert result == "cancelled" and statuses(order)[-1] == "cancelled"
    [(event_type, data)] = events
    assert (event_type, data["refund"], data["already_returned"]) == (
        "order.cancelled", {"amount": 29900, "currency": "CAD"}, True)


def test_a_cancel_after_part_was_given_back_at_the_provider_refunds_what_is_left(checkout):
    order = checkout.place()
    confirmed(checkout, order)
    checkout.pay(given_back(order, capture_id="CAP-0", amount=900))
    _, events = checkout.cancel(order)
    [cancel] = [data for event_type, data in events if event_type == "order.cancelled"]
    assert cancel["refund"] == {"amount": 29000, "currency": "CAD"} and not cancel["already_returned"]
    request = requested_refund(events)
    checkout.deliver("payment.refund_requested", request)
    assert checkout.provider.refunds == [("CAP-0", 29000, "CAD")]


@pytest.mark.parametrize("how", ["REVERSED", "REFUNDED"])
def test_a_refund_asked_for_a_payment_the_provider_gave_back_meanwhile_is_not_asked_again(checkout, how):
    """The buyer cancelled; before checkout's consumer refunded, a chargeback (or the merchant's
    dashboard) gave the money back. PayPal refuses a capture refunded whole: the refund was parked
    as money owed that was not."""
    order = checkout.place()
    confirmed(checkout, order)
    _, events = checkout.cancel(order)
    request = requested_refund(events)
    assert checkout.pay(given_back(order, how, capture_id="CAP-0", undone_by="REV-7"))[0] == f"{how.lower()}-noted"
    checkout.provider.failure = RefundRefused("422: the capture is refunded already")

    events = checkout.deliver("payment.refund_requested", request)

    assert checkout.provider.refunds == []
    [(event_type, data)] = events
    assert (event_type, data["refund"]["refund_id"], data["of_order_payment"]) == ("payment.refunded", "REV-7", True)
    assert order.refund_id == "REV-7"


def test_a_refund_refused_as_given_back_already_waits_for_the_providers_news_not_parked_as_owed(checkout):
    """The dashboard refund (or a chargeback) came before checkout's refund and its news after:
    PayPal refuses the refund (422 CAPTURE_FULLY_REFUNDED), which was parked as money owed, a
    critical page inviting a second refund by hand."""
    from services.checkout.payments import RefundAlreadyMade
    from shared.messaging.consumer import PartnerDown

    order = checkout.place()
    confirmed(checkout, order)
    _, events = checkout.cancel(order)
    request = requested_refund(events)
    checkout.provider.failure = RefundAlreadyMade("provider answered 422: CAPTURE_FULLY_REFUNDED")
    with pytest.raises(PartnerDown, match="has given capture CAP-0 back already"):
        checkout.deliver("payment.refund_requested", request)

    assert checkout.pay(given_back(order, "REFUNDED", capture_id="CAP-0", undone_by="REF-8"))[0] == "refunded-noted"
    events = checkout.deliver("payment.refund_requested", request)  # its retry
    [(event_type, data)] = events
    assert (event_type, data["refund"]["refund_id"], data["already_returned"]) == ("payment.refunded", "REF-8", True)


def test_part_given_back_before_its_capture_completes_still_adds_up_with_the_rest(checkout):
    """Webhooks come in any order: a part refunded in the dashboard told before the capture's
    completion was forgotten, and a chargeback of the rest left the order confirmed."""
    order = checkout.place()
    assert checkout.pay(given_back(order, event_id="WH-R1", capture_id="CAP-1", amount=10000))[0] == "refunded-noted"
    assert checkout.pay(capture(order, capture_id="CAP-1"))[0] == "confirmed"
    assert checkout.pay(given_back(order, "REVERSED", event_id="WH-R2", capture_id="CAP-1", amount=19900,
                                   undone_by="REV-2"))[0] == "cancelled"


def test_a_refund_asked_before_part_was_given_back_at_the_provider_refunds_only_what_is_left(checkout):
    """The refund's amount was fixed as it was asked: PayPal refuses more than is left (422),
    and the refund was parked as 299.00 owed when 199.00 was."""
    order = checkout.place()
    confirmed(checkout, order)
    _, events = checkout.cancel(order)
    request = requested_refund(events)
    checkout.pay(given_back(order, capture_id="CAP-0", amount=10000))
    events = checkout.deliver("payment.refund_requested", request)
    assert checkout.provider.refunds == [("CAP-0", 19900, "CAD")]
    [(event_type, data)] = events
    assert (event_type, data["refund"]["amount"], data["already_returned"]) == ("payment.refunded", 19900, False)


def test_one_refund_told_twice_under_two_event_ids_is_counted_once(checkout):
    order = checkout.place()
    confirmed(checkout, order)
    for event_id in ("WH-R1", "WH-R1-again"):
        result, _ = checkout.pay(given_back(order, event_id=event_id, capture_id="CAP-0", amount=15000, undone_by="REF-9"))
        assert result == "part-refunded-noted"
    assert order.status == "confirmed"
    _, events = checkout.cancel(order)
    request = requested_refund(events)
    checkout.deliver("payment.refund_requested", request)
    assert checkout.provider.refunds == [("CAP-0", 14900, "CAD")]


def test_a_second_capture_partly_given_back_before_its_completion_is_refunded_the_rest_once(checkout):
    order = checkout.place()
    confirmed(checkout, order)
    checkout.pay(given_back(order, event_id="WH-R2", capture_id="CAP-2", amount=20000))
    _, events = checkout.pay(capture(order, event_id="WH-2", capture_id="CAP-2"))
    request = requested_refund(events)
    checkout.deliver("payment.refund_requested", request)
    assert checkout.provider.refunds == [("CAP-2", 9900, "CAD")]


def test_a_renewed_hold_whose_capture_is_given_back_during_the_renewal_is_given_back_at_once(checkout):
    order = checkout.place()
    hold_ran_out(order)

    def given_back_meanwhile():
        checkout.inventory.meanwhile = None
        checkout.pay(given_back(order, capture_id="CAP-1"))

    checkout.inventory.meanwhile = given_back_meanwhile
    result, _ = checkout.pay(capture(order, capture_id="CAP-1"))
    assert result == "capture-already-undone"
    assert checkout.inventory.released[-1] == str(order.id)  # not held for a whole hold time
    assert checkout.inventory.sold == []


@pytest.mark.parametrize("amount, currency", [(100, "CAD"), (29900, "USD")])
def test_part_of_a_payment_given_back_at_the_provider_leaves_the_order_as_it_is(checkout, amount, currency):
    order = checkout.place()
    confirmed(checkout, order)
    result, events = checkout.pay(given_back(order, capture_id="CAP-0", amount=amount, currency=currency))
    assert (result, events) == ("part-refunded-noted", [])
    assert statuses(order) == ["awaiting_payment", "confirmed"]
    assert order.refunded_at is None


def test_a_capture_given_back_before_its_completion_arrives_never_confirms_the_order(checkout):
    """Webhooks come in any order: the completion's delivery failed, and was retried after the
    news of its refund."""
    order = checkout.place()
    result, events = checkout.pay(given_back(order, capture_id="CAP-1"))
    assert (result, events) == ("refunded-noted", [])
    assert statuses(order) == ["awaiting_payment"]

    result, events = checkout.pay(capture(order, event_id="WH-1", capture_id="CAP-1"))

    assert (result, events) == ("capture-already-undone", [])  # not confirmed, nor refunded twice
    assert statuses(order) == ["awaiting_payment"] and order.payment_capture_id is None
    assert checkout.inventory.sold == []
    # the buyer may still pay
    assert checkout.pay(capture(order, event_id="WH-2", capture_id="CAP-2"))[0] == "confirmed"


def test_news_of_checkouts_own_refunds_changes_nothing(checkout):
    order = checkout.place()
    confirmed(checkout, order)
    checkout.pay(capture(order, event_id="WH-2", capture_id="CAP-2"))  # a second capture, refunded
    cancelled(checkout, order)  # the payment refunded
    checkout.uow.published.clear()

    for event_id, capture_id in (("WH-R2", "CAP-2"), ("WH-R0", "CAP-0")):
        result, events = checkout.pay(given_back(order, event_id=event_id, capture_id=capture_id))
        assert (result, events) == ("refunded-noted", [])
    assert statuses(order) == ["awaiting_payment", "confirmed", "cancelled"]
    assert order.refund_id == "REF-1"  # the order's page says refunded before the consumer has written it


@pytest.mark.parametrize("order_id", [unknown_order_id(), "not-an-order-id"])
def test_money_given_back_for_an_order_this_shop_does_not_know_is_noted(checkout, order_id):
    """An admin's refund of a payment for no order, made at the provider: a 404 would have the
    provider send it again for days."""
    notice = PaymentNotice("WH-R", "PAYMENT.CAPTURE.REFUNDED", order_id, "CAP-1", 29900, "CAD", undone_by="REF-1")
    assert checkout.pay(notice) == ("unknown-order-noted", [])


@pytest.mark.parametrize("ended", [expired, declined])
def test_a_buyer_who_gave_up_on_an_expired_or_declined_order_cancels_it_and_a_late_capture_is_refunded(checkout, ended):
    """Cancel is allowed until an order ships (DESIGN.md). An expired or declined order could be
    confirmed and charged by a late capture, and could not be cancelled (409 invalid-transition):
    the buyer had no way to say "don't"."""
    order = checkout.place()
    ended(checkout, order)
    checkout.uow.published.clear()

    cancelled(checkout, order)
    assert checkout.units_on_address(order) == 0  # given back once, when it ended, not twice
    [(event_type, data)] = checkout.uow.published
    assert (event_type, data["status"], data["version"], data["refund"]) == ("order.cancelled", "cancelled", 3, None)

    result, events = checkout.pay(capture(order))
    assert result == "refunded" and order.status == "cancelled"
    assert [event_type for event_type, _ in events] == ["payment.refund_requested"]
    assert checkout.inventory.reserved == [{"order_id": str(order.id), "quantity": 1, "renew": False,
                                            "order_version": None}]  # never held again


class ProviderAnswer:
    def __init__(self, status_code=201, body=None):
        self.status_code, self.text = status_code, "answer"
        self.body = {"refund_id": "REF-1", "amount": 29900, "currency": "CAD"} if body is None else body

    def json(self):
        return self.body


class ProviderSession:
    """The provider's HTTP session: answers every POST with `status_code`, keeping the headers."""

    def __init__(self, status_code=201, body=None):
        self.sent, self.status_code, self.body = [], status_code, body

    def post(self, url, data, headers, timeout):
        self.sent.append(headers)
        return ProviderAnswer(self.status_code, self.body)


def provider_answering(status_code=201, body=None):
    from services.checkout.payments import HttpPaymentProvider

    provider = HttpPaymentProvider("http://provider.test", "secret")
    provider._http = ProviderSession(status_code, body)
    return provider


@pytest.mark.parametrize("status, failure", [(422, "RefundRefused"), (404, "RefundRefused"), (429, "RefundFailed"),
                                             (401, "RefundFailed"), (503, "RefundFailed")])
def test_a_refund_the_provider_refuses_for_good_is_told_apart_from_one_to_retry(status, failure):
    from services.checkout import payments

    with pytest.raises(payments.RefundFailed) as raised:
        provider_answering(status).refund("CAP-1", 29900, "CAD")
    assert type(raised.value) is getattr(payments, failure)


@pytest.mark.parametrize("body, failure", [
    ({"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "CAPTURE_FULLY_REFUNDED"}]}, "RefundAlreadyMade"),
    ({"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "REFUND_AMOUNT_EXCEEDED"}]}, "RefundRefused"),
    (["CAPTURE_FULLY_REFUNDED"], "RefundRefused"),
    ({"details": "CAPTURE_FULLY_REFUNDED"}, "RefundRefused"),
])
def test_a_refund_refused_because_the_capture_was_given_back_already_is_told_apart(body, failure):
    from services.checkout import payments

    with pytest.raises(payments.RefundFailed) as raised:
        provider_answering(422, body).refund("CAP-1", 29900, "CAD")
    assert type(raised.value) is getattr(payments, failure)


def test_a_refund_asked_again_carries_the_same_request_id_so_the_provider_refunds_once():
    from services.checkout.payments import REFUND_REQUEST_ID_HEADER

    provider = provider_answering()
    provider.refund("CAP-1", 29900, "CAD")
    provider.refund("CAP-1", 29900, "CAD")
    provider.refund("CAP-2", 29900, "CAD")

    assert [headers[REFUND_REQUEST_ID_HEADER] for headers in provider._http.sent] == [
        "refund-CAP-1", "refund-CAP-1", "refund-CAP-2"]
