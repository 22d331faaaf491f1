"""The waiting room's rules on in-memory fakes: the verifiable order, joining, admission bounded by
stock and rate, what a poll says, and passes."""
from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import timedelta

import jwt
import pytest
from marshmallow import ValidationError

from services.checkout import admitter, errors, line
from services.checkout.inventory_client import DropStock
from services.checkout.schemas import LineRequestSchema, LineSchema
from shared.values import utc_now
from tests.unit.checkout.fakes import PASS_SECRET, FakeLines, FakeUnitOfWork, pass_for

DROP = uuid.UUID("5f0d7c7e-8a43-4b0b-a1a4-0c8c1d2e3f40")
SECRET = PASS_SECRET


class StockOf:
    """Inventory as the admitter sees it: the drop's remaining units, the buyers holding one, the
    drop's close (an hour away unless said) and opening (past unless said), and the end of its
    invite-only phase (none unless said)."""

    def __init__(self, units: int, holding: frozenset = frozenset(), closes_at=None, opens_at=None,
                 invite_only_until=None):
        self.units, self.holding = units, holding
        self.closes_at = closes_at or utc_now() + timedelta(hours=1)
        self.opens_at = opens_at or utc_now() - timedelta(minutes=1)
        self.invite_only_until = invite_only_until

    def holders(self, drop_id: str, buyer_ids: list[str]) -> DropStock:
        return DropStock(self.units, len(set(buyer_ids) & self.holding), self.closes_at, self.opens_at,
                         self.invite_only_until)


class Clock:
    """The clocks of the admitter and of its database, moved only by the test: a turn lasts
    exactly as long as it says."""

    def __init__(self):
        self.now = utc_now()

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fixed = Clock()
    monkeypatch.setattr(admitter, "utc_now", fixed)
    monkeypatch.setattr(FakeLines, "time", staticmethod(fixed))  # the database's clock, which paces lines
    return fixed


def join(drop_id: uuid.UUID, buyer_id: str, account_created_at, uow):
    """One join, as the status edge makes a batch of one: (ticket, new), or raises the problem."""
    [answer] = line.join_many([line.JoinRequest(drop_id, buyer_id, account_created_at)], uow)
    if isinstance(answer, errors.Problem):
        raise answer
    return answer


def a_line(uow, opens_in: float = 60, **settings) -> line.Line:
    now = utc_now()
    wanted = line.LineSettings(opens_at=now + timedelta(seconds=opens_in), **settings)
    made = line.put_line(DROP, wanted, uow, now)
    uow.commit()
    return made


def a_line_joined_by(uow, buyers: int, **settings) -> line.Line:
    made = a_line(uow, **settings)
    for n in range(buyers):
        join(DROP, f"buyer-{n}", None, uow)
    uow.commit()
    return made


def test_the_pre_queue_order_is_the_documented_hmac_anyone_can_recompute():
    seed = bytes(range(32))
    tickets = [uuid.UUID(int=n) for n in range(1, 6)]
    by_hand = sorted(tickets, key=lambda t: hmac.new(seed, str(t).encode(), hashlib.sha256).hexdigest())
    assert line.pre_queue_order(seed, tickets) == by_hand
    assert line.pre_queue_order(seed, [str(t).upper() for t in tickets]) == [str(t).upper() for t in by_hand]
    assert line.commitment_of(seed) == hashlib.sha256(seed).hexdigest()


def test_a_new_line_commits_to_its_seed_and_keeps_it_secret_until_the_opening():
    uow = FakeUnitOfWork()
    made = a_line(uow)
    assert made.state == line.PRE_QUEUE and made.opened_at is None
    assert made.commitment == hashlib.sha256(made.seed).hexdigest()
    seed = made.seed
    a_line(uow, admission_rate=5)  # changing its settings keeps the seed
    assert uow.lines.get(DROP).seed == seed and uow.lines.get(DROP).admission_rate == 5


def test_one_ticket_per_account_and_positions_only_from_the_opening():
    uow = FakeUnitOfWork()
    a_line(uow)
    first, new = join(DROP, "ann", None, uow)
    uow.commit()
    again, new_again = join(DROP, "ann", None, uow)
    assert (new, new_again) == (True, False) and again.id == first.id
    assert first.position is None and line.ticket_view(first, first, utc_now(), SECRET)["state"] == line.PRE_QUEUE


def test_opening_orders_the_pre_queue_by_the_seed_then_later_arrivals_by_arrival():
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 6, opens_in=-1)
    early = uow.lines.tickets(DROP)
    admitter.turn(uow, StockOf(0))  # opens it (no stock: admits nobody)
    assert made.state == line.OPEN and made.pre_queue_size == 6 and made.opened_at is not None
    expected = line.pre_queue_order(made.seed, [t.id for t in early])
    assert sorted(early, key=lambda t: t.position) == sorted(early, key=lambda t: expected.index(t.id))
    assert sorted(t.position for t in early) == list(range(1, 7))
    late = join(DROP, "late", None, uow)[0]
    join(DROP, "later", None, uow)
    uow.commit()
    # until the admitter's next turn places them, they wait without a position
    made.remaining_units = 5
    assert late.position is None and line.ticket_view(late, made, utc_now(), SECRET)["state"] == line.WAITING
    admitter.turn(uow, StockOf(0))
    assert [uow.lines.ticket_of(DROP, b).position for b in ("late", "later")] == [7, 8]
    assert made.placed == 8 and made.joined == 8 and made.pre_queue_size == 6


