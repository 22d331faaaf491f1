from datetime import datetime, timedelta, timezone

import pytest

from services.checkout import handlers, orders
from services.checkout.errors import InvalidTransition
from services.checkout.handlers import PlaceOrder
from services.checkout.models import Order
from services.checkout.payments import approval_url, sign, signature_is_valid
from tests.unit.checkout.fakes import HOME, Checkout

SECRET = "test-secret"


def new_order() -> Order:
    order = Order(status=None, history=[], hold_expires_at=datetime.now(timezone.utc))
    orders.move_new(order, "placed")
    return order


@pytest.mark.parametrize(
    "path",
    [["confirmed", "shipped"], ["confirmed", "cancelled"], ["expired"], ["payment_failed"], ["cancelled"]],
)
def test_allowed_paths_are_recorded_in_the_history(path):
    order = new_order()
    for status in path:
        orders.move(order, status, f"to {status}")
    assert [step.to_status for step in order.history] == ["awaiting_payment", *path]
    assert order.status == path[-1]


@pytest.mark.parametrize(
    "path", [["shipped"], ["confirmed", "expired"], ["confirmed", "shipped", "cancelled"], ["cancelled", "confirmed"]]
)
def test_other_paths_are_refused_and_leave_the_order_alone(path):
    order = new_order()
    with pytest.raises(InvalidTransition):
        for status in path:
            orders.move(order, status, "try")
    assert order.status != path[-1]


def test_one_key_means_one_order_id_and_one_fingerprint_per_body():
    address = {"name": "A", "country_code": "CA"}
    first = PlaceOrder("buyer", "b@x.io", "key-1", "drop", 1, address)
    again = PlaceOrder("buyer", "b@x.io", "key-1", "drop", 1, dict(reversed(list(address.items()))))
    other_body = PlaceOrder("buyer", "b@x.io", "key-1", "drop", 2, address)
    other_buyer = PlaceOrder("buyer-2", "c@x.io", "key-1", "drop", 1, address)
    assert first.order_id == again.order_id and first.fingerprint == again.fingerprint
    assert first.fingerprint != other_body.fingerprint
    assert first.order_id != other_buyer.order_id


def test_webhook_signatures_must_match_the_body_and_be_fresh():
    body = b'{"id": "WH-1"}'
    header = sign(SECRET, body, timestamp=1_000_000)
    assert signature_is_valid(SECRET, body, header, 300, now=1_000_100)
    assert not signature_is_valid(SECRET, body, header, 300, now=1_000_301)
    assert not signature_is_valid(SECRET, body + b" ", header, 300, now=1_000_100)
    assert not signature_is_valid("other", body, header, 300, now=1_000_100)
    assert not signature_is_valid(SECRET, body, "t=abc,v1=00", 300, now=1_000_100)
    assert not signature_is_valid(SECRET, body, "", 300)
    # a header of any bytes (read as Latin-1): refused, not a TypeError
    assert not signature_is_valid(SECRET, body, "t=1000000,v1=\xe9", 300, now=1_000_100)
    # a timestamp of hundreds of digits: refused, not an OverflowError (a 500)
    assert not signature_is_valid(SECRET, body, "t=1" + "0" * 400 + ",v1=ab", 300, now=1_000_100)
    assert not signature_is_valid(SECRET, body, "t=-1000000,v1=ab", 300, now=1_000_100)


def test_the_approval_link_signs_the_amount():
    link = approval_url("http://pay.local/", SECRET, "order-1", 29900, "CAD")
    assert link.startswith("http://pay.local/pay/order-1?amount=29900&currency=CAD&sig=")
    assert link != approval_url("http://pay.local/", SECRET, "order-1", 1, "CAD")


def test_a_buyer_pages_through_their_own_orders_newest_first():
    checkout = Checkout()
    placed = [checkout.place(key=f"key-{n}", address=dict(HOME, street_address=f"{n} Sussex Drive")) for n in range(3)]
    for age, order in enumerate(reversed(placed)):
        order.created_at -= timedelta(minutes=age)
    checkout.place(key="theirs", buyer_id="buyer-2", address=dict(HOME, street_address="9 Elgin Street"))
    first, _ = checkout.run(lambda uow: handlers.orders_page(uow, "buyer-1", limit=2, offset=0))
    last, _ = checkout.run(lambda uow: handlers.orders_page(uow, "buyer-1", limit=2, offset=2))
    assert first == {"orders": [placed[2], placed[1]], "next_offset": 2}
    assert last == {"orders": [placed[0]], "next_offset": None}


def test_one_door_spelled_five_ways_is_one_address_for_the_per_address_limit():
    from services.checkout.handlers import address_key_of

    door = {"country_code": "US", "postal_code": "94043", "street_address": "1600 Amphitheatre Pkwy"}
    spellings = [dict(door, street_address="1600 Amphitheatre Pkwy."), dict(door, street_address="1600, Amphitheatre Pkwy"),
                 dict(door, postal_code="94043-1351"), dict(door, street_address="１６００ Amphitheatre Pkwy"),
                 dict(door, street_address="1600 Amphitheatre Pkwy\u200b"), dict(door, street_address="1600  AMPHITHEATRE pkwy")]
    assert {address_key_of(spelling) for spelling in spellings} == {address_key_of(door)}
    others = [dict(door, street_address="1601 Amphitheatre Pkwy"), dict(door, postal_code="94044"),
              dict(door, country_code="CA"), dict(door, street_address="1600 Amphitheatre Pkwy\nApt 2"),
              {"country_code": "CA", "postal_code": "K1A 0B1", "street_address": "24 Sussex Drive"}]
    assert len({address_key_of(address) for address in [door, *others]}) == 1 + len(others)
