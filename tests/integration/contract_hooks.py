"""Schemathesis hooks for schemathesis.toml: generated payment webhooks are signed the way the
provider signs them, so they reach checkout's payment handling instead of all stopping at 401; and
generated orders name a real drop (one without a line), so they reach the order path instead of
all stopping at 404 (a drop id in a body is no path parameter `[parameters]` can name)."""
from __future__ import annotations

import json
import os
import time

import schemathesis
from schemathesis.core import NOT_SET

from services.checkout.payments import SIGNATURE_HEADER, sign


@schemathesis.hook("map_case").apply_to(method="POST", path="/payments/webhook")
def signed_like_the_provider(context, case):
    # A case without the header tests that it is required; one whose body is not sent as JSON
    # keeps its generated signature and gets its 401.
    if SIGNATURE_HEADER in (case.headers or {}) and case.media_type in (None, "application/json"):
        payload = sent_as_json(case.body)
        if payload is not None:
            case.headers[SIGNATURE_HEADER] = sign(os.environ["FLOODGATE_WEBHOOK_SECRET"], payload, int(time.time()))
    return case


def sent_as_json(body) -> bytes | None:
    """The bytes Schemathesis sends for a JSON `body` (`requests`' `json=`, raw bytes as they are)."""
    if body is NOT_SET:
        return b""
    if isinstance(body, bytes):
        return body
    try:
        return json.dumps(body, allow_nan=False).encode()
    except (TypeError, ValueError):
        return None


@schemathesis.hook("map_case").apply_to(method="POST", path="/orders")
def for_a_real_drop(context, case):
    if isinstance(case.body, dict) and isinstance(case.body.get("drop_id"), str):
        case.body = {**case.body, "drop_id": os.environ["FLOODGATE_ORDER_DROP_ID"]}
    return case
