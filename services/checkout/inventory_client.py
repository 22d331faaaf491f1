"""Inventory over HTTP: the order path's one outgoing call."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import requests
from requests.adapters import HTTPAdapter

from services.checkout import errors
from shared.logs import current_request_id

log = logging.getLogger("floodgate.checkout.inventory")

_PROBLEMS = {
    "sold-out": errors.SoldOut,
    "not-open": errors.SaleNotOpen,
    "drop-not-found": errors.DropNotFound,
    "limit-exceeded": errors.LimitExceeded,
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


class InventoryClient:
    """Reserves stock; turns inventory's problems into checkout's typed errors."""

    def __init__(self, base_url: str, service_key: str, timeout_seconds: float):
        self._url = base_url.rstrip("/")
        self._timeout = (min(1.0, timeout_seconds), timeout_seconds)
        self._session = requests.Session()
        self._session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0))
        self._session.headers.update({"X-Service-Key": service_key})

    def reserve(self, order_id: str, drop_id: str, buyer_id: str, quantity: int) -> Hold:
        """Hold `quantity` units for `order_id` (idempotent by order id)."""
        try:
            response = self._session.post(
                f"{self._url}/reservations",
                json={"order_id": order_id, "drop_id": drop_id, "buyer_id": buyer_id, "quantity": quantity},
                headers={"X-Request-ID": current_request_id() or ""},
                timeout=self._timeout,
            )
        except requests.RequestException as error:
            log.warning("inventory unreachable", extra={"error": repr(error)})
            raise errors.InventoryUnavailable("Inventory did not answer in time; try again shortly.")
        if response.status_code in (200, 201):
            body = response.json()
            return Hold(
                order_id=body["order_id"],
                drop_id=body["drop_id"],
                quantity=body["quantity"],
                hold_expires_at=datetime.fromisoformat(body["hold_expires_at"]),
                unit_amount=body["unit_price"]["amount"],
                currency=body["unit_price"]["currency"],
                sku=body["product"]["sku"],
                product_name=body["product"]["name"],
            )
        problem = _problem(response)
        slug = problem.get("type", "").rsplit("/", 1)[-1]
        if slug in _PROBLEMS:
            raise _PROBLEMS[slug](problem.get("detail"))
        log.error("unexpected inventory answer", extra={"status": response.status_code, "problem": problem})
        raise errors.InventoryUnavailable("Inventory could not take the reservation; try again shortly.")


def _problem(response: requests.Response) -> dict:
    try:
        body = response.json()
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}
