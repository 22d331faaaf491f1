"""The waiting room's admitter (`python -m services.checkout admitter`): opens each line at its
opening and admits buyers from it, every `ADMITTER_INTERVAL_SECONDS` (services/checkout/line.py
says the rules). Replicas share the lines (each line is locked, skipping one another holds) and
each line's pace, which lives on the line's row: two replicas admit at the line's rate between
them, not each at it.
"""
from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from services.checkout import errors, line as waiting_room
from services.checkout.config import Settings
from shared.heartbeat import Turns
from shared.last_seen import LastSeen
from shared.values import utc_now

log = logging.getLogger("floodgate.checkout.admitter")
MIN_TURN_SECONDS = 0.5
# A turn after a longer gap (the admitter was down, or inventory could not say the stock) counts
# as this long: it refills at most a second's worth of admissions, and the admissions per second
# buyers are told are not pulled down by the time nobody turned the line.
MAX_TURN_SECONDS = 1.0
MIN_WAIT_SECONDS = 0.01  # between turns, even when a line opens sooner
# No pass is given this close to the drop's close (the setting LINE_MIN_ORDER_SECONDS): it would run
# out with the drop before its buyer could order, and a buyer has one turn. They keep their place,
# in case the window is extended.
MIN_ORDER_SECONDS = 30.0
# the lines a turn looks at: those still to open, and those it admits from (or holds, paused)
TURNED = (waiting_room.PRE_QUEUE, waiting_room.OPEN, waiting_room.PAUSED)


class Shedding:
    """Whether checkout turned orders away since the last turn: some API process's count of 429s
    (load_shedding.LoadReport) grew."""

    def __init__(self):
        self._seen: dict[str, int] = {}

    def since_last_turn(self, refusals: dict[str, int]) -> bool:
        grew = any(count > self._seen.get(process, count) for process, count in refusals.items())
        self._seen = refusals
        return grew


# A line's pre-queue is read ahead, its order keys worked out, from this long before its
# opening, READ_AHEAD_PER_TURN tickets a turn at most over all such lines, the soonest opening
# first (about 0.25 s): at the opening only the last joins are read, and the sort (0.5 s for
# 500,000 tickets, against 2.7-4.4 s to read and key them all then).
READ_AHEAD_SECONDS = 60.0
READ_AHEAD_PER_TURN = 50_000
# A join draws its arrival number from a sequence and commits within this long (it is one
# statement): an arrival number drawn longer ago than this is committed, and a read sees it.
# Later ones may commit out of order, so each read ahead starts below them.
REREAD_SECONDS = 5.0


@dataclass
class _ReadAhead:
    """A line's pre-queue tickets read before its opening: id -> order digest, and the arrival
    number up to which every pre-queue ticket is keyed."""

    seed: bytes
    digests: dict[uuid.UUID, bytes] = field(default_factory=dict)
    keyed_through: int = 0

    def read(self, uow, drop_id: uuid.UUID, most: int | None, drawn_before: int) -> int:
        """Key the pre-queue tickets above `keyed_through`, `most` at the most (None: all), and
        how many were read. `drawn_before`: the arrival numbers drawn REREAD_SECONDS ago, all
        committed now, so every one of them up to the last read is keyed from now on."""
        rows = uow.lines.pre_queue_ahead(drop_id, self.keyed_through, most)
        for row in rows:
            if row.id not in self.digests:
                self.digests[row.id] = waiting_room.order_digest(self.seed, row.id)
        whole = most is None or len(rows) < most  # else every ticket up to the last row read
        self.keyed_through = max(self.keyed_through, drawn_before if whole else min(rows[-1].arrival, drawn_before))
        return len(rows)


