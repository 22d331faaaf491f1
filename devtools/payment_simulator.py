"""A PayPal-like payment provider for local runs and tests: `python -m devtools.payment_simulator`.

The buyer follows the approval link checkout gave them (`GET /pay/<order_id>?amount=&currency=&sig=`)
and approves (`POST /pay/<order_id>/approve` with the same query). The simulator captures the
payment once and calls checkout's webhook, signed like the real provider does:
`CHECKOUT.ORDER.APPROVED`, then `PAYMENT.CAPTURE.COMPLETED` (or `PAYMENT.CAPTURE.DENIED`). An
event checkout does not answer (or answers 5xx) is tried five times while the approval waits,
then again in the background (1 s, 2 s, ... 30 s apart) for `WEBHOOK_REDELIVERY_SECONDS` (an
hour), as PayPal keeps retrying for days: a payment is never dropped because checkout was away.

Tests and rehearsals steer it with `POST /control`:
`{"outcome": "approve"|"decline", "delay_seconds": 0, "duplicates": 0, "reorder": false,
"refunds": "ok"|"fail"}` — decline payments, deliver webhooks late (in the background), send each
one more than once, send them in reverse order, or answer refunds with 503. Refunds: `POST /v1/refunds` (signed like webhooks), idempotent per capture;
as PayPal does, each refund made is told to checkout afterwards too (`PAYMENT.CAPTURE.REFUNDED`,
in the background). Money given back on the provider's side, as a merchant's refund in its
dashboard or a chargeback the buyer won: `POST /v1/payments/<order_id>/refund` or `/reverse`
(unsigned: the dashboard's buttons), told to checkout as `PAYMENT.CAPTURE.REFUNDED` or
`PAYMENT.CAPTURE.REVERSED` before it answers.

It is served by gunicorn (one worker, since the payments live in its memory; threads, and
keep-alive as long as the APIs') and posts its webhooks over urllib3's pool of kept-open
connections: in a rehearsal it shares the machine with the stack, and Werkzeug's development
server (a thread and a connection per request) with `requests` cost 2.8-3.4 ms of CPU per order
there, every bit of it taken from the orders.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import sys
import threading
import time
import uuid

import urllib3
from flask import Flask, jsonify, request
from urllib3.util import Retry

# the signature scheme both ends of the provider's API follow (checkout's copy of its contract)
from services.checkout.payments import (ALREADY_REFUNDED, REFUND_REQUEST_ID_HEADER, SIGNATURE_HEADER, sign,
                                        signature_is_valid)
from shared import logs

# Development default: the same public value checkout uses unless PAYMENT_WEBHOOK_SECRET is set.
DEV_SECRET = "dev-only-webhook-secret-not-a-secret"
log = logging.getLogger("floodgate.payment-simulator")

PAGE = """<!doctype html><title>Floodgate Pay (simulator)</title>
<h1>Pay {amount} {currency}</h1><p>Order {order_id}</p>
<form method="post" action="/pay/{order_id}/approve?{query}"><button>Approve payment</button></form>"""

DEFAULT_CONTROL = {"outcome": "approve", "delay_seconds": 0.0, "duplicates": 0, "reorder": False, "refunds": "ok"}


def _wrong_controls(asked) -> list[str]:
    """The names in `asked` (a POST /control body) whose values are not of their default's kind,
    or are negative numbers."""
    if not isinstance(asked, dict):
        return ["the body is not an object"]
    wrong = []
    for name, default in DEFAULT_CONTROL.items():
        if name not in asked:
            continue
        value = asked[name]
        if isinstance(default, bool):
            fits = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            fits = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and (
                isinstance(value, int) or isinstance(default, float))
        else:
            fits = isinstance(value, str)
        if not fits:
            wrong.append(name)
    return wrong


def create_app(webhook_url: str, secret: str, redeliver_for_seconds: float = 3600.0) -> Flask:
    app = Flask("payment-simulator")
    payments: dict[str, dict] = {}
    refunds: dict[str, dict] = {}
    control = dict(DEFAULT_CONTROL)
    lock = threading.Lock()
    # urllib3's pool, as checkout's inventory client keeps one: connections kept open (one
    # request at a time each), and one retry for a kept connection checkout has closed (it
    # restarted); a webhook sent twice is applied once (by event id)
    webhooks = urllib3.connection_from_url(
        webhook_url, maxsize=32, timeout=urllib3.Timeout(10),
        retries=Retry(total=1, connect=1, read=1, status=0, other=0, allowed_methods=None, raise_on_status=False,
                      redirect=0),
    )
    webhook_target = urllib3.util.parse_url(webhook_url).request_uri

    def link_terms(order_id: str) -> tuple[int, str] | None:
        try:
            amount, currency = int(request.args["amount"]), request.args["currency"]
        except (KeyError, ValueError):
            return None
        expected = hmac.new(secret.encode(), f"{order_id}:{amount}:{currency}".encode(), hashlib.sha256).hexdigest()
        # as bytes: compare_digest refuses a str that is not ASCII (a 500 for a mangled link)
        signed = hmac.compare_digest(expected.encode(), request.args.get("sig", "").encode("utf-8", "surrogatepass"))
        return (amount, currency) if signed else None

    def post(event: dict, attempt: int) -> int | None:
        """One delivery of `event`: checkout's answer, or None when it gave none (or a 5xx).
        Unlike PayPal, which retries any answer but a 2xx, a 4xx is final here: checkout answers
        401 (a bad signature) or 404 (an unknown order) only to what sending again cannot mend."""
        body = json.dumps(event).encode()
        try:
            response = webhooks.urlopen(
                "POST", webhook_target, body=body,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body, int(time.time()))})
            if response.status < 500:
                return response.status
        except urllib3.exceptions.HTTPError as error:
            log.warning("webhook delivery failed", extra={"error": repr(error), "attempt": attempt})
        return None

    def deliver(event: dict) -> int | None:
        """Five tries while the buyer's approval waits (3 s of waits between them); then, as a real provider
        keeps retrying for days, more in the background until `redeliver_for_seconds` have passed."""
        for attempt in range(5):
            if attempt:
                time.sleep(0.2 * 2 ** (attempt - 1))
            status = post(event, attempt + 1)
            if status is not None:
                return status
        threading.Thread(target=redeliver, args=(event,), name="webhook-redelivery", daemon=True).start()
        return None

    def redeliver(event: dict) -> None:
        fields = {"event_id": event["id"], "event_type": event["event_type"], "order_id": event["resource"]["order_id"]}
        deadline, delay, attempt = time.monotonic() + redeliver_for_seconds, 1.0, 5
        while time.monotonic() + delay < deadline:
            time.sleep(delay)
            attempt += 1
            status = post(event, attempt)
            if status is not None:
                log.info("webhook redelivered", extra={**fields, "attempt": attempt, "status": status})
                return
            delay = min(30.0, delay * 2)
        log.error("webhook never answered; gave up redelivering", extra={**fields, "attempts": attempt})

    def deliver_all(events: list[dict], settings: dict) -> list[int | None]:
        if settings["reorder"]:
            events = list(reversed(events))
        statuses = []
        for event in events:
            for _ in range(1 + int(settings["duplicates"])):
                statuses.append(deliver(event))
        return statuses

    def event(event_type: str, payment: dict, given_back: dict | None = None) -> dict:
        """A webhook about `payment`'s capture, or about `given_back` (a refund or a reversal of
        it), whose resource is itself and names the capture it gives back."""
        resource = {"id": payment["capture_id"], "order_id": payment["order_id"], "amount": payment["amount"],
                    "currency": payment["currency"]}
        if given_back is not None:
            resource.update(id=given_back["refund_id"], capture_id=payment["capture_id"], amount=given_back["amount"])
        return {
            "id": f"WH-{uuid.uuid4()}",
            "event_type": event_type,
            "create_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "resource": resource,
        }

    def give_back(payment: dict, how: str, amount: int) -> tuple[dict, dict]:
        """Give `payment`'s capture back (`how`: REFUNDED or REVERSED; under the lock): the refund
        and the webhook that tells checkout."""
        done = {"refund_id": f"{how[:3]}-{uuid.uuid4().hex[:16].upper()}", "capture_id": payment["capture_id"],
                "amount": amount, "currency": payment["currency"], "status": "COMPLETED"}
        refunds[payment["capture_id"]] = done
        payment["status"] = how
        log.info(f"payment {how.lower()}", extra={"order_id": payment["order_id"], "capture_id": payment["capture_id"],
                                                  "refund_id": done["refund_id"]})
        return done, event(f"PAYMENT.CAPTURE.{how}", payment, done)

    @app.get("/pay/<order_id>")
    def approval_page(order_id: str):
        terms = link_terms(order_id)
        if terms is None:
            return jsonify(error="invalid payment link"), 400
        return PAGE.format(amount=terms[0], currency=terms[1], order_id=order_id, query=request.query_string.decode())

    @app.post("/pay/<order_id>/approve")
    def approve(order_id: str):
        terms = link_terms(order_id)
        if terms is None:
            return jsonify(error="invalid payment link"), 400
        with lock:
            settings = dict(control)
            payment = payments.get(order_id)
            if payment is None:
                declined = settings["outcome"] == "decline"
                payment = {
                    "order_id": order_id,
                    "amount": terms[0],
                    "currency": terms[1],
                    "capture_id": f"CAP-{uuid.uuid4().hex[:16].upper()}",
                    "status": "DECLINED" if declined else "COMPLETED",
                }
                payment["events"] = [event("CHECKOUT.ORDER.APPROVED", payment)] + [
                    event("PAYMENT.CAPTURE.DENIED" if declined else "PAYMENT.CAPTURE.COMPLETED", payment)
                ]
                payments[order_id] = payment
        # Approving again re-sends the same events, as a provider retrying its webhooks does.
        if settings["delay_seconds"] > 0:
            def later():
                time.sleep(settings["delay_seconds"])
                deliver_all(payment["events"], settings)

            threading.Thread(target=later, daemon=True).start()
            statuses = None
        else:
            statuses = deliver_all(payment["events"], settings)
        # its log: one line a payment, with what checkout answered each webhook (None: not yet, or
        # never answered); Flask's own access log is off under gunicorn, and a line a request
        # would cost the rehearsal's shared CPU more than this
        log.info("payment approved", extra={"order_id": order_id, "payment_status": payment["status"],
                                            "delay_seconds": settings["delay_seconds"], "webhook_statuses": statuses})
        return jsonify(
            status=payment["status"],
            capture_id=payment["capture_id"],
            event_ids=[e["id"] for e in payment["events"]],
            webhook_status=statuses[-1] if statuses else None,
            webhook_statuses=statuses,
        )

    @app.post("/v1/refunds")
    def refund():
        with lock:
            failing = control["refunds"] == "fail"
        if failing:
            return jsonify(error="refunds are failing (simulated outage)"), 503
        body = request.get_data()
        if not signature_is_valid(secret, body, request.headers.get(SIGNATURE_HEADER, ""), tolerance_seconds=300):
            return jsonify(error="invalid signature"), 401
        try:
            asked = json.loads(body)
            capture_id, amount = str(asked["capture_id"]), int(asked["amount"])
        except (ValueError, KeyError, TypeError):
            return jsonify(error="capture_id and amount required"), 422
        with lock:
            payment = next((p for p in payments.values() if p["capture_id"] == capture_id), None)
            if payment is None or payment["status"] not in ("COMPLETED", "REFUNDED", "REVERSED"):
                return jsonify(error="no such captured payment"), 404
            if amount != payment["amount"]:
                return jsonify(error="only full refunds are simulated"), 422
            done, news = refunds.get(capture_id), None
            asked_as = request.headers.get(REFUND_REQUEST_ID_HEADER)
            if done is not None and done.get("request_id") != asked_as:
                # given back already, in the dashboard or by a chargeback: PayPal refuses it, naming why
                return jsonify(error="the capture has been refunded already",
                               details=[{"issue": ALREADY_REFUNDED}]), 422
            if done is None:
                done, news = give_back(payment, "REFUNDED", amount)
                done["request_id"] = asked_as  # a retry with the same id is the same refund
            settings = dict(control)
        if news is not None:  # told after this answer, as PayPal does
            threading.Thread(target=deliver_all, args=([news], settings), name="refund-news", daemon=True).start()
        return jsonify(done), 201

    @app.post("/v1/payments/<order_id>/<action>")
    def give_back_at_provider(order_id: str, action: str):
        """The merchant's refund in the provider's dashboard (`refund`), or a chargeback the buyer
        won (`reverse`): the whole capture goes back, and checkout is told before this answers."""
        how = {"refund": "REFUNDED", "reverse": "REVERSED"}.get(action)
        if how is None:
            return jsonify(error="refund or reverse"), 404
        with lock:
            payment = payments.get(order_id)
            if payment is None or payment["status"] != "COMPLETED":
                return jsonify(error="no captured payment to give back"), 409
            done, news = give_back(payment, how, payment["amount"])
            settings = dict(control)
        statuses = deliver_all([news], settings)
        return jsonify({**done, "webhook_statuses": statuses}), 201

    @app.get("/v1/payments/<order_id>")
    def show_payment(order_id: str):
        payment = payments.get(order_id)
        if payment is None:
            return jsonify(error="no such payment"), 404
        shown = {k: v for k, v in payment.items() if k != "events"}
        shown["refund"] = refunds.get(payment["capture_id"])
        return jsonify(shown)

    @app.route("/control", methods=["GET", "POST"])
    def steer():
        if request.method == "POST":
            asked = request.get_json(silent=True) or {}
            wrong = _wrong_controls(asked)
            if wrong:  # kept, they would fail every approval after them
                return jsonify(error=f"not a setting of the right kind: {', '.join(wrong)}"), 422
            with lock:
                control.clear()
                control.update(DEFAULT_CONTROL)
                control.update({k: asked[k] for k in DEFAULT_CONTROL if k in asked})
        return jsonify(control)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app


def app_from_environment() -> Flask:
    """The app gunicorn serves (`main` starts it): webhooks to CHECKOUT_WEBHOOK_URL."""
    logs.configure("payment-simulator")
    return create_app(os.environ["CHECKOUT_WEBHOOK_URL"], os.environ.get("PAYMENT_WEBHOOK_SECRET", DEV_SECRET),
                      float(os.environ.get("WEBHOOK_REDELIVERY_SECONDS", "3600")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--webhook-url", default=os.environ.get("CHECKOUT_WEBHOOK_URL", "http://127.0.0.1:8003/payments/webhook"))
    args = parser.parse_args()
    print(f"payment simulator on http://{args.host}:{args.port} -> webhooks to {args.webhook_url}", flush=True)
    # gunicorn takes this process over (same pid: whoever started it stops it with SIGTERM)
    os.execve(sys.executable, [
        sys.executable, "-m", "gunicorn", "--bind", f"{args.host}:{args.port}",
        "--workers", "1", "--worker-class", "gthread", "--threads", "32", "--keep-alive", "5",
        "--graceful-timeout", "5", "--no-control-socket",
        "devtools.payment_simulator:app_from_environment()",
    ], dict(os.environ, CHECKOUT_WEBHOOK_URL=args.webhook_url))


if __name__ == "__main__":
    main()
