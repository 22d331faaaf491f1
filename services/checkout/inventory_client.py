"""Inventory over HTTP: the order path's one outgoing call, behind timeouts and a circuit breaker."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import urllib3
from urllib3.util import Retry

from services.checkout import errors
from shared import tracing
from shared.errors import Problem
from shared.logs import current_request_id, log_context

log = logging.getLogger("floodgate.checkout.inventory")
# the buyers one `POST /drops/{id}/holders` may name (inventory's schemas.MAX_HOLDERS_ASKED)
MAX_HOLDERS_ASKED = 100_000

_PROBLEMS = {
    "sold-out": errors.SoldOut,
    "not-enough-stock": errors.NotEnoughStock,
    "not-open": errors.SaleNotOpen,
    "drop-not-found": errors.DropNotFound,
    "limit-exceeded": errors.LimitExceeded,
    "invite-only": errors.InviteOnly,
    "not-invite-phase": errors.NotInvitePhase,
    "country-not-allowed": errors.CountryNotAllowed,
    # inventory's database did not answer for this hold (nothing was held): try again shortly
    "database-unavailable": errors.InventoryUnavailable,
    # a sale or renewal for an older state of the order than the one that released its units
    "stale-order-version": errors.StaleOrderVersion,
}


@dataclass(frozen=True)
class Hold:
    order_id: str
    drop_id: str
    quantity: int
    hold_expires_at: datetime
    unit_amount: int
    currency: str
    sku: str
    product_name: str
    created: bool = True  # False: inventory answered an earlier request's hold for this order id (200)
    # made during the drop's invite-only phase, so for a buyer of its tier: on a drop with a line
    # the order needs no pass then (False from an inventory that does not say)
    invite_phase: bool = False


@dataclass(frozen=True)
class DropStock:
    """What the waiting room's admitter hears of a drop each turn: its units nobody holds, how
    many of the buyers it asked about hold or bought one, when its window closes and opens, and
    when its invite-only phase ends (None without one, or from an inventory that does not say)."""

    remaining: int
    holding: int = 0
    closes_at: datetime | None = None
    opens_at: datetime | None = None
    invite_only_until: datetime | None = None

    def closed_by(self, now: datetime) -> bool:
        return self.closes_at is not None and self.closes_at <= now

    def open_by(self, now: datetime) -> bool:
        return self.opens_at is None or self.opens_at <= now

    def open_to_all_by(self, now: datetime) -> bool:
        """Open, and past its invite-only phase: anyone may order."""
        return self.open_by(now) and (self.invite_only_until is None or self.invite_only_until <= now)

    @classmethod
    def of(cls, figures: dict) -> "DropStock":
        """From `POST /drops/{id}/holders`' answer, or `GET /drops/{id}`'s (no holders: 0)."""
        moments = [figures.get(name) for name in ("closes_at", "opens_at", "invite_only_until")]
        return cls(int(figures["remaining"]), int(figures.get("holding", 0)),
                   *(datetime.fromisoformat(moment) if moment else None for moment in moments))


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; while open, calls fail at once.

    After `cooldown_seconds` one trial call is let through: success closes it, failure reopens it.
    """

    def __init__(self, threshold: int, cooldown_seconds: float, clock=time.monotonic):
        self._threshold = threshold
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            if self._opened_at is None:
                return True
            if self._clock() - self._opened_at >= self._cooldown:
                self._opened_at = self._clock()  # one trial per cooldown
                return True
            return False

    def retry_after(self) -> int:
        return max(1, int(self._cooldown))

    def succeeded(self) -> None:
        with self._lock:
            self._failures, self._opened_at = 0, None

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self._threshold:
                if self._opened_at is None:
                    log.warning("inventory circuit opened", extra={"failures": self._failures})
                self._opened_at = self._clock()


class _Waiting:
    """One thread's item in a `Batcher`: its result once answered, and whether it holds a turn."""

    __slots__ = ("item", "result", "answered", "sends")

    def __init__(self, item):
        self.item, self.result, self.answered, self.sends = item, None, False, False


