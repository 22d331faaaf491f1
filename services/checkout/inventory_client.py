"""Inventory over HTTP: the order path's one outgoing call, behind timeouts and a circuit breaker."""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import urllib3
from urllib3.util import Retry

from services.checkout import errors
from shared.logs import current_request_id

log = logging.getLogger("floodgate.checkout.inventory")

_PROBLEMS = {
    "sold-out": errors.SoldOut,
    "not-open": errors.SaleNotOpen,
    "drop-not-found": errors.DropNotFound,
    "limit-exceeded": errors.LimitExceeded,
    "invite-only": errors.InviteOnly,
    "country-not-allowed": errors.CountryNotAllowed,
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


class InventoryClient:
    """Reserves and releases stock; turns inventory's problems into checkout's typed errors."""

    def __init__(self, base_url: str, service_key: str, timeout_seconds: float, breaker: CircuitBreaker):
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
            retries=Retry(total=1, connect=1, read=1, status=0, other=0, allowed_methods=None, raise_on_status=False,
                          redirect=0),
        )

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
    ) -> Hold:
        """Hold `quantity` units for `order_id` (idempotent by order id; `renew` re-holds a released
        one). `order_version`: the order's version once this hold serves it (1 for a new order)."""
        body = {"order_id": order_id, "drop_id": drop_id, "buyer_id": buyer_id, "quantity": quantity,
                "buyer_tier": buyer_tier, "shipping_country": shipping_country, "renew": renew or None,
                "order_version": order_version}
        response = self._call("/reservations", {k: v for k, v in body.items() if v is not None})
        if response.status in (200, 201):
            held = json.loads(response.data)
            if held["status"] == "released":
                # an earlier hold for this order ran out and inventory could not renew it
                raise errors.SoldOut("The hold for this order was released and could not be renewed.")
            return Hold(
                order_id=held["order_id"],
                drop_id=held["drop_id"],
                quantity=held["quantity"],
                hold_expires_at=datetime.fromisoformat(held["hold_expires_at"]),
                unit_amount=held["unit_price"]["amount"],
                currency=held["unit_price"]["currency"],
                sku=held["product"]["sku"],
                product_name=held["product"]["name"],
            )
        raise self._refusal(response)

    def sell(self, order_id: str, order_version: int) -> None:
        """Make the order's hold a sale now (idempotent); SoldOut when its units are gone.
        `order_version`: the version the confirmed order will have."""
        # Not behind the circuit breaker: a payment is confirmed at most once, and making its sale
        # at once is what keeps the sweeper off a paid unit; the provider can wait for an answer.
        response = self._call(f"/reservations/{order_id}/sell", {"order_version": order_version}, guarded=False)
        if response.status != 200:
            raise self._refusal(response)

    def release(self, order_id: str) -> None:
        """Give a held unit back at once (used when checkout refuses an order after the hold)."""
        response = self._call(f"/reservations/{order_id}/release", {})
        if response.status not in (200, 404):
            raise self._refusal(response)

    def remaining(self, drop_id: str) -> int:
        """The drop's units not held or sold (the waiting room's admitter asks every turn)."""
        response = self._call(f"/drops/{drop_id}", None, method="GET")
        if response.status != 200:
            raise self._refusal(response)
        return int(json.loads(response.data)["remaining"])

    def _call(self, path: str, body: dict | None, guarded: bool = True, method: str = "POST") -> urllib3.BaseHTTPResponse:
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
        problem = _problem(response)
        slug = problem.get("type", "").rsplit("/", 1)[-1]
        if slug in _PROBLEMS:
            return _PROBLEMS[slug](problem.get("detail"))
        log.error("unexpected inventory answer", extra={"status": response.status, "problem": problem})
        return errors.InventoryUnavailable("Inventory could not take the reservation; try again shortly.")


def _problem(response: urllib3.BaseHTTPResponse) -> dict:
    try:
        body = json.loads(response.data)
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}