class PreQueues:
    """Writes opened lines' pre-queue positions, `per_turn` a turn (`LINE_POSITIONS_PER_TURN`),
    keeping the admission order of each pre-queue being placed, worked out by `prepare` with no
    line locked. The tickets of a line about to open are read, and their order keys worked out,
    in the turns before its opening (`READ_AHEAD_SECONDS`): at the opening only its last joins
    are read, then it is sorted. The order is the seed's and the tickets', so a replica that
    turns the line next works out the same one."""

    def __init__(self, per_turn: int = Settings.line_positions_per_turn, read_ahead_per_turn: int = READ_AHEAD_PER_TURN):
        if per_turn < 1:
            raise ValueError(f"LINE_POSITIONS_PER_TURN must be at least 1, not {per_turn}")
        if read_ahead_per_turn < 1:
            raise ValueError(f"the read ahead must take at least 1 ticket a turn, not {read_ahead_per_turn}")
        self.per_turn = per_turn
        self.read_ahead_per_turn = read_ahead_per_turn
        self._orders: dict[tuple, list] = {}
        self._ahead: dict[uuid.UUID, _ReadAhead] = {}  # the lines about to open
        self._drawn: deque[tuple[datetime, int]] = deque()  # (when, the last arrival number drawn then)

    def prepare(self, uow) -> None:
        """Before the lines are locked: work out the order of every pre-queue being placed that
        this process has not yet, forget those whose placing is done (by any admitter), and read
        ahead the pre-queues of the lines about to open."""
        drawn_before = self._drawn_before(utc_now(), uow.lines.arrivals_drawn())
        placing = {(row.drop_id, row.opened_at): row for row in uow.lines.placing()}
        for key in set(self._orders) - set(placing):
            del self._orders[key]
        for key, line in placing.items():
            if key not in self._orders:
                self._orders[key] = self._order_of(line, uow, drawn_before)
        self._read_ahead(uow, drawn_before)
        uow.rollback()

    def place(self, line, uow) -> int:
        """Write the line's next positions (it is locked). A line that began placing after
        `prepare` looked (another admitter opened it meanwhile) waits for the next turn's: its
        order is not worked out with this turn's lines locked."""
        key = (line.drop_id, line.opened_at)
        if key not in self._orders:
            return 0
        placed = waiting_room.place_pre_queue(line, uow, self._orders[key], self.per_turn)
        if not waiting_room.placing(line):
            log.info("pre-queue placed", extra={"drop_id": str(line.drop_id), "pre_queue": line.pre_queue_size})
        return placed

    def _drawn_before(self, now: datetime, drawn: int) -> int:
        """The last arrival number drawn REREAD_SECONDS before `now` (0: not known), noting `drawn`."""
        self._drawn.append((now, drawn))
        while len(self._drawn) > 1 and (now - self._drawn[1][0]).total_seconds() >= REREAD_SECONDS:
            self._drawn.popleft()
        at, number = self._drawn[0]
        return number if (now - at).total_seconds() >= REREAD_SECONDS else 0

    def _read_ahead(self, uow, drawn_before: int) -> None:
        # a line's seed never changes (line.put_line), so what was keyed for it stays right
        soon = {row.drop_id: row.seed for row in uow.lines.opening_within(READ_AHEAD_SECONDS)}  # soonest first
        for drop_id in set(self._ahead) - set(soon):  # opened (its order taken), moved later, or gone
            del self._ahead[drop_id]
        budget = self.read_ahead_per_turn
        for drop_id, seed in soon.items():
            ahead = self._ahead.setdefault(drop_id, _ReadAhead(seed))
            if budget > 0:
                budget -= ahead.read(uow, drop_id, budget, drawn_before)

    def _order_of(self, line, uow, drawn_before: int) -> list:
        """The pre-queue's admission order: from its tickets read ahead, and the joins since the
        last turn read them (up to the opening: only pre-queue tickets are read ahead), when that
        is all of it; else from all its tickets (those read ahead not keyed again)."""
        ahead = self._ahead.pop(line.drop_id, None) or _ReadAhead(line.seed)
        read_ahead = len(ahead.digests)
        if ahead.digests:
            ahead.read(uow, line.drop_id, None, drawn_before)
        tickets = list(ahead.digests)
        whole_read = len(tickets) != line.pre_queue_size
        if whole_read:
            tickets = uow.lines.pre_queue(line.drop_id, line.pre_queue_last_arrival)
        if len(tickets) != line.pre_queue_size:  # tickets are never deleted: this is a bug or a hand-made change
            log.error("the pre-queue's tickets do not match its size",
                      extra={"drop_id": str(line.drop_id), "tickets": len(tickets), "pre_queue": line.pre_queue_size})
        order = waiting_room.pre_queue_order(line.seed, tickets, ahead.digests)
        log.info("pre-queue ordered", extra={"drop_id": str(line.drop_id), "pre_queue": line.pre_queue_size,
                                             "read_ahead": read_ahead, "whole_read": whole_read})
        return order


