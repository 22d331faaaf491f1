"""An order placed at most once per `Idempotency-Key`, and every retry answered as the first was.

A buyer who retries (a timeout, a double click, a crash between request and answer) sends the
same key: they get the very bytes of the first answer, with `Idempotent-Replayed: true`, and
never a second order. The same key with another body is refused (`422 idempotency-key-reused`).

The key is claimed in the order's own transaction, and the order, its history, its `order.placed`
outbox row and the key's answer commit together, so there is never a claim without an answer: a
concurrent duplicate waits on the key until the first commits (and then replays its answer) or
rolls back (and then takes the key itself). A claim without an answer can only have been left by
a version that committed claims on their own: the retry takes it over, which is safe because the
order id comes from the key and inventory's hold is idempotent by order id.

A definitive refusal (a 4xx other than 429: sold out, not open, a limit reached) is the key's
answer from then on. A 5xx or a 429 is not remembered: it leaves the unit of work uncommitted,
the claim rolls back with it, and the buyer's retry starts afresh.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable

from services.checkout import errors, handlers
from services.checkout.inventory_client import InventoryClient
from services.checkout.models import Order
from services.checkout.payments import PaymentProvider
from shared.errors import Problem

log = logging.getLogger("floodgate.checkout")


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
               render: Callable[[Order], dict], instance: str) -> Answer:
    """Place `cmd`'s order in `uow` (entered, not yet committed) unless its key already has an
    answer, and return the answer; commits when the answer is one to keep.

    `render` is the order as the API shows it (the 201 body), `instance` the request's path (a
    refusal's problem document names it). Raises `IdempotencyKeyReused` for another body, and
    whatever 5xx or 429 the placement raised, uncommitted."""
    held = uow.idempotency_keys.claim(cmd.buyer_id, cmd.idempotency_key, cmd.fingerprint)
    if held is not None:
        if held.fingerprint != cmd.fingerprint:
            raise errors.IdempotencyKeyReused()
        if held.response_status is not None:
            return Answer(held.response_status, held.response_body, replayed=True)
        log.warning("took over an unanswered idempotency key")
    try:
        order = handlers.place_order(cmd, uow, inventory, provider, settings)
    except Problem as problem:
        if not is_definitive(problem):
            raise
        answer = Answer(problem.status, json.dumps(dict(problem.to_dict(), instance=instance)))
    else:
        answer = Answer(201, json.dumps(render(order)), location=f"/orders/{order.id}")
    uow.idempotency_keys.answer(cmd.buyer_id, cmd.idempotency_key, answer.status, answer.body)
    uow.commit()
    return answer


def is_definitive(refusal: Problem) -> bool:
    """Whether the same request would be refused again: any 4xx but 429 (try again later) and
    a refused line pass (a header the key's fingerprint does not cover)."""
    return refusal.status < 500 and refusal.status != 429 and getattr(refusal, "remembered", True)
