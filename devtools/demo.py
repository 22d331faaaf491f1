"""A scripted drop against a running `make run` stack: `make demo`.

An admin opens a drop of 3 units, 4 buyers rush it, 3 pay, the 4th hears "sold out", and the
confirmation emails arrive in the local SMTP server.
"""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import requests

from devtools.client import Floodgate, poll
from devtools.stack import ROOT, Infra, Stack


def main() -> None:
    stack = Stack(
        infra=Infra(postgres_url=os.environ.get("POSTGRES_URL", Infra.postgres_url),
                    amqp_url=os.environ.get("AMQP_URL", Infra.amqp_url)),
        var_dir=Path(ROOT / "var" / "stack"),
    )
    floodgate = Floodgate(stack)
    try:
        requests.get(stack.url("checkout") + "/healthz", timeout=2)
    except requests.RequestException:
        sys.exit("The stack is not running: start it with `make run` in another terminal first.")

    step = lambda text: print(f"\n== {text}", flush=True)  # noqa: E731
    step("admin creates a drop of 3 units (OnePlus One, 299.00 CAD), open now")
    admin = floodgate.create_admin(f"admin-{uuid.uuid4().hex[:6]}@floodgate.test", "demo admin password (dev only)")
    drop = floodgate.create_drop(admin, quantity=3)
    print(f"drop {drop['id']}: {drop['remaining']} of {drop['quantity']} left, state {drop['state']}")

    step("4 buyers sign in before the rush and each place an order")
    buyers = [floodgate.register() for _ in range(4)]
    orders = []
    for email, token in buyers:
        answer = floodgate.place_order(token, drop["id"])
        body = answer.json()
        print(f"{email}: {answer.status_code} {body['status'] if answer.ok else body['title']}")
        if answer.status_code == 201:
            orders.append((token, body))

    step("the buyers with a hold pay at the provider (simulator)")
    for token, order in orders:
        floodgate.pay(order)
        confirmed = floodgate.wait_for_status(token, order["id"], "confirmed")
        print(f"order {order['id']}: {confirmed['status']}")
    print(f"drop now: {floodgate.get_drop(drop['id'])['remaining']} left")

    step("confirmation emails in the local SMTP server")
    mails = poll(lambda: [m for _, o in orders for m in floodgate.confirmations_of(o["id"])]
                 if all(floodgate.confirmations_of(o["id"]) for _, o in orders) else None, what="the emails")
    for mail in mails:
        print(f"to {mail['to'][0]}: {mail['subject']}")
    print("\n" + mails[0]["text"])


if __name__ == "__main__":
    main()
