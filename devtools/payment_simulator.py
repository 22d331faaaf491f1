"""A PayPal-like payment provider for local runs and tests: `python -m devtools.payment_simulator`.

The buyer follows the approval link checkout gave them (`GET /pay/<order_id>?amount=&currency=&sig=`),
approves (`POST /pay/<order_id>/approve` with the same query), and the simulator captures the
payment and calls checkout's webhook, signed like the real provider does. Approving twice captures
once and sends the same event again, as providers do when they retry.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import signal
import threading
import time
import uuid

import requests
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from shared import logs

# Development default: the same public value checkout uses unless PAYMENT_WEBHOOK_SECRET is set.
DEV_SECRET = "dev-only-webhook-secret-not-a-secret"
log = logging.getLogger("floodgate.payment-simulator")

PAGE = """<!doctype html><title>Floodgate Pay (simulator)</title>
<h1>Pay {amount} {currency}</h1><p>Order {order_id}</p>
<form method="post" action="/pay/{order_id}/approve?{query}"><button>Approve payment</button></form>"""


def create_app(webhook_url: str, secret: str) -> Flask:
    app = Flask("payment-simulator")
    captures: dict[str, dict] = {}
    lock = threading.Lock()
    http = requests.Session()

    def link_is_genuine(order_id: str) -> tuple[int, str] | None:
        try:
            amount, currency = int(request.args["amount"]), request.args["currency"]
        except (KeyError, ValueError):
            return None
        expected = hmac.new(secret.encode(), f"{order_id}:{amount}:{currency}".encode(), hashlib.sha256).hexdigest()
        return (amount, currency) if hmac.compare_digest(expected, request.args.get("sig", "")) else None

    def send_webhook(event: dict) -> int | None:
        body = json.dumps(event).encode()
        for attempt in range(5):
            timestamp = int(time.time())
            digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
            try:
                response = http.post(
                    webhook_url,
                    data=body,
                    headers={"Content-Type": "application/json", "Provider-Signature": f"t={timestamp},v1={digest}"},
                    timeout=5,
                )
                if response.status_code < 500:
                    return response.status_code
            except requests.RequestException as error:
                log.warning("webhook delivery failed", extra={"error": repr(error), "attempt": attempt + 1})
            time.sleep(0.2 * 2**attempt)
        return None

    @app.get("/pay/<order_id>")
    def approval_page(order_id: str):
        terms = link_is_genuine(order_id)
        if terms is None:
            return jsonify(error="invalid payment link"), 400
        return PAGE.format(amount=terms[0], currency=terms[1], order_id=order_id, query=request.query_string.decode())

    @app.post("/pay/<order_id>/approve")
    def approve(order_id: str):
        terms = link_is_genuine(order_id)
        if terms is None:
            return jsonify(error="invalid payment link"), 400
        with lock:
            capture = captures.get(order_id)
            if capture is None:
                capture = {
                    "id": f"WH-{uuid.uuid4()}",
                    "event_type": "PAYMENT.CAPTURE.COMPLETED",
                    "create_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "resource": {
                        "id": f"CAP-{uuid.uuid4().hex[:16].upper()}",
                        "order_id": order_id,
                        "amount": terms[0],
                        "currency": terms[1],
                    },
                }
                captures[order_id] = capture
        status = send_webhook(capture)
        return jsonify(status="COMPLETED", capture_id=capture["resource"]["id"], event_id=capture["id"], webhook_status=status)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--webhook-url", default=os.environ.get("CHECKOUT_WEBHOOK_URL", "http://127.0.0.1:8003/payments/webhook"))
    args = parser.parse_args()
    logs.configure("payment-simulator")
    secret = os.environ.get("PAYMENT_WEBHOOK_SECRET", DEV_SECRET)
    server = make_server(args.host, args.port, create_app(args.webhook_url, secret), threaded=True)
    print(f"payment simulator on http://{args.host}:{args.port} -> webhooks to {args.webhook_url}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
