"""A drop's waiting room: a fair, verifiable line in front of `POST /orders`.

How it works (the README's "The waiting room" says it for buyers and operators):

- An admin puts a line on a drop (`PUT /drops/{id}/line`). The line draws a secret seed and
  publishes its commitment, `sha256(seed)`, at once.
- A signed-in buyer joins (`POST /drops/{id}/line/tickets`) and gets a ticket, one per account:
  joining again, from any tab or device, returns the same ticket. Each join takes the next
  arrival number from a sequence; joins never queue on one another.
- At the opening the admitter (`python -m services.checkout admitter`) reveals the seed and puts
  everyone who joined before it in a random order: by `HMAC-SHA256(key=seed, message=ticket id)`,
  the ticket id written as its 36-character lower-case UUID, compared as hex, smallest first.
  Anyone holding the seed and the ticket ids (`GET /drops/{id}/line/order`) recomputes that order
  (`pre_queue_order` below). Those tickets get positions 1..N, `LINE_POSITIONS_PER_TURN` a
  turn from the opening's turn on (`place_pre_queue`), after the opening has committed, so it
  never holds joins back for long. Everyone who joins later gets N+1, N+2, ..., as many a
  turn, once the pre-queue is placed (`place_arrivals`): each turn places the joins committed
  since by arrival number. An edge process commits its batches one after another, so its joins
  keep their order; joins at different edge processes draw their numbers and commit apart, so
  two a few milliseconds apart may be placed either way round. Until a ticket has its position,
  polls show it `waiting` with none.
- Every half second the admitter admits the next positions, never putting more unused passes in
  play than the drop's remaining units x the line's admission factor (a pass whose buyer already
  holds a unit, its order in flight, is not counted again: inventory says which, with the units
  left, `POST /drops/{id}/holders`), and at no more than the
  admission rate (which the admin sets, and which halves while checkout turns orders away with
  429; see `next_rate`). An admitted buyer's ticket carries a pass: signed, bound to buyer,
  drop and ticket, valid `pass_ttl_seconds`. `POST /orders` on that drop requires it (header
  `Line-Pass`) and uses it up; an unused pass expires and its slot goes to the next buyer.
- The crowd polls the public status edge (`python -m services.checkout line-status`,
  services/checkout/line_status.py): `GET /drops/{id}/line/tickets/{ticket_id}` answers from a
  copy of the lines kept in memory and refreshed four times a second, so a poll costs no query
  (and a token check only once the line has admitted the ticket, for a token naming its buyer).
  It says the state, the people ahead, an estimated wait from the measured admission rate and
  when to poll again. Once the line reaches the buyer, that poll has the pass when it carries the
  buyer's token, and so has the buyer's own poll at checkout (`GET /drops/{id}/line/tickets/mine`). When the drop has no
  units left, everyone waiting is told `sold_out`; when held units come back (an unpaid hold
  expires) the line admits again.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Sequence

import jwt

from services.checkout import errors
from services.checkout.models import Line

PRE_QUEUE, OPEN, PAUSED, CLOSED = "pre_queue", "open", "paused", "closed"
# a ticket's states, as its buyer sees them
WAITING, ADMITTED, SOLD_OUT, EXPIRED, ORDERED = "waiting", "admitted", "sold_out", "expired", "ordered"
ALGORITHM = ("pre-queue order: ascending hex of HMAC-SHA256(key=seed, message=ticket id as its 36-character "
             "lower-case UUID); later arrivals follow by arrival number as their joins commit (joins a few "
             "milliseconds apart at different edge processes may be placed either way round)")
PASS_AUDIENCE = "floodgate-line"
# Waiting buyers poll at least this often, so that a sell-out reaches each within a few seconds.
WAITING_POLL_SECONDS = 3
# While checkout turns orders away, the admission rate halves each turn, down to this floor.
MIN_RATE = 1.0


def new_seed() -> bytes:
    return secrets.token_bytes(32)


def commitment_of(seed: bytes) -> str:
    return hashlib.sha256(seed).hexdigest()


def order_digest(seed: bytes, ticket_id: uuid.UUID | str) -> bytes:
    """What a pre-queue ticket is sorted by (see the module's docstring): the HMAC's bytes sort
    as its hex does, in half the memory (the admitter keeps one for every ticket of a pre-queue
    it reads ahead of the opening)."""
    return hmac.new(seed, str(ticket_id).lower().encode(), hashlib.sha256).digest()


def pre_queue_order(seed: bytes, ticket_ids: Iterable[uuid.UUID | str], digests: dict | None = None) -> list:
    """The tickets that joined before the opening, in the order they are admitted. `digests`:
    those of some tickets worked out already (`order_digest`), by ticket id."""
    digests = digests or {}
    return sorted(ticket_ids, key=lambda ticket_id: digests.get(ticket_id) or order_digest(seed, ticket_id))


@dataclass(frozen=True)
class LineSettings:
    opens_at: datetime
    admission_factor: float = 1.0
    admission_rate: float = 20.0
    pass_ttl_seconds: int = 120
    refuse_new_accounts: bool = False


def put_line(drop_id: uuid.UUID, wanted: LineSettings, uow, now: datetime) -> Line:
    """Put a line on the drop, or change its settings. The seed, the commitment and the
    opening are fixed once the line exists and has opened. Two admins putting a line on a drop
    at once make one line: the second finds the first's once it has committed, and changes it."""
    line = uow.lines.get(drop_id, lock=True)
    if line is None:  # a read locks no row that is not there: the insert is what waits for another
        seed = new_seed()
        uow.lines.add(Line(drop_id=drop_id, opens_at=wanted.opens_at, state=PRE_QUEUE, seed=seed,
                           commitment=commitment_of(seed), joined=0, placed=0, pre_queue_size=0, admitted_through=0,
                           observed_rate=0.0, pace_rate=0.0, pace_budget=0.0, created_at=now, updated_at=now))
        line = uow.lines.get(drop_id, lock=True)
    if line.opened_at is None:
        line.opens_at = wanted.opens_at
    elif wanted.opens_at != line.opens_at:
        raise errors.LineAlreadyOpen("The line has opened; its opening cannot move.")
    line.admission_factor = wanted.admission_factor
    _set_rate(line, wanted.admission_rate)
    line.pass_ttl_seconds = wanted.pass_ttl_seconds
    line.accounts_created_before = (line.accounts_created_before or now) if wanted.refuse_new_accounts else None
    line.updated_at = now
    return line


REOPENING = (OPEN, PAUSED)  # the states an admin may ask of a closed line


def change_line(drop_id: uuid.UUID, uow, now: datetime, *, state: str | None = None,
                admission_rate: float | None = None, admission_factor: float | None = None,
                drop_asked: bool = False, drop_closes_at: datetime | None = None) -> Line:
    """Pause, resume, close, reopen or re-rate a line (admin). A closed line opened again carries
    on from where it stopped; one closed before its opening goes back to waiting for it. It is
    opened again only if inventory was asked for its drop's close (`drop_asked`; None: it did
    not say) and that has not passed: the admitter would close the line again at its next turn."""
    line = uow.lines.get(drop_id, lock=True)
    if line is None:
        raise errors.LineNotFound("This drop has no line.")
    if line.state == CLOSED and state in REOPENING:
        if not drop_asked:  # closed by the admitter since the caller looked
            raise errors.LineClosed("The line closed as this request came in; send it again to open it again.")
        if drop_closes_at is not None and drop_closes_at <= now:
            raise errors.DropClosed(
                f"The drop closed at {drop_closes_at.isoformat()}; extend its window at inventory "
                f"(PATCH /drops/{drop_id} with a later closes_at) before opening its line again.")
    if state is not None:
        if state in REOPENING and line.opened_at is None:
            # A line that never opened opens at its opening time, and only then can it be paused:
            # a closed one asked `paused` once went back to waiting for an opening long past, and
            # the admitter opened it at its next turn.
            if line.state != CLOSED or state == PAUSED:
                raise errors.LineNotOpenYet("The line opens at its opening time; it can be paused after that.")
            state = PRE_QUEUE
        line.state = state
    if admission_rate is not None:
        _set_rate(line, admission_rate)
    if admission_factor is not None:
        line.admission_factor = admission_factor
    line.updated_at = now
    return line


def close_line(line: Line, now: datetime) -> None:
    """Close the line (the admitter, once its drop's window has closed): it admits nobody and
    takes no joins, its waiting buyers are told `closed`, and it leaves the admitter's turns and,
    a day later, the status edges' copy. An admin may open it again (`change_line`)."""
    line.state = CLOSED
    line.updated_at = now


def _set_rate(line: Line, ceiling: float) -> None:
    """The admin's new ceiling holds from now: the pace comes down to it at once (a higher
    ceiling is climbed to by the admitter, a quarter a turn)."""
    line.admission_rate = ceiling
    line.pace_rate = min(line.pace_rate, ceiling)


@dataclass(frozen=True)
class JoinRequest:
    drop_id: uuid.UUID
    buyer_id: str
    account_created_at: datetime | None  # the account's creation, from its access token


def join_many(wanted: list[JoinRequest], uow) -> list:
    """Joins that arrived together (the status edge gathers a few milliseconds' worth), made
    in one statement and one commit. For each request, in order: (ticket, new) — the ticket
    with what a poll shows of its line, see `ticket_view` — or the problem that refuses it.
    One ticket per account: joining again, from any tab or device, returns the first."""
    ticket_ids = [uuid.uuid4() for _ in wanted]
    made = uow.lines.join_many(list(zip(ticket_ids, wanted)))
    uow.commit()
    return [(made[ticket_id], True) if ticket_id in made else _not_joined(request, uow)
            for ticket_id, request in zip(ticket_ids, wanted)]


def _not_joined(request: JoinRequest, uow):
    found = uow.lines.ticket_and_line(request.drop_id, request.buyer_id)
    if found is not None:  # joined before, or twice in the same batch
        return found, False
    line = uow.lines.get(request.drop_id)
    if line is None:
        return errors.LineNotFound("This drop has no line.")
    if line.state == CLOSED:
        return errors.LineClosed("The line is closed.")
    return errors.AccountTooNew("This line takes only accounts created before it opened for joining.")


def open_line(line: Line, uow, now: datetime) -> int:
    """Reveal the seed and close the pre-queue (the admitter, at the opening, in a transaction of
    its own). The line is first locked against joins, so every join that began before the
    opening is in the pre-queue and every later one waits and arrives after it: the pre-queue is
    the tickets up to the last arrival number seen then. Their positions are written after the
    opening has committed (`place_pre_queue`), so joins wait on it for two reads whatever the
    line's size (writing 500,000 positions in it held them back for 17-24 s). Returns the
    pre-queue's size."""
    uow.lines.wait_for_joins(line.drop_id)
    size, last_arrival = uow.lines.pre_queue_bounds(line.drop_id)
    line.pre_queue_size = line.joined = size
    line.pre_queue_last_arrival = last_arrival
    line.placed = 0
    line.opened_at = now
    line.state = OPEN
    line.updated_at = now
    return size


def placing(line) -> bool:
    """Whether the pre-queue's positions are still being written (see `place_pre_queue`); its
    size is 0 until the opening."""
    return line.placed < line.pre_queue_size


def behind(line) -> bool:
    """Whether the line has more tickets waiting for a position than the admitter's last turn
    placed: a big pre-queue's, or the arrivals behind it (as many a turn)."""
    return line.placed < line.joined


def place_pre_queue(line: Line, uow, order: list, most: int) -> int:
    """Write the next `most` positions of the pre-queue, `order` being all of it in admission
    order (`pre_queue_order`). The positions handed out stay a prefix 1..placed: later arrivals
    are placed only once the whole pre-queue is (`place_arrivals`), and the admitter admits only
    placed positions. Returns how many were placed."""
    chunk = order[line.placed:line.placed + most]
    uow.lines.place(list(zip(chunk, range(line.placed + 1, line.placed + len(chunk) + 1))))
    line.placed += len(chunk)
    return len(chunk)


def place_arrivals(line: Line, uow, most: int) -> int:
    """Every turn once the pre-queue is placed: the first `most` tickets that joined since the
    opening and have no position yet get the next ones, by arrival number: first come, first
    served, as far as the joins committed by this turn tell (see the module's docstring).
    Returns how many."""
    placed = uow.lines.place_arrivals(line.drop_id, line.placed, most)
    line.placed += placed
    return placed


def admissions_allowed(remaining_units: int, factor: float, active_passes: int, budget_by_rate: float) -> int:
    """How many buyers may be admitted now: never more unused passes than remaining units x
    factor, and no more than the rate allows this turn. While a unit remains, one pass may be in
    play whatever the factor: with a factor under 1, floor(remaining x factor) is 0 for the last
    units (the last 9 at 0.1), which were then never offered, and the crowd never heard sold out."""
    remaining = max(0, remaining_units)
    by_stock = max(math.floor(remaining * factor), min(remaining, 1)) - active_passes
    return max(0, min(by_stock, math.floor(budget_by_rate)))


def next_rate(current: float, ceiling: float, checkout_shedding: bool, turns: float = 1.0) -> float:
    """The admission rate for the next turn: halved while checkout turns orders away (down to
    MIN_RATE, or the ceiling when lower), else back up towards the admin's ceiling by a quarter
    a turn. `turns` is the time since the line's last turn, in turns (at most 1): admitter
    replicas that share a line turn it more often between them, and each of their turns moves the
    rate by that share of a step, so it moves as fast whatever the number of replicas."""
    floor = min(MIN_RATE, ceiling)  # a line the admin set below MIN_RATE is never sped up to it
    if checkout_shedding:
        return max(floor, min(current, ceiling) * 0.5 ** turns)
    return min(ceiling, max(floor, current) * 1.25 ** turns)


def ticket_view(ticket, line, now: datetime, pass_secret: str) -> dict:
    """What the buyer's own poll answers (`GET .../line/tickets/mine`): state, people ahead,
    estimated wait, the pass when admitted, and when to poll again. `ticket` and `line` may be
    one row with the attributes of both (`Lines.ticket_and_line`)."""
    view = {"ticket_id": ticket.id, "drop_id": ticket.drop_id, "position": ticket.position, "ahead": None,
            "eta_seconds": None, "pass": None, "pass_expires_at": None}
    if ticket.used_at is not None:
        view.update(state=ORDERED, poll_after_seconds=None)
    elif ticket.admitted_at is not None:
        view.update(admission_view(ticket, now, pass_secret))
    else:
        view.update(place_view(ticket.position, line, now))
    return view


def admission_view(ticket, now: datetime, pass_secret: str) -> dict:
    """An admitted ticket's state for its buyer: `admitted` with its pass while that holds, else
    `expired`. `ticket` needs id, drop_id, buyer_id and pass_expires_at."""
    if ticket.pass_expires_at > now:
        return {"state": ADMITTED, "poll_after_seconds": 10, "pass": issue_pass(pass_secret, ticket),
                "pass_expires_at": ticket.pass_expires_at}
    return {"state": EXPIRED, "poll_after_seconds": None}


def place_view(position: int | None, line, now: datetime) -> dict:
    """What a place in the line shows, from the line's public figures alone: state, people
    ahead, estimated wait, when to poll again. The buyer's own poll and the public status edge
    (services/checkout/line_status.py) both answer with it. A position the line has reached is
    `admitted` whatever the line's state: a poll signed in as its buyer then has the pass, which
    `POST /orders` takes until it expires, even once the line has closed (a buyer admitted just
    before an admin closed it was once told `closed`, and never heard of the pass)."""
    view = {"position": position, "ahead": None, "eta_seconds": None}
    if position is not None and position <= line.admitted_through:
        # a closed line admits nobody more and its passes only run out: no need to ask again
        return {**view, "state": ADMITTED, "poll_after_seconds": None if line.state == CLOSED else 10}
    if line.state == CLOSED:
        return {**view, "state": CLOSED, "poll_after_seconds": None}
    if line.state == PRE_QUEUE:
        seconds_left = (line.opens_at - now).total_seconds()
        return {**view, "state": PRE_QUEUE, "poll_after_seconds": max(1, min(30, int(seconds_left / 2)))}
    if line.remaining_units == 0:
        return {**view, "state": SOLD_OUT, "poll_after_seconds": 10}  # held units may come back
    if line.state == PAUSED:
        # the buyer keeps their place and hears that the line has stopped, not an estimate that
        # never comes down: it goes on from where it stopped
        ahead = None if position is None else max(0, position - line.admitted_through - 1)
        return {**view, "state": PAUSED, "ahead": ahead, "poll_after_seconds": WAITING_POLL_SECONDS}
    if position is None:  # placed within a turn, or within seconds while the line is behind
        return {**view, "state": WAITING, "poll_after_seconds": WAITING_POLL_SECONDS if behind(line) else 1}
    ahead = max(0, position - line.admitted_through - 1)
    eta = math.ceil(ahead / line.observed_rate) if line.observed_rate > 0 else None
    return {**view, "state": WAITING, "ahead": ahead, "eta_seconds": eta, "poll_after_seconds": poll_after(eta)}


def poll_after(eta_seconds: int | None) -> int:
    """When a waiting buyer polls again: after half their estimated wait, between 1 s and
    WAITING_POLL_SECONDS. The buyers the line is about to reach hear of their admission within a
    second, instead of up to WAITING_POLL_SECONDS later while their pass holds a unit nobody
    orders; the rest of the crowd polls no more often than before."""
    if eta_seconds is None:
        return WAITING_POLL_SECONDS
    return max(1, min(WAITING_POLL_SECONDS, math.ceil(eta_seconds / 2)))


def issue_pass(secret: str, ticket) -> str:
    """The admission pass: signed, bound to buyer, drop and ticket, expiring with the admission."""
    claims = {"sub": ticket.buyer_id, "drop": str(ticket.drop_id), "tkt": str(ticket.id), "aud": PASS_AUDIENCE,
              "exp": int(ticket.pass_expires_at.timestamp())}
    return jwt.encode(claims, secret, algorithm="HS256")


def _pass_claims(keys: str | Sequence[str], presented: str) -> dict:
    """A pass's claims, when it is genuine and unexpired (whoever's it is). `keys`: the key
    passes are signed with, or the keys they may be signed with during a rotation (current
    first: `Settings.line_pass_secrets`)."""
    for secret in (keys,) if isinstance(keys, str) else keys:
        try:
            return jwt.decode(presented, secret, algorithms=["HS256"], audience=PASS_AUDIENCE,
                              options={"require": ["exp", "sub", "drop", "tkt"]})
        except jwt.InvalidSignatureError:
            continue  # another key's, perhaps
        except jwt.ExpiredSignatureError:
            raise errors.LinePassExpired("The admission pass has expired; the line gave the slot to the next buyer.")
        except jwt.PyJWTError:
            break
    raise errors.LinePassInvalid("The admission pass is not valid.")


def current_pass_ticket(secret: str | Sequence[str], presented: str | None) -> str | None:
    """The ticket of `presented` when it is a genuine, unexpired pass (the line admitted its
    holder; whether it is this buyer's, for this drop, `verify_pass` says once the buyer is
    known), else None."""
    if not presented:
        return None
    try:
        return str(_pass_claims(secret, presented)["tkt"])
    except errors.LinePassRefused:
        return None


def verify_pass(secret: str | Sequence[str], presented: str, buyer_id: str, drop_id: str) -> uuid.UUID:
    """The ticket a pass admits, when it is genuine, unexpired, and this buyer's for this drop."""
    claims = _pass_claims(secret, presented)
    if claims["sub"] != buyer_id or claims["drop"] != str(drop_id):
        raise errors.LinePassInvalid("The admission pass is for another buyer or another drop.")
    try:
        return uuid.UUID(claims["tkt"])
    except (ValueError, TypeError, AttributeError):
        raise errors.LinePassInvalid("The admission pass is not valid.")


def pass_expiry(now: datetime, line: Line, closes_at: datetime | None = None) -> datetime:
    """When a pass given `now` runs out: after the line's pass time, or when the drop closes, if
    that is sooner (a buyer let in five seconds before the close is told so, not "order within
    two minutes", then refused as the drop is closed)."""
    expiry = now + timedelta(seconds=line.pass_ttl_seconds)
    return min(expiry, closes_at) if closes_at is not None else expiry


class JoinLimit:
    """Joins per client address per minute, counted in this process (each line-status edge
    process counts its own: with N of them behind a balancer a client gets up to N times the
    limit). The address is the edge's `client_address`: behind an ingress, TRUSTED_PROXY_HOPS."""

    def __init__(self, per_minute: int, clock=None):
        self._per_minute = per_minute
        self._clock = clock or time.monotonic
        self._minute: int | None = None
        self._counts: dict[str, int] = {}  # this minute's joins by client
        self._lock = threading.Lock()

    def take(self, client: str) -> int | None:
        """None when `client` may join now, else the seconds until it may. Constant time however
        many clients a minute brings: the counts start afresh with each minute (the edge calls
        this on its event loop; a crowd of 100,000 addresses at an opening once cost it a sweep of
        every count per join)."""
        now = self._clock()
        minute = int(now // 60)
        with self._lock:
            if minute != self._minute:
                self._minute, self._counts = minute, {}
            count = self._counts.get(client, 0)
            if count >= self._per_minute:
                return max(1, int(60 - now % 60))
            self._counts[client] = count + 1
        return None