def test_a_big_pre_queue_is_placed_over_the_turns_after_a_short_opening_and_later_arrivals_after_it(clock):
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 10, opens_in=-1, admission_rate=100)
    early = [t.id for t in uow.lines.tickets(DROP)]
    pre_queues = admitter.PreQueues(per_turn=4)
    admitter.turn(uow, StockOf(100), pre_queues=pre_queues)  # opens it, then writes a turn's worth
    assert (made.state, made.pre_queue_size, made.placed) == (line.OPEN, 10, 4) and line.placing(made)
    assert made.seed and made.opened_at is not None and made.admitted_through == 4  # placed positions only
    unplaced = next(t for t in uow.lines.tickets(DROP) if t.position is None)
    view = line.ticket_view(uow.lines.ticket_and_line(DROP, unplaced.buyer_id), made, utc_now(), SECRET)
    assert (view["state"], view["position"], view["ahead"], view["poll_after_seconds"]) == (
        line.WAITING, None, None, line.WAITING_POLL_SECONDS)
    for n in range(6):  # joins go on while the pre-queue is placed
        join(DROP, f"late-{n}", None, uow)
    uow.commit()
    placed_by_turn = []
    for _ in range(3):
        clock.advance(admitter.MIN_TURN_SECONDS)
        admitter.turn(uow, StockOf(100), pre_queues=pre_queues)
        placed_by_turn.append(made.placed)
        assert made.admitted_through <= made.placed and made.joined == 16
    # 4 a turn: the pre-queue's last 2, then in the same turn the first 4 later arrivals, then 2
    assert placed_by_turn == [8, 14, 16]
    assert [uow.lines.ticket_of(DROP, f"late-{n}").position for n in range(6)] == list(range(11, 17))
    by_position = sorted((t for t in uow.lines.tickets(DROP) if t.id in early), key=lambda t: t.position)
    assert [t.id for t in by_position] == line.pre_queue_order(made.seed, early)
    assert [t.position for t in by_position] == list(range(1, 11))


def test_a_line_closed_while_its_pre_queue_is_placed_gets_the_rest_of_its_positions_and_admits_nobody(clock):
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 9, opens_in=-1, admission_rate=100)
    early = [t.id for t in uow.lines.tickets(DROP)]
    pre_queues = admitter.PreQueues(per_turn=4)
    admitter.turn(uow, StockOf(100), pre_queues=pre_queues)
    assert made.admitted_through == 4
    line.change_line(DROP, uow, utc_now(), state=line.CLOSED)
    uow.commit()
    for _ in range(2):
        clock.advance(admitter.MIN_TURN_SECONDS)
        admitter.turn(uow, StockOf(100), pre_queues=pre_queues)
    assert (made.state, made.placed, made.admitted_through) == (line.CLOSED, 9, 4)  # nobody admitted since
    by_position = sorted(uow.lines.tickets(DROP), key=lambda t: t.position)
    assert [t.id for t in by_position] == line.pre_queue_order(made.seed, early)


def test_another_admitter_carries_on_placing_a_pre_queue_where_the_last_turn_stopped(clock):
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 7, opens_in=-1)
    early = [t.id for t in uow.lines.tickets(DROP)]
    admitter.turn(uow, StockOf(0), pre_queues=admitter.PreQueues(per_turn=3))
    for replica in range(3):  # each turn by a replica that never saw this line before
        clock.advance(admitter.MIN_TURN_SECONDS)
        admitter.turn(uow, StockOf(0), pre_queues=admitter.PreQueues(per_turn=3))
    by_position = sorted(uow.lines.tickets(DROP), key=lambda t: t.position)
    assert [t.id for t in by_position] == line.pre_queue_order(made.seed, early)
    assert made.placed == 7 and not line.placing(made)


def turn_until_within_the_read_ahead(uow, clock, pre_queues, made) -> None:
    """Turn the admitter before the line comes within READ_AHEAD_SECONDS of its opening (it notes
    the arrival numbers drawn), then move on to a moment it has."""
    admitter.turn(uow, StockOf(0), pre_queues=pre_queues)
    assert uow.lines.read_ahead == 0
    clock.advance((made.opens_at - clock.now).total_seconds() - admitter.READ_AHEAD_SECONDS + 1)


def test_a_pre_queue_is_read_ahead_in_the_turns_before_its_opening_and_only_its_last_joins_read_at_it(clock):
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 6, opens_in=admitter.READ_AHEAD_SECONDS + 10)
    pre_queues = admitter.PreQueues(per_turn=100, read_ahead_per_turn=4)
    turn_until_within_the_read_ahead(uow, clock, pre_queues, made)
    read_by_turn = []
    for turn in range(4):
        before = uow.lines.read_ahead
        admitter.turn(uow, StockOf(0), pre_queues=pre_queues)
        read_by_turn.append(uow.lines.read_ahead - before)
        if turn == 0:  # joins go on before the opening
            for n in range(6, 9):
                join(DROP, f"buyer-{n}", None, uow)
            uow.commit()
        clock.advance(admitter.MIN_TURN_SECONDS)
    assert max(read_by_turn) <= 4 and made.state == line.PRE_QUEUE
    for n in range(9, 11):  # after the last turn before the opening
        join(DROP, f"buyer-{n}", None, uow)
    uow.commit()
    early = [t.id for t in uow.lines.tickets(DROP)]
    clock.advance(admitter.READ_AHEAD_SECONDS)
    before = uow.lines.read_ahead
    admitter.turn(uow, StockOf(0), pre_queues=pre_queues)  # opens it: the order from what was read, and the rest
    assert uow.lines.pre_queue_reads == 0 and uow.lines.read_ahead - before <= 5  # the joins since the settled ones
    assert made.pre_queue_size == 11 and made.placed == 11
    by_position = sorted(uow.lines.tickets(DROP), key=lambda t: t.position)
    assert [t.id for t in by_position] == line.pre_queue_order(made.seed, early)


