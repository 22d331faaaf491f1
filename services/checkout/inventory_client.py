"""Inventory over HTTP: the order path's one outgoing call, behind timeouts and a circuit breaker."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import requests
from requests.adapters import HTTPAdapter
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
        self._url = base_url.rstrip("/")
        self._timeout = (min(1.0, timeout_seconds), timeout_seconds)
        self._breaker = breaker
        self._session = requests.Session()
        # One retry for a pooled connection inventory closed (it restarted): every call here is
        # idempotent (by order id), so sending it again is safe.
        once = Retry(total=1, connect=1, read=1, status=0, other=0, allowed_methods=None, raise_on_status=False)
        self._session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=once))
        self._session.headers.update({"X-Service-Key": service_key})

    def reserve(
        self,
        order_id: str,
        drop_id: str,
        buyer_id: str,
        quantity: int,
        buyer_tier: str | None = None,
        shipping_country: str | None = None,
        renew: bool = False,
    ) -> Hold:
        """Hold `quantity` units for `order_id` (idempotent by order id; `renew` re-holds a released one)."""
        body = {"order_id": order_id, "drop_id": drop_id, "buyer_id": buyer_id, "quantity": quantity,
                "buyer_tier": buyer_tier, "shipping_country": shipping_country, "renew": renew or None}
        response = self._call("/reservations", {k: v for k, v in body.items() if v is not None})
        if response.status_code in (200, 201):
            held = response.json()
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

    def sell(self, order_id: str) -> None:
        """Make the order's hold a sale now (idempotent); SoldOut when its units are gone."""
        response = self._call(f"/reservations/{order_id}/sell", {})
        if response.status_code != 200:
            raise self._refusal(response)

    def release(self, order_id: str) -> None:
        """Give a held unit back at once (used when checkout refuses an order after the hold)."""
        response = self._call(f"/reservations/{order_id}/release", {})
        if response.status_code not in (200, 404):
            raise self._refusal(response)

    def _call(self, path: str, body: dict) -> requests.Response:
        if not self._breaker.allow():
            raise errors.InventoryUnavailable(
                "Inventory is not answering; try again shortly.", retry_after=self._breaker.retry_after()
            )
        try:
            response = self._session.post(
                f"{self._url}{path}", json=body, headers={"X-Request-ID": current_request_id() or ""}, timeout=self._timeout
            )
        except requests.RequestException as error:
            self._breaker.failed()
            log.warning("inventory unreachable", extra={"error": repr(error)})
            raise errors.InventoryUnavailable("Inventory did not answer in time; try again shortly.")
        if response.status_code >= 500:
            self._breaker.failed()
        else:
            self._breaker.succeeded()
        return response

    def _refusal(self, response: requests.Response) -> Exception:
        problem = _problem(response)
        slug = problem.get("type", "").rsplit("/", 1)[-1]
        if slug in _PROBLEMS:
            return _PROBLEMS[slug](problem.get("detail"))
        log.error("unexpected inventory answer", extra={"status": response.status_code, "problem": problem})
        return errors.InventoryUnavailable("Inventory could not take the reservation; try again shortly.")


def _problem(response: requests.Response) -> dict:
    try:
        body = response.json()
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}
