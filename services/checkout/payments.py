"""The payment provider: approval links out, signed webhooks in.

The provider is PayPal-like; locally `devtools.payment_simulator` plays it. Webhooks carry
`Provider-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`; a signature older
than the tolerance is refused, so a captured webhook cannot be replayed later.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

SIGNATURE_HEADER = "Provider-Signature"


def sign(secret: str, payload: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signature_is_valid(secret: str, payload: bytes, header: str, tolerance_seconds: int, now: float | None = None) -> bool:
    """True when `header` signs `payload` with `secret` within the time tolerance."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, payload, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def approval_url(provider_url: str, secret: str, order_id: str, amount: int, currency: str) -> str:
    """Where the buyer approves the payment; the amount is signed so it cannot be altered."""
    query = {"amount": amount, "currency": currency}
    query["sig"] = hmac.new(secret.encode(), f"{order_id}:{amount}:{currency}".encode(), hashlib.sha256).hexdigest()
    return f"{provider_url.rstrip('/')}/pay/{order_id}?{urlencode(query)}"