def four_joined_within_the_read_ahead(uow, clock):
    """A line about to open (the admitter has noted the arrival numbers drawn before), four
    joined: the line, and the admitter's PreQueues."""
    made = a_line(uow, opens_in=admitter.READ_AHEAD_SECONDS + 10)
    pre_queues = admitter.PreQueues(per_turn=100)
    turn_until_within_the_read_ahead(uow, clock, pre_queues, made)
    for n in range(4):
        join(DROP, f"buyer-{n}", None, uow)
    uow.commit()
    return made, pre_queues


def assert_placed_in_the_seeds_order(uow, made) -> None:
    by_position = sorted(uow.lines.tickets(DROP), key=lambda t: t.position)
    assert [t.id for t in by_position] == line.pre_queue_order(made.seed, [t.id for t in by_position])


def in_flight_join(uow, buyer_id: str, arrival: int):
    """A join whose arrival number was drawn as `arrival` and which commits only now."""
    join(DROP, buyer_id, None, uow)
    uow.lines.ticket_of(DROP, buyer_id).arrival = arrival
    uow.commit()


def test_a_join_committed_after_a_read_ahead_passed_its_arrival_number_is_read_at_the_next_turn(clock):
    # Joins draw their arrival numbers from a sequence and commit out of order: one drawn less
    # than REREAD_SECONDS ago may still be in flight when a read ahead passes its number.
    uow = FakeUnitOfWork()
    made, pre_queues = four_joined_within_the_read_ahead(uow, clock)
    admitter.turn(uow, StockOf(0), pre_queues=pre_queues)
    in_flight_join(uow, "in-flight", arrival=2)
    clock.advance(admitter.MIN_TURN_SECONDS)
    admitter.turn(uow, StockOf(0), pre_queues=pre_queues)
    clock.advance(admitter.READ_AHEAD_SECONDS)
    admitter.turn(uow, StockOf(0), pre_queues=pre_queues)
    assert uow.lines.pre_queue_reads == 0
    assert_placed_in_the_seeds_order(uow, made)
    assert made.placed == made.pre_queue_size == 5


def test_a_join_committed_longer_after_its_arrival_number_than_the_reread_makes_the_opening_read_the_whole_pre_queue(
        clock):
    uow = FakeUnitOfWork()
    made, pre_queues = four_joined_within_the_read_ahead(uow, clock)
    for _ in range(3):  # until every arrival number up to 4 is taken as committed
        admitter.turn(uow, StockOf(0), pre_queues=pre_queues)
        clock.advance(admitter.REREAD_SECONDS)
    in_flight_join(uow, "slow", arrival=2)  # drawn over REREAD_SECONDS ago: missed by the reads ahead
    clock.advance(admitter.READ_AHEAD_SECONDS)
    admitter.turn(uow, StockOf(0), pre_queues=pre_queues)
    assert uow.lines.pre_queue_reads == 1  # four read ahead, five at the opening: the whole pre-queue read
    assert_placed_in_the_seeds_order(uow, made)
    assert uow.lines.ticket_of(DROP, "slow").position is not None and made.placed == made.pre_queue_size == 5


def test_a_line_opening_later_than_the_read_ahead_is_not_read_yet(clock):
    uow = FakeUnitOfWork()
    a_line_joined_by(uow, 3, opens_in=admitter.READ_AHEAD_SECONDS * 10)
    admitter.turn(uow, StockOf(0), pre_queues=admitter.PreQueues())
    assert uow.lines.read_ahead == 0


def test_a_pre_queue_no_bigger_than_a_turns_worth_is_placed_at_its_opening():
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 4, opens_in=-1, admission_rate=100)
    admitter.turn(uow, StockOf(2), pre_queues=admitter.PreQueues(per_turn=4))
    assert (made.placed, made.admitted_through) == (4, 2) and not line.placing(made)


def test_admission_never_puts_more_passes_in_play_than_stock_times_factor():
    assert line.admissions_allowed(remaining_units=10, factor=1.5, active_passes=4, budget_by_rate=100) == 11
    assert line.admissions_allowed(remaining_units=10, factor=1.0, active_passes=10, budget_by_rate=100) == 0
    assert line.admissions_allowed(remaining_units=10, factor=1.0, active_passes=0, budget_by_rate=2.7) == 2
    assert line.admissions_allowed(remaining_units=0, factor=3.0, active_passes=0, budget_by_rate=100) == 0
    # a factor under 1 still offers the last units, one pass at a time
    assert line.admissions_allowed(remaining_units=9, factor=0.1, active_passes=0, budget_by_rate=100) == 1
    assert line.admissions_allowed(remaining_units=1, factor=0.5, active_passes=0, budget_by_rate=100) == 1
    assert line.admissions_allowed(remaining_units=1, factor=0.5, active_passes=1, budget_by_rate=100) == 0
    assert line.admissions_allowed(remaining_units=100, factor=0.5, active_passes=0, budget_by_rate=100) == 50