class Batcher:
    """Gathers what this process's threads ask for at the same moment into one call.

    A thread that asks while fewer than `max_calls` calls are in flight sends at once: itself and
    whoever waits, up to `max_size` items. Otherwise it waits, and the next free call takes it.
    One thread alone is sent at once, so an idle stack pays no latency for this; under load,
    concurrent orders share one request to inventory and one transaction there.

    `send` takes a list of items and returns one result per item, in order; a result that is an
    exception is raised in the thread that asked for it. Should `send` itself raise, that thread
    gets its exception and the batch's other threads an `InventoryUnavailable`.
    """

    def __init__(self, send: Callable[[list], list], max_size: int, max_calls: int):
        self._send, self._max_size, self._max_calls = send, max_size, max_calls
        self._changed = threading.Condition()
        self._queue: deque[_Waiting] = deque()
        self._calls = 0  # threads holding a turn to send

    def submit(self, item):
        mine = _Waiting(item)
        try:
            with self._changed:
                self._queue.append(mine)
                if self._calls < self._max_calls:
                    self._calls += 1
                    mine.sends = True
                while not (mine.answered or mine.sends):
                    self._changed.wait()
            if mine.sends:
                self._send_until_answered(mine)
        finally:
            with self._changed:
                if not mine.answered and mine in self._queue:
                    self._queue.remove(mine)  # leaving unanswered (an exception): nobody sends it
                if mine.sends:
                    self._pass_turn(mine)
        if isinstance(mine.result, BaseException):
            raise mine.result
        return mine.result

    def _send_until_answered(self, mine: _Waiting) -> None:
        """Send batches from the queue's head until `mine` is answered; `submit` passes the turn on."""
        while True:
            with self._changed:
                if mine.answered:
                    return
                batch = [self._queue.popleft() for _ in range(min(self._max_size, len(self._queue)))]
                if not batch:  # mine is in another thread's call: give the turn back, wait
                    self._pass_turn(mine)
                    while not mine.answered:
                        self._changed.wait()
                    return
            self._answer(batch, mine)

    def _pass_turn(self, mine: _Waiting) -> None:
        """Give the turn `mine` holds to the first waiting thread without one, or give it up.
        With the condition held."""
        mine.sends = False
        for waiting in self._queue:
            if not waiting.sends:
                waiting.sends = True
                break
        else:
            self._calls -= 1
        self._changed.notify_all()

    def _answer(self, batch: list[_Waiting], mine: _Waiting) -> None:
        """Send `batch` and hand each waiting thread its result. Should the call raise, `mine` (the
        sender's own item) gets the error if it was in the batch, the others a fresh
        `InventoryUnavailable` each, and a sender whose item was not in it carries on sending;
        should it answer another number of results than items, every item gets one."""
        failure = None
        try:
            results = self._send([waiting.item for waiting in batch])
        except BaseException as error:  # the others must not wait forever
            failure = error
            log.exception("the batched call to inventory failed")
            results = [_not_taken() for _ in batch]
        if len(results) != len(batch):  # a call must answer every item, or some would wait forever
            log.error("a batched call answered %d of %d items", len(results), len(batch))
            results = [_not_taken() for _ in batch]
        with self._changed:
            for waiting, result in zip(batch, results):
                waiting.result, waiting.answered = result, True
            if failure is not None and any(waiting is mine for waiting in batch):
                mine.result = failure
            self._changed.notify_all()


