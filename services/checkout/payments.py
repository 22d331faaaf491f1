"""The payment provider: approval links out, refunds out, signed webhooks in.

The provider is PayPal-like; locally `devtools.payment_simulator` plays it. Requests both ways
carry `Provider-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`; a signature
older than the tolerance is refused, so a captured webhook cannot be replayed later.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode

import requests

SIGNATURE_HEADER = "Provider-Signature"
# The provider gave a capture's money back on its own side, as it says afterwards of every
# refund: one checkout asked for, one made in the provider's dashboard, or a reversal (a dispute
# or chargeback the buyer won). The value is how the order's history says it.
CAPTURE_UNDONE = {"PAYMENT.CAPTURE.REFUNDED": "refunded", "PAYMENT.CAPTURE.REVERSED": "reversed"}
# unix seconds, as the provider writes them: `int()` alone also takes signs, underscores, other
# scripts' digits and thousands of digits (whose distance from now overflows a float: a 500)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def sign(secret: str, payload: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signature_is_valid(secret: str, payload: bytes, header: str, tolerance_seconds: int, now: float | None = None) -> bool:
    """True when `header` signs `payload` with `secret` within the time tolerance."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if not _TIMESTAMP.fullmatch(parts.get("t", "")):
        return False
    timestamp = int(parts["t"])
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, payload, timestamp).split("v1=", 1)[1]
    given = parts.get("v1", "")
    # compare_digest takes text of ASCII only (a TypeError, a 500, otherwise); no signature is other text
    return given.isascii() and hmac.compare_digest(expected, given)


def approval_url(provider_url: str, secret: str, order_id: str, amount: int, currency: str) -> str:
    """Where the buyer approves the payment; the amount is signed so it cannot be altered."""
    query = {"amount": amount, "currency": currency}
    query["sig"] = hmac.new(secret.encode(), f"{order_id}:{amount}:{currency}".encode(), hashlib.sha256).hexdigest()
    return f"{provider_url.rstrip('/')}/pay/{order_id}?{urlencode(query)}"


@dataclass(frozen=True)
class Refund:
    refund_id: str
    amount: int
    currency: str


class RefundFailed(Exception):
    """The provider did not confirm the refund; the consumer retries it."""


class RefundAlreadyMade(RefundFailed):
    """The provider refused the refund because the capture was given back already (in its
    dashboard, by a chargeback) and its news has not reached checkout yet: retried until the
    news comes, when nothing is left to give back."""


class RefundRefused(RefundFailed):
    """The provider refused the refund as asked (a 4xx other than `_RETRYABLE_4XX`): asking again
    cannot change its answer, so a person must look at it now."""


# 4xx answers that may go the other way when asked again: a timeout, a conflict, a rate limit,
# and 401, which a signature outside the provider's clock tolerance, a secret mid-rotation (or,
# at PayPal, an expired access token) earns: one bad secret rollout must not park a drop's refunds.
_RETRYABLE_4XX = frozenset({401, 408, 409, 425, 429})
# PayPal's reason for refusing a refund of a capture given back in full already (a 422's `details`)
ALREADY_REFUNDED = "CAPTURE_FULLY_REFUNDED"


def _names_issue(response: requests.Response, issue: str) -> bool:
    """Whether a refusal's body names `issue` among its `details`, as PayPal's errors do."""
    try:
        body = response.json()
    except ValueError:
        return False
    details = body.get("details") if isinstance(body, dict) else None
    return isinstance(details, list) and any(isinstance(d, dict) and d.get("issue") == issue for d in details)


class PaymentProvider(Protocol):
    def approval_url(self, order_id: str, amount: int, currency: str) -> str: ...

    def refund(self, capture_id: str, amount: int, currency: str) -> Refund: ...


REFUND_REQUEST_ID_HEADER = "PayPal-Request-Id"


class HttpPaymentProvider:
    """The PayPal-like provider over HTTP. Refunds are idempotent per capture at the provider."""

    def __init__(self, base_url: str, secret: str, timeout_seconds: float = 5.0):
        self._url = base_url.rstrip("/")
        self._secret = secret
        self._timeout = timeout_seconds
        self._http = requests.Session()

    def approval_url(self, order_id: str, amount: int, currency: str) -> str:
        return approval_url(self._url, self._secret, order_id, amount, currency)

    def close(self) -> None:
        """Close the pooled connections to the provider."""
        self._http.close()

    def refund(self, capture_id: str, amount: int, currency: str) -> Refund:
        body = json.dumps({"capture_id": capture_id, "amount": amount, "currency": currency}).encode()
        try:
            response = self._http.post(
                f"{self._url}/v1/refunds",
                data=body,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
                         # the provider's idempotency key: a retry after a lost answer is the same refund
                         # (PayPal answers a repeated refund of a capture without one with a 422)
                         REFUND_REQUEST_ID_HEADER: f"refund-{capture_id}"},
                timeout=self._timeout,
            )
        except requests.RequestException as error:
            raise RefundFailed(f"provider unreachable: {error!r}") from error
        if response.status_code not in (200, 201):
            failure = (RefundAlreadyMade if response.status_code == 422 and _names_issue(response, ALREADY_REFUNDED)
                       else RefundRefused if 400 <= response.status_code < 500 and response.status_code not in _RETRYABLE_4XX
                       else RefundFailed)
            raise failure(f"provider answered {response.status_code}: {response.text[:200]}")
        answer = response.json()
        return Refund(refund_id=answer["refund_id"], amount=answer["amount"], currency=answer["currency"])