def test_the_admitter_admits_in_position_order_up_to_the_stock_and_a_poll_says_so():
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 5, opens_in=-1, admission_rate=100)
    admitter.turn(uow, StockOf(2))
    admitter.turn(uow, StockOf(2))
    tickets = sorted(uow.lines.tickets(DROP), key=lambda t: t.position)
    assert [t.admitted_at is not None for t in tickets] == [True, True, False, False, False]
    assert made.admitted_through == 2 and made.remaining_units == 2
    views = [line.ticket_view(t, made, utc_now(), SECRET) for t in tickets]
    assert [v["state"] for v in views] == ["admitted", "admitted", "waiting", "waiting", "waiting"]
    assert [v["ahead"] for v in views[2:]] == [0, 1, 2]
    assert views[0]["pass"] and views[2]["pass"] is None
    assert all(v["poll_after_seconds"] <= line.WAITING_POLL_SECONDS for v in views[2:])


def test_the_buyers_the_line_is_about_to_reach_poll_every_second_and_the_rest_no_more_often():
    uow = FakeUnitOfWork()
    made = a_line(uow, opens_in=-1, admission_rate=100)
    made.state, made.remaining_units, made.admitted_through, made.observed_rate = line.OPEN, 50, 10, 10.0
    now = utc_now()
    polls = {position: line.place_view(position, made, now)["poll_after_seconds"] for position in (11, 25, 41, 200)}
    # 0, 14, 30 and 189 people ahead at 10 admitted a second: due in 0, 2, 3 and 19 s
    assert polls == {11: 1, 25: 1, 41: 2, 200: line.WAITING_POLL_SECONDS}
    made.observed_rate = 0.0  # nobody admitted lately: no estimate, the usual pace
    assert line.place_view(11, made, now)["poll_after_seconds"] == line.WAITING_POLL_SECONDS


def test_at_the_opening_the_crowd_is_told_the_first_turns_pace_and_those_about_to_be_admitted_poll_every_second(
        clock):
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 300, opens_in=-1, admission_rate=200)
    admitter.turn(uow, StockOf(1000))  # opens the line and admits a turn's worth
    assert made.admitted_through == 100 and made.observed_rate == 200
    now = utc_now()
    # 149 people ahead of position 250 at 200 a second: due within the second, so polls every second
    assert line.place_view(250, made, now)["poll_after_seconds"] == 1
    assert line.place_view(300, made, now)["poll_after_seconds"] == 1
    clock.advance(admitter.MIN_TURN_SECONDS)
    admitter.turn(uow, StockOf(1000))
    assert made.admitted_through == 200 and made.observed_rate == 200


def test_a_pass_whose_buyer_already_holds_a_unit_is_not_counted_again_against_the_units_left():
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 5, opens_in=-1, admission_rate=4)  # a turn's worth: 2
    admitter.turn(uow, StockOf(3))
    first = sorted((t for t in uow.lines.tickets(DROP) if t.admitted_at), key=lambda t: t.position)
    assert len(first) == 2
    # the first admitted buyer's order is in flight: its unit is held, its pass not yet used
    made.paced_at -= timedelta(seconds=1)  # a second later: the rate allows more
    admitter.turn(uow, StockOf(2, holding=frozenset({first[0].buyer_id})))
    assert made.admitted_through == 3  # the third unit's buyer, not held back by the order in flight
    made.paced_at -= timedelta(seconds=1)
    admitter.turn(uow, StockOf(2, holding=frozenset({first[0].buyer_id})))
    assert made.admitted_through == 3  # and never more passes than units: 1 held + 2 passes for 2 left


def test_the_admitter_wakes_at_a_lines_opening_when_it_comes_before_the_next_turn():
    uow = FakeUnitOfWork()
    made = a_line(uow, opens_in=60)
    turned = admitter.turn(uow, StockOf(10))
    assert turned == admitter.Turned(admitted=0, next_opening=made.opens_at)
    now = made.opens_at - timedelta(seconds=0.2)
    assert admitter.until_next_turn(0.5, turned.next_opening, now) == pytest.approx(0.2)
    assert admitter.until_next_turn(0.5, turned.next_opening, now - timedelta(seconds=10)) == 0.5
    assert admitter.until_next_turn(0.5, turned.next_opening, made.opens_at) == admitter.MIN_WAIT_SECONDS
    assert admitter.until_next_turn(0.5, None, now) == 0.5
    made.opens_at = utc_now()  # due: the turn opens it, and no opening is left to wake for
    assert admitter.turn(uow, StockOf(10)).next_opening is None
    assert made.state == line.OPEN


def test_a_line_whose_opening_comes_during_a_turn_opens_at_the_next_with_its_stock(monkeypatch):
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 3, opens_in=60, admission_rate=100)
    # the turn starts just before the opening, which comes while inventory is asked for stock
    first = iter([made.opens_at - timedelta(seconds=0.1)])
    monkeypatch.setattr(admitter, "utc_now", lambda: next(first, made.opens_at + timedelta(seconds=0.1)))
    turned = admitter.turn(uow, StockOf(10))
    assert made.state == line.PRE_QUEUE and turned.next_opening == made.opens_at  # woken at once
    admitter.turn(uow, StockOf(10))
    assert made.state == line.OPEN and made.admitted_through == 3


def test_a_paused_line_admits_nobody_and_a_sold_out_one_says_so():
    uow = FakeUnitOfWork()
    made = a_line(uow, opens_in=-1, admission_rate=100)
    join(DROP, "ann", None, uow)
    uow.commit()
    admitter.turn(uow, StockOf(0))  # opens
    line.change_line(DROP, uow, utc_now(), state=line.PAUSED)
    uow.commit()
    admitter.turn(uow, StockOf(5))
    ticket = uow.lines.ticket_of(DROP, "ann")
    assert ticket.admitted_at is None
    # its buyer hears that the line is paused, and keeps their place (before, "waiting", with an
    # estimate that never came down)
    paused = line.ticket_view(ticket, made, utc_now(), SECRET)
    assert (paused["state"], paused["position"], paused["ahead"], paused["eta_seconds"]) == (line.PAUSED, 1, 0, None)
    made.remaining_units = 0
    assert line.ticket_view(ticket, made, utc_now(), SECRET)["state"] == line.SOLD_OUT