class InventoryClient:
    """Reserves and releases stock; turns inventory's problems into checkout's typed errors.

    New holds go through a `Batcher` (`hold_batch_size` > 1): orders placed at the same moment in
    this process share one `POST /reservations/batch`."""

    def __init__(self, base_url: str, service_key: str, timeout_seconds: float, breaker: CircuitBreaker,
                 hold_batch_size: int = 1, hold_calls: int = 1):
        self._breaker = breaker
        self._headers = {"X-Service-Key": service_key, "Content-Type": "application/json"}
        self._prefix = (urllib3.util.parse_url(base_url).path or "").rstrip("/")
        # urllib3's pool without requests on top: requests' per-call work (environment proxies,
        # cookies, hooks) cost more CPU than the rest of the call. One retry for a pooled
        # connection inventory closed (it restarted): every call here is idempotent (by order
        # id), so sending it again is safe.
        self._pool = urllib3.connection_from_url(
            base_url,
            maxsize=32,
            timeout=urllib3.Timeout(connect=min(1.0, timeout_seconds), read=timeout_seconds),
            retries=OnceMoreIfClosed(total=1, connect=1, read=1, status=0, other=0, allowed_methods=None,
                                     raise_on_status=False, redirect=0),
        )
        self._holds = Batcher(self._hold_batch, hold_batch_size, hold_calls) if hold_batch_size > 1 else None

    def close(self) -> None:
        """Close the pooled connections to inventory."""
        self._pool.close()

    def reserve(
        self,
        order_id: str,
        drop_id: str,
        buyer_id: str,
        quantity: int,
        buyer_tier: str | None = None,
        shipping_country: str | None = None,
        renew: bool = False,
        order_version: int | None = None,
        guarded: bool = True,
        batched: bool = True,
        invited_only: bool = False,
    ) -> Hold:
        """Hold `quantity` units for `order_id` (idempotent by order id; `renew` re-holds a released
        one). `order_version`: the order's version once this hold serves it (1 for a new order).
        `invited_only`: only during the drop's invite-only phase, else `NotInvitePhase`.
        `guarded=False`: past the circuit breaker and the batcher (see `_call`); `batched=False`:
        past the batcher only."""
        body = {"order_id": order_id, "drop_id": drop_id, "buyer_id": buyer_id, "quantity": quantity,
                "buyer_tier": buyer_tier, "shipping_country": shipping_country, "renew": renew or None,
                "order_version": order_version, "invited_only": invited_only or None}
        body = {k: v for k, v in body.items() if v is not None}
        if self._holds is None or renew or not guarded or not batched:
            return self._reserve_one(body, guarded)
        # The order's trace shows its wait; the call that carries its hold is in the trace of the
        # call's first order, linked from here.
        with tracing.span("inventory hold", attributes={"floodgate.hold.batched": True}) as waiting:
            return self._holds.submit(({**body, "request_id": current_request_id()}, waiting))

    def _reserve_one(self, body: dict, guarded: bool = True) -> Hold:
        response = self._call("/reservations", body, guarded=guarded)
        return self._hold_of(response.status, _document(response))

    def _hold_batch(self, items: list[tuple[dict, object]]) -> list:
        """One `POST /reservations/batch` for `items` (each a hold's body and the span of the order
        waiting for it): a Hold or the error to raise, per item."""
        holds = [body for body, _ in items]
        try:
            with tracing.span("inventory hold batch", attributes={"floodgate.hold.batch_size": len(holds)},
                              links=[waiting for _, waiting in items]):
                response = self._call("/reservations/batch", {"holds": holds})
        except errors.InventoryUnavailable as error:
            return [errors.InventoryUnavailable(error.detail, headers=error.headers) for _ in items]
        if response.status in (404, 405, 422):
            # an inventory older than the batch (a rolling deploy), or one hold it cannot take
            # (the batch is refused whole): one call per hold, so each gets its own answer
            return [_outcome(self._reserve_one, {k: v for k, v in body.items() if k != "request_id"})
                    for body in holds]
        if response.status != 200:
            return [self._refusal(response) for _ in items]
        results = _document(response).get("results")
        if not isinstance(results, list) or len(results) != len(items):
            log.error("inventory answered a batch of holds with the wrong number of results",
                      extra={"status": response.status, "holds": len(items)})
            return [_not_taken() for _ in items]
        return [self._batch_answer(body, result) for body, result in zip(holds, results)]

    def _batch_answer(self, body: dict, result) -> Hold | Exception:
        """The hold, or the refusal to raise, that one result of a batch gives the order of `body`,
        logged under that order's ids (the call carries several orders'). A result that is not one,
        or holds another order, is not taken: that order is answered 503, the others stand."""
        with log_context(request_id=body.get("request_id"), order_id=body["order_id"], tag_span=False):
            try:
                document = result.get("reservation") or result.get("problem") or {}
                if result["status"] in (200, 201) and document.get("order_id") != body["order_id"]:
                    raise ValueError(f"a hold of order {document.get('order_id')!r}")
                return _outcome(self._hold_of, result["status"], document)
            except (AttributeError, KeyError, TypeError, ValueError) as error:
                log.error("inventory answered a batch of holds with a result that is not this order's hold",
                          extra={"error": repr(error)[:200]})
                return _not_taken()

    def _hold_of(self, status: int, document: dict) -> Hold:
        """The hold a 200 or 201 answer's document shows; else the refusal its problem names."""
        if status not in (200, 201):
            raise self._refusal_of(status, document)
        held = document
        if held["status"] == "released":
            # an earlier hold for this order ran out, or was given back, and inventory did not renew it
            raise errors.HoldReleased("The hold for this order was released and could not be renewed.")
        return Hold(
            order_id=held["order_id"],
            drop_id=held["drop_id"],
            quantity=held["quantity"],
            hold_expires_at=datetime.fromisoformat(held["hold_expires_at"]),
            unit_amount=held["unit_price"]["amount"],
            currency=held["unit_price"]["currency"],
            sku=held["product"]["sku"],
            product_name=held["product"]["name"],
            created=status == 201,
            invite_phase=held.get("invite_phase") is True,
        )

    def sell(self, order_id: str, order_version: int) -> None:
        """Make the order's hold a sale now (idempotent); SoldOut when its units are gone.
        `order_version`: the version the confirmed order will have."""
        # Unguarded: making a paid order's sale at once is what keeps the sweeper off its unit.
        response = self._call(f"/reservations/{order_id}/sell", {"order_version": order_version}, guarded=False)
        if response.status != 200:
            raise self._refusal(response)

    def release(self, order_id: str, guarded: bool = True) -> None:
        """Give a held unit back at once (used when checkout refuses an order after the hold).
        `guarded=False`: past the circuit breaker (see `_call`)."""
        response = self._call(f"/reservations/{order_id}/release", {}, guarded=guarded)
        if response.status not in (200, 404):
            raise self._refusal(response)

    def holders(self, drop_id: str, buyer_ids: list[str]) -> DropStock:
        """The drop's units not held or sold, and how many of `buyer_ids` hold or bought one, at
        one moment, and its close (the waiting room's admitter asks every turn, with its unused
        passes' buyers)."""
        if len(buyer_ids) > MAX_HOLDERS_ASKED:  # more than inventory takes in a call
            return self.drop_stock(drop_id)
        response = self._call(f"/drops/{drop_id}/holders", {"buyer_ids": buyer_ids})
        slug = str(_document(response).get("type", "")).rsplit("/", 1)[-1]
        if response.status == 405 or (response.status == 404 and slug != "drop-not-found"):
            return self.drop_stock(drop_id)  # an inventory that does not know the call
        if response.status != 200:
            raise self._refusal(response)
        return DropStock.of(json.loads(response.data))

    def drop_stock(self, drop_id: str) -> DropStock:
        """The drop's units left and its close, with no word of who holds one (`GET /drops/{id}`):
        what reopening a line checks, and what `holders` falls back on, every pass then counting
        (an order in flight twice, as before `holders`), from an inventory that does not know that
        call (a rolling deploy) or for more unused passes than one call takes."""
        response = self._call(f"/drops/{drop_id}", None, method="GET")
        if response.status != 200:
            raise self._refusal(response)
        return DropStock.of(json.loads(response.data))

    def _call(self, path: str, body: dict | None, guarded: bool = True, method: str = "POST") -> urllib3.BaseHTTPResponse:
        """Inventory's answer to `path`, refused at once (503) while the circuit breaker is open.
        Unguarded calls are the ones money waits on (a paid order's sale, a late payment's renewal
        and its give-back): a breaker opened by the rush's failed orders would otherwise answer
        the payment provider 503 without asking inventory for as long as it stayed open. They
        still count towards opening and closing it. An order's own holds stay guarded: each is
        asked while its order waits, and a slow inventory would hold up the rush."""
        if guarded and not self._breaker.allow():
            raise errors.InventoryUnavailable(
                "Inventory is not answering; try again shortly.", retry_after=self._breaker.retry_after()
            )
        try:
            response = self._pool.urlopen(
                method, self._prefix + path, body=None if body is None else json.dumps(body),
                headers={**self._headers, "X-Request-ID": current_request_id() or ""},
            )
        except urllib3.exceptions.HTTPError as error:
            self._breaker.failed()
            log.warning("inventory unreachable", extra={"error": repr(error)})
            raise errors.InventoryUnavailable("Inventory did not answer in time; try again shortly.")
        if response.status >= 500:
            self._breaker.failed()
        else:
            self._breaker.succeeded()
        return response

    def _refusal(self, response: urllib3.BaseHTTPResponse) -> Exception:
        return self._refusal_of(response.status, _document(response))

    @staticmethod
    def _refusal_of(status: int, problem: dict) -> Exception:
        slug = str(problem.get("type", "")).rsplit("/", 1)[-1]
        if slug in _PROBLEMS:
            # the units left, when inventory says (a buyer told too few remain may order fewer)
            remaining = problem.get("remaining")
            known = {"remaining": remaining} if isinstance(remaining, int) and not isinstance(remaining, bool) else {}
            return _PROBLEMS[slug](problem.get("detail"), **known)
        log.error("unexpected inventory answer", extra={"status": status, "problem": problem})
        return _not_taken()


class OnceMoreIfClosed(Retry):
    """urllib3's retry, but never after a read timeout: a call that timed out is not sent again,
    so INVENTORY_TIMEOUT_SECONDS bounds it (two of them before, the breaker counting one), while a
    kept connection inventory closed still gets its one more try."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if isinstance(error, urllib3.exceptions.ReadTimeoutError):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _not_taken() -> errors.InventoryUnavailable:
    return errors.InventoryUnavailable("Inventory could not take the reservation; try again shortly.")


def _outcome(call, *args):
    """What `call(*args)` returns, or the refusal it raised."""
    try:
        return call(*args)
    except Problem as refusal:
        return refusal


def _document(response: urllib3.BaseHTTPResponse) -> dict:
    try:
        body = json.loads(response.data)
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}
