"""What a buyer reads about their money, from the events checkout's own handlers publish (its
unit-test harness) rendered through notifications' templates: every sentence about a charge or a
refund is true of what happened."""
from services.checkout import errors
from services.notifications import emails
from services.checkout.handlers import CAPTURE_DENIED, PaymentNotice
from tests.unit.checkout.fakes import Checkout, capture, given_back, hold_ran_out, requested_refund


def declined_payment(order) -> PaymentNotice:
    return PaymentNotice(f"WH-D-{order.id}", CAPTURE_DENIED, str(order.id), None, order.total_amount, order.currency)


def mailed(events, event_type):
    """The email the last `event_type` among `events` becomes."""
    [data] = [data for kind, data in events if kind == event_type][-1:]
    return emails.render(event_type, emails.read(event_type, data), "ev-1")


def refund_of(checkout, events):
    """The events checkout's consumer publishes for the refund requested among `events`."""
    return checkout.deliver("payment.refund_requested", requested_refund(events))


def paid_late_without_stock(checkout):
    """An order whose payment came after its hold ran out, with no unit left to hold again: it
    expires and its payment is refunded. The order, and the payment's events."""
    order = checkout.place()
    hold_ran_out(order)
    checkout.inventory.reserve_refusal = errors.SoldOut("sold out")
    return order, checkout.pay(capture(order))[1]


def test_a_payment_the_provider_gave_back_is_not_promised_again():
    checkout = Checkout()
    order = checkout.place()
    checkout.pay(capture(order, capture_id="CAP-0"))
    _, events = checkout.pay(given_back(order, "REVERSED", capture_id="CAP-0"))
    email = mailed(events, "order.cancelled")
    for body in (email.text, email.html):
        assert "already been returned" in body and "299.00 CAD" in body
        assert "We are refunding" not in body and "Nothing was charged" not in body


def test_a_late_payment_refused_for_want_of_stock_is_told_as_refunded_not_as_never_charged():
    checkout = Checkout()
    order, events = paid_late_without_stock(checkout)
    email = mailed(events, "order.expired")
    assert "refunded" in email.subject
    for body in (email.text, email.html):
        assert "Nothing was charged" not in body and "refunding" in body and "299.00 CAD" in body


def test_cancelling_an_order_whose_late_payment_was_refunded_does_not_say_nothing_was_charged():
    checkout = Checkout()
    order, _ = paid_late_without_stock(checkout)
    _, events = checkout.cancel(order)
    email = mailed(events, "order.cancelled")
    assert "Nothing was charged" not in email.text and "refunding 299.00 CAD" in email.text


def test_an_unpaid_order_cancelled_or_expired_says_no_payment_came_and_what_a_late_one_would_get():
    """Checkout knows only of the captures that reached it: one may be on its way (the capture was
    in time at the provider, its webhook late). "Nothing was charged" was then false, and the
    buyer heard of a confirmation or a refund moments later."""
    checkout = Checkout()
    cancelled, expired = checkout.place(key="k-1"), checkout.place(key="k-2")
    _, events = checkout.cancel(cancelled)
    told = {"order.cancelled": mailed(events, "order.cancelled")}
    events = checkout.deliver("reservation.expired", {"order_id": str(expired.id)})
    told["order.expired"] = mailed(events, "order.expired")
    for event_type, email in told.items():
        for body in (email.text, email.html):
            assert "Nothing was charged" not in body and "received no payment for it" in body, event_type
    assert "the order is confirmed if the drop can hold it again" in told["order.expired"].text
    assert "nothing to refund; should one you made still reach us, it is refunded" in told["order.cancelled"].text


def test_an_order_paid_the_wrong_amount_that_then_ends_never_says_nothing_was_charged():
    """A capture of the wrong amount is refunded on its own and the order stays payable; when it
    then runs out, is cancelled or declined, its email said "Nothing was charged" while that
    refund was still on its way."""
    endings = {
        "order.expired": lambda checkout, order: checkout.deliver("reservation.expired", {"order_id": str(order.id)}),
        "order.cancelled": lambda checkout, order: checkout.cancel(order)[1],
        "order.payment_failed": lambda checkout, order: checkout.pay(declined_payment(order))[1],
    }
    for event_type, end in endings.items():
        checkout = Checkout()
        order = checkout.place()
        checkout.pay(capture(order, amount=order.total_amount - 100))
        email = mailed(end(checkout, order), event_type)
        for body in (email.text, email.html):
            assert "Nothing was charged" not in body, event_type
            assert "given back to you on its own" in body, event_type


