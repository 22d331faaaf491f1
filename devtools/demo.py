"""Demo drops on the local stack.

- `demo_drop` (called by `make run` once the stack is up): a drop of 25 units with a line,
  opening a few minutes later, to try from its drop page in a browser.
- `make demo`: a scripted drop against a running `make run` stack. An admin opens a drop of 3
  units, 4 buyers rush it, 3 pay, the 4th hears "sold out", and the confirmation emails arrive
  in the local SMTP server.
"""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import requests

from devtools.client import Floodgate, poll
from devtools.stack import ROOT, Infra, Stack


DEMO_OPENS_IN_SECONDS = 180
# development only: the demo admin's password, printed by `make run` for the local stack
DEMO_ADMIN_PASSWORD = "demo admin password (dev only)"


def demo_drop(stack: Stack) -> None:
    """A drop of 25 units with a line, opening in DEMO_OPENS_IN_SECONDS, and its drop page."""
    floodgate = Floodgate(stack)
    email = f"admin-{uuid.uuid4().hex[:6]}@floodgate.test"
    admin = floodgate.create_admin(email, DEMO_ADMIN_PASSWORD)
    drop = floodgate.create_drop(admin, quantity=25, opens_in=DEMO_OPENS_IN_SECONDS, lasts=2 * 3600)
    floodgate.put_line(admin, drop, admission_rate=5)
    print(f"\nA demo drop of {drop['quantity']} units, behind a line, opens in {DEMO_OPENS_IN_SECONDS // 60} "
          f"minutes ({drop['opens_at']}):\n  drop page  {stack.url('checkout')}/drops/{drop['id']}/page   "
          f"(sign up, join the line, order when admitted, pay on the simulator)\n"
          f"  its admin  {email} / {DEMO_ADMIN_PASSWORD!r}   (development only)", flush=True)


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
