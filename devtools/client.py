"""A small HTTP client for the stack, used by the demo, the integration tests and rehearsals."""
from __future__ import annotations

import hashlib
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Callable, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from devtools.stack import ROOT, Stack

T = TypeVar("T")

CANADIAN_ADDRESS = {
    "name": "Alex Tremblay",
    "street_address": "24 Sussex Drive",
    "city": "Ottawa",
    "postal_code": "K1A 0B1",
    "country_area": "ON",
    "country_code": "CA",
}


def home_of(token: str) -> dict:
    """A Canadian address of the buyer's own: the same buyer always lives at the same number
    (their retries match), two buyers do not (they stay under the per-address limit)."""
    number = int(hashlib.sha256(token.encode()).hexdigest()[:8], 16) % 900_000 + 100
    return dict(CANADIAN_ADDRESS, street_address=f"{number} Sussex Drive")


def poll(probe: Callable[[], T], timeout: float = 30, interval: float = 0.1, what: str = "condition") -> T:
    """Call `probe` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {result!r}")
        time.sleep(interval)


def session() -> requests.Session:
    """A session that sends a request again, once, when its connection broke before any answer came.

    gunicorn closes a kept-alive connection after `keepalive` seconds idle; a request sent in the
    same instant is never read and its connection is reset (gunicorn issue #1698 shows the race).
    A browser retries such a request on a fresh connection, and so does this client. It costs
    nothing when the server really answered, and the order path is safe to repeat anyway: every
    POST /orders carries its Idempotency-Key."""
    http = requests.Session()
    once = Retry(total=1, connect=0, read=1, status=0, other=0, redirect=False, allowed_methods=None,
                 raise_on_status=False, respect_retry_after_header=False)
    for scheme in ("http://", "https://"):
        http.mount(scheme, HTTPAdapter(max_retries=once))
    return http


class Floodgate:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.http = session()

    def _url(self, service: str, path: str) -> str:
        return self.stack.url(service) + path

    # accounts
    def create_admin(self, email: str, password: str) -> str:
        """Create an admin with the accounts CLI and return an access token."""
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "flask") if (ROOT / ".venv").exists() else "flask",
             "--app", "services.accounts.app", "create-admin", "--email", email],
            cwd=ROOT, env={**self.stack.env("accounts"), "ADMIN_PASSWORD": password}, check=True, capture_output=True,
        )
        return self.login(email, password)

    def register(self, email: str | None = None, password: str = "correct horse battery", name: str = "Buyer") -> tuple[str, str]:
        email = email or f"buyer-{uuid.uuid4().hex[:10]}@example.com"
        response = self.http.post(self._url("accounts", "/accounts"), json={"email": email, "password": password, "name": name})
        response.raise_for_status()
        return email, self.login(email, password)

    def login(self, email: str, password: str) -> str:
        response = self.http.post(self._url("accounts", "/sessions"), json={"email": email, "password": password})
        response.raise_for_status()
        return response.json()["access_token"]

    # inventory
    def create_drop(self, admin_token: str, quantity: int, price: int = 29900, currency: str = "CAD",
                    opens_in: float = -1, lasts: float = 3600, per_buyer_limit: int = 1, **terms) -> dict:
        """A product and its drop; `terms` are more of the drop's fields (`shipping_countries`, ...)."""
        auth = {"Authorization": f"Bearer {admin_token}"}
        product = self.http.post(self._url("inventory", "/products"), headers=auth, json={
            "sku": f"OPO-{uuid.uuid4().hex[:8]}", "name": "OnePlus One 64GB Sandstone Black",
            "description": "The flagship killer", "price": {"amount": price, "currency": currency},
        })
        product.raise_for_status()
        now = datetime.now(timezone.utc)
        drop = self.http.post(self._url("inventory", "/drops"), headers=auth, json={
            "product_id": product.json()["id"], "quantity": quantity,
            "opens_at": (now + timedelta(seconds=opens_in)).isoformat(),
            "closes_at": (now + timedelta(seconds=opens_in + lasts)).isoformat(),
            "per_buyer_limit": per_buyer_limit, **terms,
        })
        drop.raise_for_status()
        return drop.json()

    def get_drop(self, drop_id: str) -> dict:
        response = self.http.get(self._url("inventory", f"/drops/{drop_id}"), headers=self.stack.service_headers())
        response.raise_for_status()
        return response.json()

    # checkout
    def place_order(self, token: str, drop_id: str, key: str | None = None, quantity: int = 1,
                    address: dict | None = None, line_pass: str | None = None,
                    timeout: float | None = None) -> requests.Response:
        """Order as the token's buyer; without `address`, the buyer's own Canadian address.
        `timeout`: seconds the buyer's client waits for the answer (requests' ReadTimeout after)."""
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key or str(uuid.uuid4())}
        if line_pass is not None:
            headers["Line-Pass"] = line_pass
        return self.http.post(
            self._url("checkout", "/orders"), headers=headers, timeout=timeout,
            json={"drop_id": drop_id, "quantity": quantity, "shipping_address": address or home_of(token)},
        )

    # the waiting room
    def put_line(self, admin_token: str, drop: dict, **settings) -> dict:
        """A line on `drop`, opening when the drop opens unless `opens_at` says otherwise."""
        response = self.http.put(self._url("checkout", f"/drops/{drop['id']}/line"),
                                 headers={"Authorization": f"Bearer {admin_token}"},
                                 json={"opens_at": drop["opens_at"], **settings})
        response.raise_for_status()
        return response.json()

    def get_line(self, drop_id: str) -> requests.Response:
        return self.http.get(self._url("checkout", f"/drops/{drop_id}/line"), headers=self.stack.service_headers())

    def join_line(self, token: str, drop_id: str) -> requests.Response:
        """Join at the line's public edge (services/checkout/line_status.py)."""
        return self.http.post(self._url("line-status", f"/drops/{drop_id}/line/tickets"),
                              headers={"Authorization": f"Bearer {token}"})

    def place_in_line(self, drop_id: str, ticket_id: str) -> requests.Response:
        """A ticket's place, as the crowd polls it: the public status edge, no token."""
        return self.http.get(self._url("line-status", f"/drops/{drop_id}/line/tickets/{ticket_id}"))

    def my_ticket(self, token: str, drop_id: str) -> dict:
        response = self.http.get(self._url("checkout", f"/drops/{drop_id}/line/tickets/mine"),
                                 headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        return response.json()

    def get_order(self, token: str, order_id: str) -> requests.Response:
        return self.http.get(self._url("checkout", f"/orders/{order_id}"), headers={"Authorization": f"Bearer {token}"})

    def pay(self, order: dict, timeout: float | None = None) -> requests.Response:
        """Approve the order's payment at the provider, as the buyer would from the approval link
        (the provider calls checkout's webhook before it answers). `timeout` as for `place_order`."""
        link = order["payment"]["approval_url"]
        path, _, query = link.partition("?")
        return self.http.post(f"{path}/approve?{query}", timeout=timeout)

    def give_back_payment(self, order: dict, action: str = "refund") -> requests.Response:
        """Give the order's captured payment back on the provider's side, as a merchant's refund
        in its dashboard (`refund`) or a chargeback the buyer won (`reverse`) would; the provider
        tells checkout before it answers."""
        return self.http.post(self._url("payments", f"/v1/payments/{order['id']}/{action}"))

    def wait_for_status(self, token: str, order_id: str, status: str, timeout: float = 30) -> dict:
        return poll(
            lambda: (lambda o: o if o.get("status") == status else None)(self.get_order(token, order_id).json()),
            timeout=timeout, what=f"order {order_id} to be {status}",
        )

    # mail
    def mails(self) -> list[dict]:
        response = self.http.get(f"http://127.0.0.1:{self.stack.ports['smtp-control']}/messages")
        response.raise_for_status()
        return response.json()

    def mails_about(self, order_id: str, subject_word: str = "") -> list[dict]:
        """Emails that name `order_id`, optionally only those whose subject holds `subject_word`."""
        return [
            mail for mail in self.mails()
            if order_id in (mail.get("text") or "") and subject_word.lower() in (mail.get("subject") or "").lower()
        ]

    def confirmations_of(self, order_id: str) -> list[dict]:
        return self.mails_about(order_id, "confirmed")