def test_a_declined_payment_says_nothing_was_charged():
    checkout = Checkout()
    order = checkout.place()
    email = mailed(checkout.pay(declined_payment(order))[1], "order.payment_failed")
    assert "Nothing was charged" in email.text and "Nothing was charged" in email.html


def test_a_second_payment_refunded_says_the_order_stands():
    checkout = Checkout()
    order = checkout.place()
    checkout.pay(capture(order, event_id="WH-1", capture_id="CAP-1"))
    _, events = checkout.pay(capture(order, event_id="WH-2", capture_id="CAP-2"))
    email = mailed(refund_of(checkout, events), "payment.refunded")
    assert "extra payment" in email.subject and "is refunded" in email.subject
    assert "did not take" in email.text and "paid and confirmed" in email.text


def test_a_payment_of_the_wrong_amount_refunded_says_the_order_still_waits_for_its_payment():
    checkout = Checkout()
    order = checkout.place()
    _, events = checkout.pay(capture(order, amount=100))
    email = mailed(refund_of(checkout, events), "payment.refunded")
    assert "1.00 CAD" in email.text and "still waits for its payment of 299.00 CAD" in email.text


def test_the_orders_own_payment_refunded_says_so():
    checkout = Checkout()
    order = checkout.place()
    checkout.pay(capture(order))
    _, events = checkout.cancel(order)
    email = mailed(refund_of(checkout, events), "payment.refunded")
    assert email.subject == f"Your payment for order {order.id} is refunded"
    assert f"refunded 299.00 CAD for your order {order.id}" in email.text


def test_cancelling_an_ended_order_whose_late_payment_came_back_says_it_came_back_not_a_zero_refund():
    """The provider tells of every refund, checkout's own included: its news made the amount
    left 0, and the cancellation said "We are refunding 0.00 CAD"."""
    checkout = Checkout()
    order, events = paid_late_without_stock(checkout)
    refund_of(checkout, events)
    checkout.pay(given_back(order, event_id="WH-NEWS", capture_id="CAP-1", undone_by="RF-CAP-1"))
    _, events = checkout.cancel(order)
    email = mailed(events, "order.cancelled")
    assert "0.00 CAD" not in email.text and "299.00 CAD has already been returned" in email.text


def test_a_chargeback_before_checkouts_refund_is_told_as_returned_by_the_provider_not_refunded_by_us():
    checkout = Checkout()
    order = checkout.place()
    checkout.pay(capture(order, capture_id="CAP-0"))
    _, events = checkout.cancel(order)
    checkout.pay(given_back(order, "REVERSED", capture_id="CAP-0"))
    email = mailed(refund_of(checkout, events), "payment.refunded")
    assert checkout.provider.refunds == []
    assert "has been returned" in email.text and "we have refunded" not in email.text


def test_a_refund_of_an_extra_payment_on_a_cancelled_order_does_not_say_the_order_stands():
    checkout = Checkout()
    order = checkout.place()
    checkout.pay(capture(order, amount=100))  # the wrong amount: refunded
    _, events = checkout.cancel(order)
    email = mailed(refund_of(checkout, checkout.uow.published), "payment.refunded")
    assert "stands" not in email.text and "did not take" in email.text


def test_a_cancellation_after_part_came_back_at_the_provider_says_both_parts():
    checkout = Checkout()
    order = checkout.place()
    checkout.pay(capture(order, capture_id="CAP-0"))
    checkout.pay(given_back(order, capture_id="CAP-0", amount=900))
    _, events = checkout.cancel(order)
    email = mailed(events, "order.cancelled")
    assert "refunding 290.00 CAD" in email.text and "returned 9.00 CAD of it already" in email.text
    assert "9.00 CAD" in email.html
