"""An order placed at most once per `Idempotency-Key`, and every retry answered as the first was.

A buyer who retries (a timeout, a double click, a crash between request and answer) sends the
same key: they get the very bytes of the first answer, with `Idempotent-Replayed: true`, and
never a second order. The same key with another body is refused (`422 idempotency-key-reused`).

No transaction is open while inventory holds the units, so behind PgBouncer's transaction
pooling an order in flight takes a server connection only for its statements, not for the HTTP
call: a slow inventory does not make checkout's orders queue for connections (and time out as
503s) ahead of the load shedding's 429s. An order is:

1. Its line pass checked, with no database read (`handlers.admitted_ticket`): a refused pass
   holds nothing (its key's answer, if it has one, is the answer instead). On a drop with a
   line, an order goes without one only in the drop's invite-only phase (`handlers.invited`):
   its hold made in the phase, or inventory's refusal of a hold asked for the phase only that
   only an invited buyer hears (sold out, a limit, a country).
2. The hold at inventory, idempotent by the order id, which is derived from the key and the
   body: the same key with another body asks for another hold (and is refused at the claim).
3. One transaction: the key is claimed, and the order, its history, its `order.placed` outbox
   row and the key's answer commit together, so there is never a claim without an answer. A
   key that has its answer (a retry, or a concurrent duplicate, which waits on the key's unique
   index until the first commits) is answered with it, and the hold it got is given back
   unless that answer placed this very order. A claim without an answer can only have
   been left by a version that committed claims on their own: the retry takes it over.

A hold refused after it (no pass yet, a pass used or expired, the address at its limit) is given
back while the key's claim is still held: a concurrent request with the same key and body,
waiting on the claim with that hold (a 200), asks inventory once more once it has the key,
finds the units back and holds them again instead of ordering on a hold that is gone. A refusal
kept as the key's answer gives the hold back whoever made it (an earlier attempt of this key
that failed outright, say): no order will ever have its id. One that is not kept (a refused
pass) gives back only a hold this request made (inventory answered it 201): its maker may be
ordering on it. A request that fails outright (a 5xx: a bug, a deadlock) gives back the hold it
made, and nothing is kept for the key: left, the hold counted against the buyer's limit for a
hold time, and their retry with another key or a changed body was refused
(`_give_back_unanswered`: only while the failed transaction still holds the key's claim; after a
lost connection the hold runs out on its own, and the same key and body use it). Only the first
hold is asked with no transaction open: every later call (the give-backs, the second ask, the
renewal) is made while the claim is held, which is what keeps a request with the same key and
body waiting; each is on a rare path. A
give-back inventory does not take (it is away) is logged, and the hold runs out on its own: the
buyer still gets the refusal, not a 503; the second ask, when inventory does not answer, leaves
the order on the hold in hand. (A hold inventory made but whose answer never came, a timeout,
is not known here: it runs out on its own, and only the same key and body use it meanwhile.)

The statements are the ones a single transaction around the call would send, in another order:
no read before the hold, nothing more per order. A retry therefore reaches inventory: an
answered key's retry is answered from the database when inventory fails or checkout sheds,
and a refused key's retry may hold a unit for a moment before its answer gives it back.

A definitive refusal (a 4xx other than 429: sold out, not open, a limit reached) is the key's
answer for `REFUSED_KEY_RETENTION_SECONDS` (two days, longer than any hold); then the consumer's housekeeping deletes the
key (a lineless drop's crowd leaves one per buyer), and a request with it is handled as a new one
(no order ever had its order id: it may place one now). A key that placed an order keeps its
answer as long as the order. A 5xx or a 429 is not remembered: nothing is committed, and the buyer's
retry starts afresh. The same key with another body, when the key placed an order, is refused
with that order's id (`order_id`, and its path as `order`), so the buyer knows they have one.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Callable, TypeVar

from services.checkout import errors, handlers
from services.checkout.inventory_client import Hold, InventoryClient
from services.checkout.models import Order
from services.checkout.payments import PaymentProvider
from shared import db
from shared.errors import Problem
from shared.logs import bind_order_id

log = logging.getLogger("floodgate.checkout")
T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    """What the buyer is sent for their key: the status and body kept with it, and the headers
    that go with them this time."""

    status: int
    body: str
    replayed: bool = False
    location: str | None = None

    @property
    def media_type(self) -> str:
        return "application/problem+json" if self.status >= 400 else "application/json"

    @property
    def headers(self) -> dict[str, str]:
        headers = {}
        if self.replayed:
            headers["Idempotent-Replayed"] = "true"
        if self.location is not None:
            headers["Location"] = self.location
        return headers


def place_once(cmd: handlers.PlaceOrder, uow, inventory: InventoryClient, provider: PaymentProvider, settings, *,
               render: Callable[[Order], dict], instance: str, drops_with_lines: set[uuid.UUID]) -> Answer:
    """Place `cmd`'s order with `uow` (entered) unless its key already has an answer, and return
    the answer; commits when the answer is one to keep (the module's docstring says the steps).

    `render` is the order as the API shows it (the 201 body), `instance` the request's path (a
    refusal's problem document names it), `drops_with_lines` the drops this process has seen a
    line on (`handlers.admitted_ticket`). Raises `IdempotencyKeyReused` for another body, a
    refused line pass, and whatever 5xx or 429 the placement raised, with nothing committed."""
    bind_order_id(str(cmd.order_id))  # the request's log lines and span name the order from here
    try:
        ticket_id = handlers.admitted_ticket(cmd, settings, drops_with_lines)
        # read once: another order may add the drop to `drops_with_lines` while this one's hold is asked
        invited_only = handlers.asks_invited_only(cmd, drops_with_lines)
        hold, refusal = _definitive(lambda: handlers.hold_units(cmd, inventory, invited_only))
    except Problem as failed:  # a refused pass, inventory away or busy: a key with its answer is answered with it
        return _answered_or_raise(cmd, uow, failed)
    in_hand = InHand(hold, invited_only=invited_only)
    try:
        answer = _answer_with_hold(cmd, in_hand, refusal, ticket_id, uow, inventory, provider, settings,
                                   render=render, instance=instance, drops_with_lines=drops_with_lines)
    except Exception as failed:
        if _unanswered(failed):
            _give_back_unanswered(cmd, in_hand, failed, inventory)
        raise
    if answer.replayed:
        return answer
    uow.commit()  # not in the try: a commit that fails may have committed, and the hold is then the order's
    return answer


def _unanswered(failed: Exception) -> bool:
    """Whether `failed` left the buyer without an answer to keep: a 5xx or a 429, or any error
    that is not a problem. A refusal (`_answer_with_hold` gave back what it had to) is not."""
    if not isinstance(failed, Problem):
        return True
    return getattr(failed, "remembered", True) and not is_definitive(failed)


@dataclass
class InHand:
    """The hold a request has, as inventory answered it last (asked again, or held again), and
    whether it has claimed the key."""

    hold: Hold | None
    claimed: bool = False
    invited_only: bool = False  # the first hold was asked for the drop's invite-only phase only


def _give_back_unanswered(cmd: handlers.PlaceOrder, in_hand: InHand, failed: Exception,
                          inventory: InventoryClient) -> None:
    """After a 5xx (a bug, a deadlock), give back the hold this request made (inventory answered
    it 201), while its transaction still holds the key's claim: a request with this key and body
    waiting on the claim then asks inventory again and holds the units again. Left, the hold
    counted against the buyer's limit for a hold time: a retry with another key, or with the
    address corrected, was refused `limit-exceeded`.

    Not after a lost connection (`db.unavailable`: the claim went with it, however soon the
    database answers again), nor before the key was claimed: a request with this key and body
    may have claimed the key since and placed its order on this very hold. That hold runs out on its own, and the same key and body use it meanwhile (the
    drop page retries a 503 with them). Asking the database again whether the key was answered
    could wait as long as the outage."""
    if in_hand.claimed and not db.unavailable(failed):
        _give_back_own(in_hand.hold, cmd, inventory)


def _give_back_own(hold: Hold | None, cmd: handlers.PlaceOrder, inventory: InventoryClient) -> None:
    """Give back `hold` if this request made it (inventory answered it 201): one it did not make
    is its maker's, which may be ordering on it."""
    if hold is not None and hold.created:
        handlers.give_back_hold(inventory, str(cmd.order_id))


def _answer_with_hold(cmd: handlers.PlaceOrder, in_hand: InHand, refusal: Problem | None, ticket_id, uow,
                      inventory: InventoryClient, provider: PaymentProvider, settings, *,
                      render: Callable[[Order], dict], instance: str, drops_with_lines: set[uuid.UUID]) -> Answer:
    """The answer to `cmd` once inventory has answered its hold (`in_hand`, kept up to date as
    it is asked again, or the definitive `refusal`): an earlier request's answer for the key,
    replayed, or this one's, written as the key's answer (not committed). A hold given back on
    the way is this request's own, or one no order will ever use."""
    hold = in_hand.hold
    held = uow.idempotency_keys.claim(cmd.buyer_id, cmd.idempotency_key, cmd.fingerprint)
    in_hand.claimed = True
    if held is not None:
        if held.response_status is not None or held.fingerprint != cmd.fingerprint:
            # a retry, or a concurrent request with this key answered first
            uow.rollback()  # no transaction open across the release's HTTP call
            in_hand.claimed = False  # gone with the rollback
            if hold is not None and not _placed(held, cmd.order_id):
                handlers.give_back_hold(inventory, str(cmd.order_id))  # no order has this id, nor ever will
            return _earlier_answer(cmd, held)
        log.warning("took over an unanswered idempotency key")
    lined = ticket_id is None and handlers.has_line(cmd, uow, drops_with_lines)
    if lined and not handlers.invited(hold, refusal, in_hand.invited_only):
        # also when inventory refused: a refusal kept as the key's answer would stand after the buyer got a pass
        _give_back_own(hold, cmd, inventory)
        raise handlers.pass_required()
    invited_only = lined  # asked from here on for the phase only when the drop has a line and no pass came
    if hold is not None and not hold.created:
        # An earlier request's hold, which that request may have given back since (refused after
        # it): asked again now that this one has the key (the module's docstring).
        try:
            hold, refusal = _definitive(lambda: handlers.hold_units(cmd, inventory, invited_only, batched=False))
            in_hand.hold = hold
        except Problem:  # inventory away or busy: the hold in hand stands
            pass
    if isinstance(refusal, errors.HoldReleased):
        # This key's earlier attempt was refused after its hold, which went back, and kept no
        # answer: this attempt holds the units again (a rare path, made while the claim is held;
        # a retry of an answered key never gets here, so never takes units back for an order
        # that ended).
        hold, refusal = _definitive(lambda: handlers.hold_units(cmd, inventory, invited_only, again=True))
        in_hand.hold = hold
    if lined and not handlers.invited(hold, refusal, invited_only):
        # asked again (for the phase only: the drop is known to have a line now) after the phase
        # ended: the hold an invited buyer's earlier attempt made is gone, and the line is the way
        _give_back_own(hold, cmd, inventory)
        raise handlers.pass_required()
    if refusal is None:
        try:
            order, refusal = _definitive(lambda: handlers.place_order(cmd, hold, ticket_id, uow, provider, settings))
        except Problem as failed:
            if not getattr(failed, "remembered", True):  # a refused pass: not the key's answer
                _give_back_own(hold, cmd, inventory)
            raise
        if refusal is not None:
            # Refused after its hold, the refusal kept as the key's answer: no order will ever
            # have this id, whoever made the hold (an earlier attempt that failed outright: left,
            # it held the unit and the buyer's limit for a hold time). A request with this key
            # and body waiting on the claim is answered with the refusal, and orders nothing.
            handlers.give_back_hold(inventory, str(cmd.order_id))
    if refusal is None:
        answer = Answer(201, json.dumps(render(order)), location=f"/orders/{order.id}")
    else:
        answer = Answer(refusal.status, json.dumps(dict(refusal.to_dict(), instance=instance)))
    uow.idempotency_keys.answer(cmd.buyer_id, cmd.idempotency_key, answer.status, answer.body)
    return answer


def _definitive(step: Callable[[], T]) -> tuple[T | None, Problem | None]:
    """`step()`'s result and None, or None and the definitive refusal it raised, which becomes
    the key's answer; a refusal that is not (a 5xx, a 429) propagates."""
    try:
        return step(), None
    except Problem as problem:
        if not is_definitive(problem):
            raise
        return None, problem


def _answered_or_raise(cmd: handlers.PlaceOrder, uow, failed: Problem) -> Answer:
    """The key's answer if an earlier request with it has one (a retry of an order placed with a
    pass that has expired since, or while inventory does not answer), else `failed` raised."""
    earlier = uow.idempotency_keys.find(cmd.buyer_id, cmd.idempotency_key)
    answer = None if earlier is None else _earlier_answer(cmd, earlier)
    if answer is None:
        raise failed
    return answer


def _placed(held, order_id: uuid.UUID) -> bool:
    """Whether the key's answer placed the order `order_id` (an answer from before the order id
    took the body in names another id, so a retry's new hold is given back)."""
    return held.response_status == 201 and json.loads(held.response_body).get("id") == str(order_id)


def _earlier_answer(cmd: handlers.PlaceOrder, held) -> Answer | None:
    """The answer an earlier request with this key was given, replayed; None if it has none
    (taken over). The same key with another body is refused."""
    if held.fingerprint != cmd.fingerprint:
        if held.response_status == 201:
            # the buyer has an order under this key (its answer lost, say): say which, so they
            # do not take the refusal of the changed body for "no order"
            order_id = json.loads(held.response_body)["id"]
            raise errors.IdempotencyKeyReused(
                "This Idempotency-Key was sent with a different request body, and placed order "
                f"{order_id} with the first one: that order stands.", order_id=order_id, order=f"/orders/{order_id}")
        raise errors.IdempotencyKeyReused()
    if held.response_status is None:
        return None
    location = f"/orders/{json.loads(held.response_body)['id']}" if held.response_status == 201 else None
    return Answer(held.response_status, held.response_body, replayed=True, location=location)


def is_definitive(refusal: Problem) -> bool:
    """Whether the same request would be refused again: any 4xx but 429 (try again later) and
    a refused line pass (a header the key's fingerprint does not cover)."""
    return refusal.status < 500 and refusal.status != 429 and getattr(refusal, "remembered", True)
