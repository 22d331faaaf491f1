"""A drop's state and sale window follow from the clock and the stock alone."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from services.inventory.errors import (CountryNotAllowed, InvalidDrop, InviteOnly, LimitExceeded, NotInvitePhase,
                                      SaleNotOpen)
from services.inventory.handlers.drops import DropView
from services.inventory.models import CLOSED, OPEN, SCHEDULED, SOLD_OUT, Drop, Product, spread

OPENS = datetime(2014, 10, 27, 15, 0, tzinfo=timezone.utc)
CLOSES = OPENS + timedelta(hours=1)
SECOND = timedelta(seconds=1)


def product() -> Product:
    return Product(id=uuid.uuid4(), sku="ONE-64", name="One 64GB", description="", price_amount=29900, currency="EUR")


def drop(per_buyer_limit: int = 1, **options) -> Drop:
    return Drop.schedule(product(), 100, OPENS, CLOSES, per_buyer_limit, now=OPENS - timedelta(days=1), **options)


def test_a_new_drop_has_all_its_stock_available_spread_over_its_shards():
    new = drop(stock_shards=16)
    shards = new.initial_stock()
    assert [s.shard for s in shards] == list(range(16))
    assert sum(s.available for s in shards) == new.quantity == 100
    assert max(s.available for s in shards) - min(s.available for s in shards) <= 1


def test_a_small_drop_gets_no_empty_shards():
    small = Drop.schedule(product(), 3, OPENS, CLOSES, 1, now=OPENS - timedelta(days=1), stock_shards=16)
    assert [s.available for s in small.initial_stock()] == [1, 1, 1]


@pytest.mark.parametrize("units, rows", [(0, 1), (1, 1), (7, 3), (100, 16), (16, 16), (5, 64)])
def test_spread_keeps_every_unit_and_is_even(units, rows):
    parts = spread(units, rows)
    assert len(parts) == rows and sum(parts) == units and max(parts) - min(parts) <= 1


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
    assert drop().state_at(now, remaining=100) == state


def test_an_open_drop_without_stock_is_sold_out_until_it_closes():
    assert drop().state_at(OPENS + SECOND, remaining=0) == SOLD_OUT
    assert drop().state_at(CLOSES, remaining=0) == CLOSED


def test_returned_stock_reopens_a_sold_out_drop():
    assert drop().state_at(OPENS + SECOND, remaining=1) == OPEN


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
    assert late.state_at(OPENS + SECOND, remaining=10) == OPEN


INVITE_ENDS = OPENS + timedelta(minutes=10)


def test_during_the_invite_only_phase_only_the_invited_tier_may_reserve():
    invite_only = drop(invite_only_until=INVITE_ENDS, invite_tier="early")
    for tier in (None, "other", "EARLY"):
        with pytest.raises(InviteOnly) as refused:
            invite_only.check_reservable(1, OPENS, buyer_tier=tier)
        assert (refused.value.status, refused.value.slug) == (403, "invite-only")
    invite_only.check_reservable(1, OPENS, buyer_tier="early")
    invite_only.check_reservable(1, INVITE_ENDS - SECOND, buyer_tier="early")


def test_after_the_invite_only_phase_everyone_may_reserve():
    drop(invite_only_until=INVITE_ENDS, invite_tier="early").check_reservable(1, INVITE_ENDS, buyer_tier=None)


def test_a_hold_asked_for_the_invite_only_phase_only_is_refused_outside_it():
    """Checkout's order without a line pass on a drop with a line: the invited tier may order so
    during the phase, and nobody may afterwards (the line's buyers have the units)."""
    invite_only = drop(invite_only_until=INVITE_ENDS, invite_tier="early")
    invite_only.check_reservable(1, OPENS, buyer_tier="early", invited_only=True)
    for refused_at in (INVITE_ENDS, INVITE_ENDS + SECOND):
        with pytest.raises(NotInvitePhase) as refused:
            invite_only.check_reservable(1, refused_at, buyer_tier="early", invited_only=True)
        assert (refused.value.status, refused.value.slug) == (403, "not-invite-phase")
    with pytest.raises(NotInvitePhase):
        drop().check_reservable(1, OPENS, buyer_tier="early", invited_only=True)  # a drop without the phase
    with pytest.raises(InviteOnly):  # in the phase, the tier is checked as ever
        invite_only.check_reservable(1, OPENS, buyer_tier="other", invited_only=True)
    with pytest.raises(NotInvitePhase):  # a renewal of an invited order's hold given back, too
        invite_only.check_reservable(1, INVITE_ENDS, buyer_tier="early", renewal=True, invited_only=True)


def test_before_opening_even_invited_buyers_hear_not_open():
    with pytest.raises(SaleNotOpen):
        drop(invite_only_until=INVITE_ENDS, invite_tier="early").check_reservable(1, OPENS - SECOND, buyer_tier="early")


@pytest.mark.parametrize("until, tier, field", [
    (INVITE_ENDS, None, "invite_tier"),
    (None, "early", "invite_only_until"),
    (OPENS, "early", "invite_only_until"),
])
def test_an_invite_only_phase_needs_a_tier_and_an_end_after_opening(until, tier, field):
    with pytest.raises(InvalidDrop) as refused:
        drop(invite_only_until=until, invite_tier=tier)
    assert field in refused.value.to_dict()["errors"]


def test_a_drop_limited_to_some_countries_refuses_others_and_requests_without_one():
    limited = drop(shipping_countries=["CA", "US"])
    limited.check_reservable(1, OPENS, shipping_country="CA")
    for country in ("FR", None):
        with pytest.raises(CountryNotAllowed) as refused:
            limited.check_reservable(1, OPENS, shipping_country=country)
        assert (refused.value.status, refused.value.slug) == (422, "country-not-allowed")
        assert refused.value.to_dict()["shipping_countries"] == ["CA", "US"]


def test_a_drop_without_countries_ships_everywhere():
    drop().check_reservable(1, OPENS, shipping_country="FR")
    drop().check_reservable(1, OPENS, shipping_country=None)


def test_a_window_may_be_extended_shortened_or_reopened_but_not_emptied_or_put_in_the_past():
    running = drop()
    running.check_new_window(OPENS + SECOND, closes_at=CLOSES + timedelta(hours=2))
    running.check_new_window(OPENS + SECOND, closes_at=OPENS + SECOND)
    running.check_new_window(CLOSES + SECOND, closes_at=CLOSES + timedelta(hours=1))
    with pytest.raises(InvalidDrop):
        running.check_new_window(OPENS - SECOND, closes_at=OPENS)
    with pytest.raises(InvalidDrop):
        running.check_new_window(OPENS + 2 * SECOND, closes_at=OPENS + SECOND)


HOUR = timedelta(hours=1)


def test_a_drop_not_yet_open_may_be_postponed_or_brought_forward_with_its_window_whole():
    scheduled = drop()
    scheduled.check_new_window(OPENS - HOUR, opens_at=OPENS + timedelta(minutes=30))  # postponed, within its close
    scheduled.check_new_window(OPENS - HOUR, opens_at=OPENS - timedelta(minutes=30))  # brought forward
    scheduled.check_new_window(OPENS - HOUR, opens_at=CLOSES + HOUR, closes_at=CLOSES + 2 * HOUR)  # the close with it


@pytest.mark.parametrize("now, change, field, says", [
    (OPENS, {"opens_at": OPENS + HOUR}, "opens_at", "has opened"),
    (OPENS - 4 * SECOND, {"opens_at": OPENS + HOUR}, "opens_at", "opens within seconds"),
    (OPENS - HOUR, {"opens_at": OPENS - 2 * HOUR}, "opens_at", "already passed"),
    (OPENS - HOUR, {"opens_at": CLOSES}, "closes_at", "move closes_at too"),
    (OPENS - HOUR, {"opens_at": OPENS + HOUR, "closes_at": OPENS + HOUR}, "closes_at", "close after it opens"),
])
def test_an_opening_that_moved_would_break_the_window_is_refused_naming_what_to_move(now, change, field, says):
    with pytest.raises(InvalidDrop) as refused:
        drop().check_new_window(now, **change)
    assert field in refused.value.to_dict()["errors"] and says in refused.value.to_dict()["errors"][field][0]


def test_an_invite_only_phase_moves_with_its_drop_and_never_ends_before_the_opening():
    minutes = timedelta(minutes=1)
    members_first = drop(invite_only_until=OPENS + 30 * minutes, invite_tier="early")
    with pytest.raises(InvalidDrop) as refused:
        members_first.check_new_window(OPENS - HOUR, opens_at=OPENS + 45 * minutes)
    assert "move invite_only_until too" in refused.value.to_dict()["errors"]["invite_only_until"][0]
    members_first.check_new_window(OPENS - HOUR, opens_at=OPENS + 45 * minutes, invite_only_until=OPENS + 50 * minutes)
    members_first.check_new_window(OPENS + SECOND, invite_only_until=OPENS + 2 * HOUR)  # lengthened while it lasts
    for now, until in [(OPENS + HOUR, OPENS + 3 * HOUR), (OPENS - HOUR, OPENS)]:  # ended; before the opening
        with pytest.raises(InvalidDrop):
            members_first.check_new_window(now, invite_only_until=until)
    with pytest.raises(InvalidDrop):
        drop().check_new_window(OPENS - HOUR, invite_only_until=OPENS + HOUR)  # no phase to move


@pytest.mark.parametrize(
    "now, change",
    [(OPENS - SECOND, OPENS), (OPENS, CLOSES), (CLOSES - SECOND, CLOSES), (CLOSES, None)],
)
def test_the_clock_next_changes_a_drops_state_at_its_opening_then_its_closing(now, change):
    assert drop().next_state_change(now) == change


def test_a_drop_as_shown_says_how_long_until_the_clock_changes_its_state():
    assert DropView.of(drop(), OPENS - 2 * SECOND, remaining=100).changes_in == 2.0
    assert DropView.of(drop(), CLOSES, remaining=100).changes_in is None