def test_a_line_that_opens_before_its_drop_draws_its_order_but_admits_nobody_until_the_sale_opens(clock):
    """A pass given before the drop opens runs out before its buyer may order (403 not-open):
    the first buyers lost their turn to the drop's own clock."""
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 3, opens_in=-1, admission_rate=100)
    not_yet = StockOf(5, opens_at=clock.now + timedelta(seconds=30))

    assert admitter.turn(uow, not_yet).admitted == 0
    assert made.state == line.OPEN and made.remaining_units == 5
    assert sorted(ticket.position for ticket in uow.lines.tickets(DROP)) == [1, 2, 3]  # the order is drawn
    assert all(ticket.admitted_at is None for ticket in uow.lines.tickets(DROP))
    clock.advance(29)
    assert admitter.turn(uow, not_yet).admitted == 0

    clock.advance(1)
    assert admitter.turn(uow, not_yet).admitted == 3
    assert all(ticket.admitted_at == clock.now for ticket in uow.lines.tickets(DROP))


def test_a_line_admits_nobody_during_its_drops_invite_only_phase(clock):
    """The invited tier orders without a pass during the phase (services/checkout/handlers.py
    `invited`); a pass given then went by position to buyers inventory refused as not invited
    (403 invite-only), and ran out with their turn."""
    uow = FakeUnitOfWork()
    a_line_joined_by(uow, 3, opens_in=-1, admission_rate=100)
    invited_for_now = StockOf(5, invite_only_until=clock.now + timedelta(seconds=30))

    assert admitter.turn(uow, invited_for_now).admitted == 0
    assert sorted(ticket.position for ticket in uow.lines.tickets(DROP)) == [1, 2, 3]  # the order is drawn
    clock.advance(29)
    assert admitter.turn(uow, invited_for_now).admitted == 0

    clock.advance(1)
    assert admitter.turn(uow, invited_for_now).admitted == 3


def test_a_line_closes_when_its_drops_window_closes_and_an_admin_may_open_it_again():
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 4, opens_in=-1, admission_rate=100)
    admitter.turn(uow, StockOf(1))  # opens, admits one
    closed = StockOf(5, closes_at=utc_now() - timedelta(seconds=1))
    assert admitter.turn(uow, closed).admitted == 0
    assert made.state == line.CLOSED
    ticket = next(ticket for ticket in uow.lines.tickets(DROP) if ticket.admitted_at is None)
    assert line.ticket_view(ticket, made, utc_now(), SECRET)["state"] == line.CLOSED
    with pytest.raises(errors.LineClosed):
        join(DROP, "latecomer", None, uow)
    assert admitter.turn(uow, closed).admitted == 0  # no longer turned

    with pytest.raises(errors.LineClosed):  # the caller did not ask inventory: the line closed since it looked
        line.change_line(DROP, uow, utc_now(), state=line.OPEN)
    extended = utc_now() + timedelta(hours=1)  # the drop's window was extended
    line.change_line(DROP, uow, utc_now(), state=line.OPEN, drop_asked=True, drop_closes_at=extended)
    uow.commit()
    assert admitter.turn(uow, StockOf(5)).admitted == 3  # everyone still waiting
    assert join(DROP, "latecomer", None, uow)[1] is True


def test_a_buyer_admitted_just_before_an_admin_closes_the_line_is_still_told_admitted_with_the_pass():
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 3, opens_in=-1, admission_rate=100)
    admitter.turn(uow, StockOf(1))  # opens, admits one
    line.change_line(DROP, uow, utc_now(), state=line.CLOSED)
    uow.commit()
    tickets = sorted(uow.lines.tickets(DROP), key=lambda t: t.position)
    # the public place (what the edge answers from the line's figures) and the buyer's own poll
    views = [line.place_view(t.position, made, utc_now()) for t in tickets]
    assert [view["state"] for view in views] == ["admitted", "closed", "closed"]
    assert [view["poll_after_seconds"] for view in views] == [None] * 3  # a closed line changes no more
    own = line.ticket_view(tickets[0], made, utc_now(), SECRET)
    assert own["state"] == "admitted" and line.verify_pass(SECRET, own["pass"], tickets[0].buyer_id, str(DROP)) == tickets[0].id
    tickets[0].pass_expires_at = utc_now() - timedelta(seconds=1)
    assert line.ticket_view(tickets[0], made, utc_now(), SECRET)["state"] == "expired"


@pytest.mark.parametrize("state", [line.OPEN, line.PAUSED])
def test_a_closed_line_is_not_opened_again_while_its_drop_is_closed(state):
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 2, opens_in=-1)
    admitter.turn(uow, StockOf(5))  # opens
    line.change_line(DROP, uow, utc_now(), state=line.CLOSED)
    closed_at = utc_now() - timedelta(seconds=1)
    with pytest.raises(errors.DropClosed, match="extend its window"):
        line.change_line(DROP, uow, utc_now(), state=state, drop_asked=True, drop_closes_at=closed_at)
    assert made.state == line.CLOSED
    line.change_line(DROP, uow, utc_now(), state=state, drop_asked=True, drop_closes_at=utc_now() + timedelta(hours=1))
    assert made.state == state
    # an open line is paused and resumed with no word from inventory
    line.change_line(DROP, uow, utc_now(), state=line.PAUSED if state == line.OPEN else line.OPEN)
    assert made.state == (line.PAUSED if state == line.OPEN else line.OPEN)


