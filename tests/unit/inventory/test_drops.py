"""A drop's state and sale window follow from the clock and the stock alone."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from services.inventory.errors import InvalidDrop, LimitExceeded, SaleNotOpen
from services.inventory.models import CLOSED, OPEN, SCHEDULED, SOLD_OUT, Drop, Product

OPENS = datetime(2014, 10, 27, 15, 0, tzinfo=timezone.utc)
CLOSES = OPENS + timedelta(hours=1)
SECOND = timedelta(seconds=1)


def product() -> Product:
    return Product(id=uuid.uuid4(), sku="ONE-64", name="One 64GB", description="", price_amount=29900, currency="EUR")


def drop(available: int = 100, per_buyer_limit: int = 1) -> Drop:
    scheduled = Drop.schedule(product(), 100, OPENS, CLOSES, per_buyer_limit, now=OPENS - timedelta(days=1))
    scheduled.available = available
    return scheduled


def test_a_new_drop_has_all_its_stock_available():
    new = drop()
    assert new.available == new.quantity == 100


@pytest.mark.parametrize(
    "now, state",
    [
        (OPENS - SECOND, SCHEDULED),
        (OPENS, OPEN),
        (CLOSES - SECOND, OPEN),
        (CLOSES, CLOSED),
        (CLOSES + timedelta(days=30), CLOSED),
    ],
)
def test_state_follows_the_clock(now, state):
    assert drop().state_at(now) == state


def test_an_open_drop_without_stock_is_sold_out_until_it_closes():
    empty = drop(available=0)
    assert empty.state_at(OPENS + SECOND) == SOLD_OUT
    assert empty.state_at(CLOSES) == CLOSED


def test_returned_stock_reopens_a_sold_out_drop():
    assert drop(available=1).state_at(OPENS + SECOND) == OPEN


def test_one_second_before_opening_nothing_can_be_reserved():
    with pytest.raises(SaleNotOpen) as refused:
        drop().check_reservable(1, OPENS - SECOND)
    assert (refused.value.status, refused.value.slug) == (403, "not-open")


def test_reservations_are_accepted_from_the_opening_second():
    drop().check_reservable(1, OPENS)
    drop().check_reservable(1, CLOSES - SECOND)


def test_at_closing_time_nothing_can_be_reserved():
    with pytest.raises(SaleNotOpen):
        drop().check_reservable(1, CLOSES)


def test_asking_for_more_than_the_per_buyer_limit_is_refused():
    with pytest.raises(LimitExceeded) as refused:
        drop(per_buyer_limit=2).check_reservable(3, OPENS)
    assert (refused.value.status, refused.value.slug) == (409, "limit-exceeded")
    drop(per_buyer_limit=2).check_reservable(2, OPENS)


@pytest.mark.parametrize("closes_at", [OPENS, OPENS - SECOND])
def test_a_drop_must_close_after_it_opens(closes_at):
    with pytest.raises(InvalidDrop) as refused:
        Drop.schedule(product(), 10, OPENS, closes_at, 1, now=OPENS - timedelta(days=1))
    assert refused.value.status == 422
    assert "closes_at" in refused.value.to_dict()["errors"]


def test_a_drop_that_would_already_be_closed_is_refused():
    with pytest.raises(InvalidDrop):
        Drop.schedule(product(), 10, OPENS, CLOSES, 1, now=CLOSES)


def test_a_drop_may_be_scheduled_while_its_window_is_already_open():
    late = Drop.schedule(product(), 10, OPENS, CLOSES, 1, now=OPENS + SECOND)
    assert late.state_at(OPENS + SECOND) == OPEN