@dataclass(frozen=True)
class Turned:
    """What a turn did: buyers admitted, and the soonest opening of a line still to open."""

    admitted: int
    next_opening: datetime | None


def turn(uow, inventory, shedding: Shedding | None = None, pre_queues: PreQueues | None = None,
         min_order_seconds: float = MIN_ORDER_SECONDS) -> Turned:
    """One pass over the lines: open those due, write their positions, admit from the open ones,
    close those whose drop's window has closed. In four transactions, none of which holds a line
    against joins for longer than two reads:

    1. `_look`: the lines due are locked against other admitters and their passes in play read;
       then, with no line locked, inventory is asked for each one's units and its drop's close
       (joins never wait on an HTTP call);
    2. `_open`: each line due to open, in a transaction of its own (joins wait for two reads);
    3. `PreQueues.prepare`: the admission orders of the pre-queues being placed, and the
       pre-queues of lines about to open read ahead, with no line locked;
    4. `_turn_locked`: the lines locked against other admitters again, and each turned
       (`_turn_line`): positions written, at most `pre_queues.per_turn` of a line's a turn,
       buyers admitted. Joins go on. A line closed before its pre-queue was placed still gets
       the rest of its positions (its published order is then whole).

    No buyer is admitted within `min_order_seconds` of their drop's close."""
    pre_queues = pre_queues or PreQueues()
    looked = _look(uow, inventory, shedding)
    for drop_id in looked.opening:
        _open(uow, drop_id, looked.stock.get(drop_id))
    pre_queues.prepare(uow)
    return _turn_locked(uow, looked, pre_queues, min_order_seconds)


@dataclass(frozen=True)
class _Looked:
    """What a turn found before it locked the lines to turn them: the lines it turns (open,
    paused or due to open, closed or not since), those due to open, each one's passes in play
    and admissions through then, inventory's figures, and whether checkout shed orders since
    the last turn."""

    turned: list
    opening: list
    holders: dict
    through: dict
    stock: dict
    checkout_shedding: bool


def _look(uow, inventory, shedding: Shedding | None) -> _Looked:
    checkout_shedding = shedding.since_last_turn(uow.lines.checkout_refusals()) if shedding else False
    due = uow.lines.lock_next_due(TURNED)
    started = utc_now()  # a line opens in this turn if its opening had come by now
    turned = [line.drop_id for line in due if line.state != waiting_room.PRE_QUEUE or line.opens_at <= started]
    opening = [line.drop_id for line in due if line.state == waiting_room.PRE_QUEUE and line.opens_at <= started]
    # The passes in play are read before inventory is asked, and inventory says, with the units
    # left, which of their buyers already hold one (one statement there): their orders are in
    # flight, between the hold and the commit that uses the pass, and their passes are not
    # counted again against the units left. Counted twice, they held back admissions until the
    # rush had passed, and the drop's last units waited for a late turn. A pass used in between
    # the two reads has its unit held by then: counted once, never missed, so admissions never
    # exceed the stock.
    holders = {drop_id: uow.lines.active_pass_holders(drop_id, utc_now()) for drop_id in turned}
    through = {line.drop_id: line.admitted_through for line in due}
    uow.rollback()  # the locks go: the HTTP calls below hold none
    stock = {}
    for drop_id in turned:
        try:
            stock[drop_id] = inventory.holders(str(drop_id), holders[drop_id])
        except (errors.InventoryUnavailable, errors.DropNotFound) as error:
            log.warning("no stock figure for a line this turn", extra={"drop_id": str(drop_id), "error": repr(error)})
    return _Looked(turned, opening, holders, through, stock, checkout_shedding)


def _turn_locked(uow, looked: _Looked, pre_queues: PreQueues, min_order_seconds: float) -> Turned:
    admitted, next_opening = 0, None
    locked = uow.lines.lock_next_due(TURNED, placing=True)
    paced_at = uow.lines.clock() if locked else None  # the database's time: one clock for every replica
    for line in locked:
        if line.state == waiting_room.PRE_QUEUE and line.drop_id not in looked.turned:
            line.joined = uow.lines.joined(line)  # opens at the next turn, with its stock figure
            next_opening = min(next_opening or line.opens_at, line.opens_at)
        else:
            admitted += _turn_line(line, uow, looked, pre_queues, paced_at, min_order_seconds)
    uow.commit()
    return Turned(admitted, next_opening)