def test_a_line_closed_before_its_opening_and_opened_again_waits_for_its_opening():
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 2, opens_in=60)
    line.change_line(DROP, uow, utc_now(), state=line.CLOSED)
    with pytest.raises(errors.LineNotOpenYet):  # not paused: waiting again for an opening, it would open
        line.change_line(DROP, uow, utc_now(), state=line.PAUSED, drop_asked=True)
    assert made.state == line.CLOSED
    line.change_line(DROP, uow, utc_now(), state=line.OPEN, drop_asked=True)  # an inventory that did not say
    assert made.state == line.PRE_QUEUE and made.opened_at is None
    with pytest.raises(errors.LineNotOpenYet):
        line.change_line(DROP, uow, utc_now(), state=line.OPEN)


def test_the_rate_halves_while_checkout_sheds_and_recovers_to_the_ceiling():
    assert line.next_rate(20, 20, checkout_shedding=True) == 10
    assert line.next_rate(1.5, 20, checkout_shedding=True) == line.MIN_RATE
    assert line.next_rate(10, 20, checkout_shedding=False) == 12.5
    assert line.next_rate(19, 20, checkout_shedding=False) == 20
    # a line turned twice as often (two replicas) moves half a step a turn
    assert line.next_rate(line.next_rate(20, 20, True, turns=0.5), 20, True, turns=0.5) == pytest.approx(10)
    assert line.next_rate(line.next_rate(10, 20, False, turns=0.5), 20, False, turns=0.5) == pytest.approx(12.5)


def test_the_admitter_halves_its_rate_while_checkout_turns_orders_away(clock):
    shedding = admitter.Shedding()
    assert shedding.since_last_turn({"api-1": 5}) is False  # a process seen for the first time
    assert shedding.since_last_turn({"api-1": 5, "api-2": 0}) is False
    assert shedding.since_last_turn({"api-1": 9, "api-2": 0}) is True
    assert shedding.since_last_turn({"api-1": 9}) is False

    uow = FakeUnitOfWork()
    made = a_line(uow, opens_in=-1, admission_rate=40)
    watching = admitter.Shedding()

    def a_turn_later():
        clock.advance(admitter.MIN_TURN_SECONDS)
        admitter.turn(uow, StockOf(100), watching)

    admitter.turn(uow, StockOf(100), watching)
    assert made.pace_rate == 40
    uow.lines.refusals = {"api-1": 3}
    a_turn_later()
    uow.lines.refusals = {"api-1": 7}
    a_turn_later()
    assert made.pace_rate == 20
    a_turn_later()  # no new refusals: recovering
    assert made.pace_rate == 25


def test_two_admitter_replicas_admit_at_the_lines_rate_between_them_not_each_at_it(clock):
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 200, opens_in=-1, admission_rate=20)
    replicas = [admitter.Shedding(), admitter.Shedding()]
    admitter.turn(uow, StockOf(1000), replicas[0])  # opens the line: a turn's worth, 10
    for turn in range(8):  # two seconds, the replicas taking turns every quarter second
        clock.advance(admitter.MIN_TURN_SECONDS / 2)
        admitter.turn(uow, StockOf(1000), replicas[(turn + 1) % 2])
    assert made.admitted_through == 10 + 2 * 20
    # and the crowd is told the line's rate, not a replica's share of it
    assert made.observed_rate == pytest.approx(20)


def test_two_admitter_replicas_halve_the_rate_once_a_turn_between_them_while_checkout_sheds(clock):
    uow = FakeUnitOfWork()
    made = a_line(uow, opens_in=-1, admission_rate=40)
    replicas = [admitter.Shedding(), admitter.Shedding()]
    uow.lines.refusals = {"api-1": 0}
    for replica in replicas:  # each sees checkout's refusals for the first time
        admitter.turn(uow, StockOf(100), replica)
    assert made.pace_rate == 40
    for turn in range(4):  # a second of refusals growing, the replicas taking turns every quarter second
        uow.lines.refusals = {"api-1": turn + 1}
        clock.advance(admitter.MIN_TURN_SECONDS / 2)
        admitter.turn(uow, StockOf(100), replicas[turn % 2])
    assert made.pace_rate == pytest.approx(10)  # halved twice in the second, as one replica would


def an_open_line(clock, rate: float, buyers: int = 200):
    """A line at `rate` a second, opened by a first turn (a turn's worth admitted)."""
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, buyers, opens_in=-1, admission_rate=rate)
    admitter.turn(uow, StockOf(1000))
    return uow, made


def test_after_a_minute_without_turns_the_line_admits_a_seconds_worth_and_keeps_its_estimate(clock):
    uow, made = an_open_line(clock, rate=20)
    for _ in range(4):  # two seconds at the pace
        clock.advance(admitter.MIN_TURN_SECONDS)
        admitter.turn(uow, StockOf(1000))
    assert made.admitted_through == 10 + 40 and made.observed_rate == pytest.approx(20)
    clock.advance(60)  # the admitter was down, or inventory could not say the stock
    admitter.turn(uow, StockOf(1000))
    assert made.admitted_through == 50 + 20  # a second's worth, not a minute's
    assert made.observed_rate == pytest.approx(20)  # buyers are not told a wait sixty times too long


