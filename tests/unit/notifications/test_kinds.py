"""Every event notifications subscribes to becomes an email with a text and an HTML part."""
import pytest

from shared.messaging import topology
from services.notifications import emails
from tests.unit.notifications.fakes import order

ORDER_ID = order()["order_id"]
PLACED = order(status="awaiting_payment", hold_expires_at="2014-10-27T16:00:00+00:00",
               payment_url="http://127.0.0.1:8010/pay/o-1?amount=134999&sig=abc")
CANCELLED = order(status="cancelled", cancelled_at="2014-10-28T09:30:00+00:00", reason="changed my mind",
                  refund={"amount": 134999, "currency": "EUR"})
SHIPPED = order(status="shipped", shipped_at="2014-11-03T08:00:00+00:00")
REFUNDED = order(refund={"amount": 134999, "currency": "EUR"}, reason="paid after the hold expired; sold out")
ACCOUNT = {"account_id": "a-1", "email": "sam@example.com", "name": "Sam"}
INVITE = {"invite_id": "i-1", "code": "DROP-7Q2X", "email": "sam@example.com", "tier": "early", "expires_at": None}
ORDER_EVENTS = {
    "order.placed": PLACED,
    "order.confirmed": order(),
    "order.cancelled": CANCELLED,
    "order.expired": order(status="expired"),
    "order.payment_failed": order(status="payment_failed"),
    "order.shipped": SHIPPED,
    "payment.refunded": REFUNDED,
}


def render(event_type, data, event_id="ev-1"):
    return emails.render(event_type, emails.read(event_type, data), event_id)


def test_every_subscribed_event_has_an_email():
    assert set(topology.SUBSCRIPTIONS["notifications"]) == set(emails.KINDS)


@pytest.mark.parametrize("event_type", sorted(ORDER_EVENTS))
def test_order_emails_carry_the_order_items_total_address_and_status_link(event_type):
    email = render(event_type, ORDER_EVENTS[event_type])
    assert email.to == "emilie@example.ca" and ORDER_ID in email.subject
    assert email.event_type == event_type and email.order_id == ORDER_ID
    for body in (email.text, email.html):
        assert ORDER_ID in body
        assert "One phone, 64 GB" in body and "1,349.99 EUR" in body
        assert "Ottawa ON K1A 0B1" in body and "Canada (CA)" in body
        assert order()["status_url"] in body


def test_the_payment_email_says_how_to_pay_and_when_the_hold_expires():
    email = render("order.placed", PLACED)
    assert "2014-10-27 16:00 UTC" in email.subject
    assert "http://127.0.0.1:8010/pay/o-1?amount=134999&sig=abc" in email.text
    assert 'href="http://127.0.0.1:8010/pay/o-1?amount=134999&amp;sig=abc"' in email.html
    assert "until 2014-10-27 16:00 UTC" in email.text


def test_a_cancellation_says_whether_money_comes_back():
    refunded = render("order.cancelled", CANCELLED)
    assert "refunding 1,349.99 EUR" in refunded.text and "changed my mind" in refunded.text
    unpaid = render("order.cancelled", order(refund=None, reason=None, charged=False))
    assert "nothing to refund" in unpaid.text
    # a producer that does not say whether anything was charged is not taken to say nothing was
    unknown = render("order.cancelled", order(refund=None, reason=None))
    assert "charged" not in unknown.text and "refund" not in unknown.text.lower()


def test_a_refund_names_its_amount_and_reason():
    email = render("payment.refunded", REFUNDED)
    assert "refunded 1,349.99 EUR" in email.text and "sold out" in email.html


def test_a_shipping_email_gives_the_date():
    assert "shipped on 2014-11-03 08:00 UTC" in render("order.shipped", SHIPPED).text


def test_an_expiry_from_an_early_producer_with_only_ids_is_still_mailed():
    email = render("order.expired", {"order_id": ORDER_ID, "drop_id": "d", "buyer_id": "b", "quantity": 1,
                                     "buyer_email": "emilie@example.ca"})
    assert ORDER_ID in email.text and "Hello there" in email.text and "Shipping address" not in email.text


def test_welcome_and_invitation_emails():
    welcome = render("account.registered", ACCOUNT)
    assert (welcome.to, welcome.subject) == ("sam@example.com", "Welcome to Floodgate")
    assert "Hello Sam," in welcome.text and welcome.order_id is None
    nameless = render("account.registered", {"account_id": "a-2", "email": "kim@example.com"})
    assert "Hello there," in nameless.text
    invite = render("invite.issued", INVITE)
    assert invite.to == "sam@example.com" and "DROP-7Q2X" in invite.text and "DROP-7Q2X" in invite.html
    assert "valid until" not in invite.text
    dated = render("invite.issued", dict(INVITE, expires_at="2014-10-27T15:00:00+00:00"))
    assert "valid until 2014-10-27 15:00 UTC" in dated.text


def test_extra_fields_are_ignored():
    assert render("account.registered", dict(ACCOUNT, plan="gold", nested={"x": 1})).to == "sam@example.com"


@pytest.mark.parametrize(
    "event_type, data",
    [
        ("order.placed", order()),  # no hold expiry nor payment link
        ("order.shipped", order(status_url=None)),
        ("payment.refunded", order()),  # no refund
        ("account.registered", {"account_id": "a-1"}),
        ("invite.issued", dict(INVITE, email="nobody")),
        ("order.cancelled", {"order_id": ORDER_ID}),
        ("drop.opened", {"drop_id": "d"}),
    ],
)
def test_an_event_missing_what_its_email_needs_is_refused(event_type, data):
    with pytest.raises(emails.IncompleteEvent):
        emails.read(event_type, data)


@pytest.mark.parametrize(
    "address, lines",
    [
        ({"name": "Max", "street_address": "Invalidenstr. 1", "city": "Berlin", "postal_code": "10115", "country_code": "DE"},
         ["Max", "Invalidenstr. 1", "10115 Berlin", "Germany (DE)"]),
        ({"name": "Pat", "street_address": "10 Downing St", "city": "London", "postal_code": "SW1A 2AA", "country_code": "GB"},
         ["Pat", "10 Downing St", "London", "SW1A 2AA", "United Kingdom (GB)"]),
        ({"name": "Gus", "street_address": "1600 Amphitheatre Pkwy", "city": "Mountain View", "country_area": "CA",
          "postal_code": "94043", "country_code": "US"},
         ["Gus", "1600 Amphitheatre Pkwy", "Mountain View, CA 94043", "United States (US)"]),
        ({"name": "Sam", "street_address": "1 Main St", "city": "Hong Kong", "country_code": "HK"},
         ["Sam", "1 Main St", "Hong Kong", "Hong Kong (HK)"]),
    ],
)
def test_addresses_follow_their_country_layout_and_keep_what_the_buyer_wrote(address, lines):
    assert emails.address_lines(address) == lines


def test_an_address_in_its_own_script_keeps_its_country_order():
    address = {"name": "山田太郎", "street_address": "千代田1-1", "city": "千代田区", "country_area": "東京都",
               "postal_code": "100-0001", "country_code": "JP"}
    assert emails.address_lines(address) == ["〒100-0001", "東京都", "千代田区千代田1-1", "山田太郎", "Japan (JP)"]