def _turn_line(line, uow, looked: _Looked, pre_queues: PreQueues, paced_at: datetime, min_order_seconds: float) -> int:
    """Turn one line (locked): close it if its drop's window has closed, write its next
    positions, admit its next buyers; how many were admitted."""
    now = utc_now()
    if line.state == waiting_room.CLOSED:  # closed while its pre-queue was being placed
        pre_queues.place(line, uow)
        return 0
    figures = looked.stock.get(line.drop_id)
    if figures is not None and figures.closed_by(paced_at):
        waiting_room.close_line(line, now)
        log.info("line closed: its drop's window has closed",
                 extra={"drop_id": str(line.drop_id), "closes_at": figures.closes_at.isoformat()})
        return 0
    if line.state == waiting_room.PRE_QUEUE:  # due, but another admitter held it at its opening
        return 0
    if waiting_room.placing(line):
        pre_queues.place(line, uow)
    if not waiting_room.placing(line):
        waiting_room.place_arrivals(line, uow, pre_queues.per_turn)
    line.joined = uow.lines.joined(line)
    if figures is None:
        return 0
    line.remaining_units = figures.remaining
    if not figures.open_to_all_by(paced_at):
        # A line may open before its drop (nothing asks inventory as the line is put on, so an
        # admin's PUT never fails while inventory is away): its positions are drawn, but a pass
        # given now could run out before its order may be placed. Admissions start with the sale
        # to everyone: during an invite-only phase the invited tier orders without a pass
        # (handlers.invited), and anyone else's order would be refused with their pass.
        return 0
    if figures.closes_at is not None:
        # the drop's window moved later (an admin extended it): passes cut short by its earlier
        # close run their whole time again
        uow.lines.lengthen_passes(line.drop_id, figures.closes_at, line.pass_ttl_seconds, now)
    active = passes_in_play(looked.holders[line.drop_id], figures.holding,
                            uow.lines.active_pass_holders(line.drop_id, now),
                            uow.lines.admitted_after(line.drop_id, looked.through[line.drop_id], line.admitted_through))
    admitted = _admit(line, uow, now, paced_at, looked.checkout_shedding, active, figures.closes_at, min_order_seconds)
    line.updated_at = now
    return admitted


def _open(uow, drop_id, figures) -> None:
    """Open a line that is due, in a transaction of its own: `line.open_line` holds the line
    against joins (FOR UPDATE) until this commits, for two reads. Not when another admitter
    holds the line (it opens it), nor when its drop's window has closed (the turn closes it)."""
    line = uow.lines.lock_to_open(drop_id)
    if line is None or (figures is not None and figures.closed_by(uow.lines.clock())):
        uow.rollback()
        return
    size = waiting_room.open_line(line, uow, utc_now())
    uow.commit()
    log.info("line opened; seed revealed", extra={"drop_id": str(drop_id), "pre_queue": size})


def passes_in_play(asked: list[str], holding: int, now_held: list[str], admitted_since: list[str]) -> int:
    """The passes to count against the units inventory said were left: those `asked` about,
    but the `holding` whose buyers already held a unit then, and every pass given since, read
    under the line's lock again: those `now_held` and those `admitted_since` the first lock,
    used or not. Between the two locks another admitter replica may have taken a whole turn on
    the line: its admissions, counted in full, keep the two replicas from admitting the same
    units twice, even when one of its buyers ordered after inventory answered (its pass is used,
    and the unit it holds was still among those left). One that ordered before inventory
    answered is counted twice: this turn admits one fewer, the next one makes it up."""
    return len(asked) - holding + len(set(now_held).union(admitted_since).difference(asked))


def until_next_turn(interval: float, next_opening: datetime | None, now: datetime) -> float:
    """Seconds to the next turn: `interval`, or less when a line opens sooner, so that a line
    opens at its opening time and not up to an interval after it."""
    if next_opening is None:
        return interval
    return min(interval, max(MIN_WAIT_SECONDS, (next_opening - now).total_seconds()))