def test_a_paused_line_saves_up_no_admissions_for_its_resumption(clock):
    uow, made = an_open_line(clock, rate=20, buyers=4)  # the first turn could admit 10: 6 unspent
    for n in range(30):
        join(DROP, f"late-{n}", None, uow)
    line.change_line(DROP, uow, clock(), state=line.PAUSED)
    uow.commit()
    clock.advance(admitter.MIN_TURN_SECONDS)
    admitter.turn(uow, StockOf(1000))
    assert made.admitted_through == 4
    line.change_line(DROP, uow, clock(), state=line.OPEN)
    uow.commit()
    clock.advance(admitter.MIN_TURN_SECONDS)
    admitter.turn(uow, StockOf(1000))
    assert made.admitted_through == 4 + 10  # the half second since the paused turn, not what was unspent before


def test_a_database_clock_that_goes_back_admits_nobody_until_it_catches_up(clock):
    uow, made = an_open_line(clock, rate=20)
    clock.advance(-5)
    admitter.turn(uow, StockOf(1000))
    assert made.admitted_through == 10
    clock.advance(admitter.MIN_TURN_SECONDS)
    admitter.turn(uow, StockOf(1000))
    assert made.admitted_through == 10 + 10


def test_a_lower_ceiling_holds_at_once_and_a_paused_line_shows_no_pace(clock):
    uow, made = an_open_line(clock, rate=20)
    assert LineSchema().dump(made)["pace_per_second"] == 20
    line.change_line(DROP, uow, clock(), admission_rate=5)
    uow.commit()
    assert made.pace_rate == 5 and LineSchema().dump(made)["pace_per_second"] == 5
    line.change_line(DROP, uow, clock(), state=line.PAUSED)
    assert LineSchema().dump(made)["pace_per_second"] == 0
    # a ceiling under MIN_RATE is never sped up to it, shedding or not
    assert line.next_rate(0.5, 0.5, checkout_shedding=True) == 0.5
    assert line.next_rate(0.2, 0.5, checkout_shedding=False) == 0.5


def test_a_line_may_refuse_accounts_made_after_it():
    uow = FakeUnitOfWork()
    made = a_line(uow, refuse_new_accounts=True)
    older = made.accounts_created_before - timedelta(days=3)
    assert join(DROP, "veteran", older, uow)[1] is True
    with pytest.raises(errors.AccountTooNew):
        join(DROP, "newcomer", made.accounts_created_before + timedelta(seconds=1), uow)
    with pytest.raises(errors.AccountTooNew):
        join(DROP, "unknown age", None, uow)


def test_a_pass_admits_its_buyer_to_its_drop_only():
    issued, ticket_id = pass_for()
    assert line.verify_pass(SECRET, issued, "ann", str(DROP)) == ticket_id
    refusals = [
        (issued, "bob", str(DROP), errors.LinePassInvalid),
        (issued, "ann", str(uuid.uuid4()), errors.LinePassInvalid),
        (pass_for(secret="someone else's secret, long enough for HS256")[0], "ann", str(DROP), errors.LinePassInvalid),
        (pass_for(expires_in=-5)[0], "ann", str(DROP), errors.LinePassExpired),
        ("not a pass", "ann", str(DROP), errors.LinePassInvalid),
        (jwt.encode({"sub": "ann", "drop": str(DROP), "exp": 2**31}, SECRET, algorithm="HS256"), "ann", str(DROP),
         errors.LinePassInvalid),  # no audience, no ticket
    ]
    for presented, buyer, drop, refusal in refusals:
        with pytest.raises(refusal):
            line.verify_pass(SECRET, presented, buyer, drop)


def test_mid_rotation_a_pass_the_previous_key_signed_still_admits_until_it_runs_out():
    """A pass signed before the key was rotated was refused as forged: the buyer lost the slot
    the line gave them."""
    from services.checkout.config import Settings

    previous = "the key before the rotation, long enough for HS256"
    rotating = Settings(line_pass_secret=SECRET, line_pass_previous_secret=previous)
    assert rotating.line_pass_secrets == (SECRET, previous) and Settings().line_pass_secrets == (Settings().line_pass_secret,)
    issued_before, ticket_id = pass_for(secret=previous)
    assert line.verify_pass(rotating.line_pass_secrets, issued_before, "ann", str(DROP)) == ticket_id
    assert line.current_pass_ticket(rotating.line_pass_secrets, issued_before) == str(ticket_id)
    with pytest.raises(errors.LinePassExpired):
        line.verify_pass(rotating.line_pass_secrets, pass_for(secret=previous, expires_in=-5)[0], "ann", str(DROP))
    with pytest.raises(errors.LinePassInvalid):  # once the rotation is over, it is not taken
        line.verify_pass(SECRET, issued_before, "ann", str(DROP))
    with pytest.raises(errors.LinePassInvalid):
        line.verify_pass(rotating.line_pass_secrets, pass_for(secret="a third key, long enough for HS256")[0], "ann",
                         str(DROP))


def test_a_pass_is_current_when_genuine_and_unexpired_whoever_holds_it():
    for buyer in ("ann", "bob"):
        issued, ticket_id = pass_for(buyer=buyer)
        assert line.current_pass_ticket(SECRET, issued) == str(ticket_id)
    for presented in (pass_for(expires_in=-5)[0], pass_for(secret="someone else's secret, long enough for HS256")[0],
                      "not a pass", "", None):
        assert line.current_pass_ticket(SECRET, presented) is None


def test_joins_per_client_are_limited_per_minute():
    now = [120.0]
    limit = line.JoinLimit(per_minute=2, clock=lambda: now[0])
    assert [limit.take("1.2.3.4") for _ in range(3)] == [None, None, 60]
    assert limit.take("5.6.7.8") is None
    now[0] = 180.0
    assert limit.take("1.2.3.4") is None


def test_a_crowd_of_addresses_in_one_minute_still_has_each_its_own_limit_and_the_next_minute_starts_afresh():
    now = [120.0]
    limit = line.JoinLimit(per_minute=1, clock=lambda: now[0])
    crowd = [f"10.{n // 65536}.{n // 256 % 256}.{n % 256}" for n in range(25_000)]
    assert all(limit.take(address) is None for address in crowd)
    assert all(limit.take(address) == 60 for address in crowd[::997])  # each held back, none forgotten
    now[0] = 180.0
    assert limit.take(crowd[0]) is None and len(limit._counts) == 1  # last minute's counts are gone


class AnotherAdmitterBetween(StockOf):
    """Inventory that, while this admitter waits for its answer (its line locks released),
    lets another admitter replica take a whole turn on the same lines."""

    def __init__(self, uow, units: int):
        super().__init__(units)
        self.uow, self.turns = uow, 0

    def holders(self, drop_id: str, buyer_ids: list[str]) -> DropStock:
        self.turns += 1
        if self.turns == 1:
            admitter.turn(self.uow, StockOf(self.units))
        return super().holders(drop_id, buyer_ids)


def test_two_admitter_replicas_never_admit_more_passes_than_units_between_them():
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 10, opens_in=-1, admission_rate=100)
    admitter.turn(uow, StockOf(3))  # opens the line and admits the three units' buyers
    for ticket in uow.lines.tickets(DROP):  # their passes expire unused: three units to admit again
        if ticket.admitted_at:
            ticket.pass_expires_at = utc_now() - timedelta(seconds=1)
    admitter.turn(uow, AnotherAdmitterBetween(uow, 3))
    in_play = uow.lines.active_pass_holders(DROP, utc_now())
    assert len(in_play) == 3 and made.admitted_through == 6


class AnotherAdmitterAndAnOrderBetween(AnotherAdmitterBetween):
    """As above, and one of the other replica's buyers orders once inventory has answered: its
    unit was still among those left, and its pass is used by the time this admitter looks again."""

    def holders(self, drop_id: str, buyer_ids: list[str]) -> DropStock:
        answer = super().holders(drop_id, buyer_ids)
        first = min((t for t in self.uow.lines.tickets(DROP) if t.used_at is None and t.pass_expires_at
                     and t.pass_expires_at > utc_now()),
                    key=lambda t: t.position)
        assert self.uow.lines.use_pass(first.id, DROP, first.buyer_id) is None
        return answer


def test_a_pass_another_replica_gave_and_its_buyer_used_meanwhile_is_still_counted():
    uow = FakeUnitOfWork()
    made = a_line_joined_by(uow, 10, opens_in=-1, admission_rate=100)
    admitter.turn(uow, StockOf(3))
    for ticket in uow.lines.tickets(DROP):
        if ticket.admitted_at:
            ticket.pass_expires_at = utc_now() - timedelta(seconds=1)
    admitter.turn(uow, AnotherAdmitterAndAnOrderBetween(uow, 3))
    # three units: the other replica's three passes, one of them now an order; nobody else
    used = [t for t in uow.lines.tickets(DROP) if t.used_at is not None]
    assert len(used) + len(uow.lines.active_pass_holders(DROP, utc_now())) == 3
    assert made.admitted_through == 6


@pytest.mark.parametrize("opens_at", ["9999-12-31T23:00:00-05:00", "1999-12-31T23:00:00Z"])
def test_a_line_opening_no_drop_could_have_is_refused(opens_at):
    """Year 10000 in UTC is stored by PostgreSQL and unreadable by Python: every later read of
    the lines, the admitter's and the edge's, would fail."""
    with pytest.raises(ValidationError) as refused:
        LineRequestSchema().load({"opens_at": opens_at})
    assert "opens_at" in refused.value.messages
    assert LineRequestSchema().load({"opens_at": "2030-01-01T10:00:00-05:00"})["opens_at"].year == 2030


def test_a_pass_given_just_before_the_drop_closes_runs_out_with_the_drop(clock):
    """A buyer let in a minute before the close was told "order within 02:00", then refused as
    the drop had closed: the pass now says the minute. Extended, the drop's window gives the
    pass its whole time again; within MIN_ORDER_SECONDS of the close nobody is let in (a pass
    would run out before its buyer could order, and a buyer has one turn)."""
    uow = FakeUnitOfWork()
    a_line_joined_by(uow, 6, opens_in=-1, pass_ttl_seconds=120, admission_rate=2)
    closes_at = clock.now + timedelta(seconds=60)
    admitter.turn(uow, StockOf(10, closes_at=closes_at))  # opens it
    clock.advance(1)
    admitter.turn(uow, StockOf(10, closes_at=closes_at))
    admitted = [t for t in uow.lines.tickets(DROP) if t.pass_expires_at is not None]
    assert admitted and all(t.pass_expires_at == closes_at for t in admitted)

    extended = clock.now + timedelta(hours=1)
    clock.advance(1)
    admitter.turn(uow, StockOf(10, closes_at=extended))
    assert all(t.pass_expires_at == t.admitted_at + timedelta(seconds=120) for t in admitted)

    waiting = [t for t in uow.lines.tickets(DROP) if t.admitted_at is None]
    assert waiting
    assert admitter.MIN_ORDER_SECONDS > 20
    clock.advance(1)
    admitter.turn(uow, StockOf(10, closes_at=clock.now + timedelta(seconds=20)))
    assert all(t.admitted_at is None for t in waiting)