def _admit(line, uow, now: datetime, paced_at: datetime, checkout_shedding: bool, active_passes: int,
           closes_at: datetime | None = None, min_order_seconds: float = MIN_ORDER_SECONDS) -> int:
    """Admit this turn's buyers at the line's pace: its current rate and the admissions it may
    still make (a token bucket refilled at that rate), kept on the line's row, so whichever
    replica turns the line next carries on from this turn. The time since the last turn is the
    database's (`paced_at`, this turn's transaction), never a replica's own clock: two replicas
    whose clocks disagree would otherwise each find more time passed than there was. A clock
    that goes back finds none; a gap counts as MAX_TURN_SECONDS at most."""
    since = 0.0 if line.paced_at is None else (paced_at - line.paced_at).total_seconds()
    elapsed = min(MAX_TURN_SECONDS, max(0.0, since))
    line.paced_at = paced_at
    if line.state != waiting_room.OPEN:
        line.pace_budget = 0.0
        line.observed_rate = 0.0
        return 0
    starting = line.pace_rate == 0.0
    line.pace_rate = waiting_room.next_rate(line.pace_rate or line.admission_rate, line.admission_rate,
                                            checkout_shedding, min(1.0, elapsed / MIN_TURN_SECONDS))
    # at most a second's worth saved up (one admission at least, so a rate under 1/s admits
    # too); a line's first open turn has one turn's worth, so its first second admits no more
    # than the rate either
    most = max(1.0, line.pace_rate)
    first = max(1.0, line.pace_rate * MIN_TURN_SECONDS)
    line.pace_budget = first if starting else min(most, line.pace_budget + line.pace_rate * elapsed)
    allowed = waiting_room.admissions_allowed(line.remaining_units, line.admission_factor, active_passes,
                                              line.pace_budget)
    if closes_at is not None and (closes_at - now).total_seconds() < min_order_seconds:
        # a pass given now would run out with the drop before its buyer could order: they keep
        # their place (the window may yet be extended) rather than spend their one turn
        allowed = 0
    positions = uow.lines.admit_next(line.drop_id, line.admitted_through, allowed, now,
                                     waiting_room.pass_expiry(now, line, closes_at))
    line.pace_budget -= len(positions)
    if positions:
        line.admitted_through = max(line.admitted_through, max(positions))
    # the admissions per second buyers' estimates use: a moving average over time, each turn
    # weighed by how long it covers (0.3 for a turn of MIN_TURN_SECONDS, at most 0.51 for a
    # turn after a gap), so replicas taking turns on the line, each covering part of that
    # time, add up to the same figure as one. It starts from the first turn's own figure
    # (warmed up from 0, it told the crowd at the opening a wait three times too long), that
    # turn taken to last a turn at least: the first batch would otherwise count as thousands a
    # second.
    if line.observed_rate == 0:
        line.observed_rate = len(positions) / max(elapsed, MIN_TURN_SECONDS)
    else:
        span = max(elapsed, MIN_WAIT_SECONDS)
        weight = 1 - 0.7 ** (span / MIN_TURN_SECONDS)
        line.observed_rate += weight * (len(positions) / span - line.observed_rate)
    return len(positions)


def run(root) -> None:
    """Turn every ADMITTER_INTERVAL_SECONDS, and at each line's opening, until SIGTERM.

    The admitter runs at the APIs' CPU priority, not `BACKGROUND_NICENESS` below them like the
    consumers and relays: it opens the lines and admits the buyers, so the orders of a drop with
    a line wait for its turns, and a turn starved by the rush it paces comes late."""
    settings = root.settings
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    turns = Turns(settings.heartbeat_file, LastSeen(root.engine, "admitter"))
    shedding = Shedding()
    pre_queues = PreQueues(settings.line_positions_per_turn)
    log.info("admitting", extra={"interval_seconds": settings.admitter_interval_seconds})
    while not stop.is_set():
        wait = settings.admitter_interval_seconds
        try:
            with root.unit_of_work() as uow:
                turned = turn(uow, root.inventory, shedding, pre_queues, settings.line_min_order_seconds)
            wait = until_next_turn(wait, turned.next_opening, utc_now())
            turns.worked()
        except Exception:  # the database restarting, say: the next turn tries again
            log.warning("admission turn failed", exc_info=True)
            turns.failed()
        stop.wait(wait)
    log.info("admitter stopped")
