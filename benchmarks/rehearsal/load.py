"""The crowd: Locust, run as a library in its own process (gevent patches everything it imports).

    python -m benchmarks.rehearsal.load CONFIG.json

CONFIG names the mode (`drop`: the real stack; `naive`: the reference checkout), the host, the drop,
the signed-in buyers, the opening time, whether the drop has a line (`line`, with the window
`join_from`..`join_until` in which the buyers join it, and `late_from`..`late_until` in which the
first `late_buyers` of them join after the opening) and where to write the event log (see
events.py). Without a line every simulated buyer waits for the opening, so the whole crowd
arrives at once; with one, each joins the line at a random moment of the window (before the
opening) and polls its ticket, as often as `poll_after_seconds` says, until it is admitted (then
it orders with the pass in `Line-Pass`) or told `sold_out`, `closed` or `expired` (then it
leaves); its joins and polls go through one pool of connections the crowd shares (see
FRONT_CONNECTIONS). Then:

  drop   POST /orders with an Idempotency-Key (the same key on every retry; 429/503 and
         request-in-progress are retried after Retry-After, a dropped connection after a short
         back-off), approve the payment at the simulator, poll GET /orders/{id} until confirmed.
  naive  POST /orders once (retrying only a dropped connection), as long as the run lasts.
"""
from __future__ import annotations

import locust  # noqa: I001  (first: it monkey-patches the standard library with gevent)

import json
import random
import sys
import time
import uuid
from itertools import count

import gevent
from geventhttpclient.client import HTTPClientPool
from locust import FastHttpUser, constant, task
from locust.contrib.fasthttp import FastHttpSession
from locust.env import Environment
from locust.exception import StopUser

from benchmarks.rehearsal.events import JOIN_LINE, POLL_PLACE, POLL_TICKET, classify

CONFIG: dict = {}
# a ticket's states after which its buyer leaves the line without an order
LEAVING = ("sold_out", "closed", "expired", "ordered")
# Buyers in line reach the API through one pool of keep-alive connections that the whole crowd
# shares, as through the ingress in Kubernetes (which keeps its own pool of connections to the
# API): thousands of waiting buyers each keeping a connection straight to gunicorn would pass its
# worker connections (1,000 a worker), and the rest would wait in the listen backlog for seconds,
# measuring that cap, not the line. A request waiting for a free connection of the pool waits as
# it would in the ingress's queue, and that wait is part of its latency.
FRONT_CONNECTIONS = 64
_front: HTTPClientPool | None = None
_next_buyer = count()
_log_lines: list[str] = []
_finished = 0


def record(ev: str, **fields) -> None:
    fields["ev"] = ev
    fields.setdefault("t", time.time())
    _log_lines.append(json.dumps(fields))


def _flush_forever(path: str) -> None:
    with open(path, "a", buffering=1 << 16) as log:
        while True:
            gevent.sleep(0.25)
            if _log_lines:
                lines = _log_lines[:]
                del _log_lines[: len(lines)]
                log.write("\n".join(lines) + "\n")
                log.flush()


def _problem_type(response) -> str | None:
    try:
        return (response.json() or {}).get("type")
    except Exception:
        return None


def _body(response) -> dict | None:
    """The answer's JSON, or None when it is cut short (a worker killed while answering: the
    status line came, the body did not)."""
    try:
        return response.json()
    except Exception:
        return None


def _retry_after(response, attempt: int) -> float:
    try:
        return max(0.05, float(response.headers.get("Retry-After")))
    except (AttributeError, TypeError, ValueError):
        # a dropped connection: a short, jittered back-off so the retries do not arrive as one wave
        return min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5)


def address_of(index: int) -> dict:
    # One physical address per buyer: checkout limits units per address across buyers.
    return {
        "name": f"Buyer {index}",
        "street_address": f"{100 + index} Sussex Drive",
        "city": "Ottawa",
        "postal_code": "K1A 0B1",
        "country_area": "ON",
        "country_code": "CA",
    }


class _Buyer(FastHttpUser):
    abstract = True
    wait_time = constant(0)
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.index = next(_next_buyer)
        email, self.token = CONFIG["buyers"][self.index % len(CONFIG["buyers"])]
        self.auth = {"Authorization": f"Bearer {self.token}"}
        if CONFIG.get("line"):
            # The crowd joins the line over a window before the opening, each buyer at its moment;
            # the first `late_buyers` over a window after it.
            late = self.index < CONFIG.get("late_buyers", 0)
            window = (CONFIG["late_from"], CONFIG["late_until"]) if late else (CONFIG["join_from"], CONFIG["join_until"])
            gevent.sleep(max(0.0, random.uniform(*window) - time.time()))
        else:
            # Everyone waits for the opening: the crowd arrives at once.
            gevent.sleep(max(0.0, CONFIG["opens_at"] - time.time()))

    def on_stop(self) -> None:
        global _finished
        _finished += 1
        record("done", buyer=self.index)

    def request(self, method: str, url: str, name: str, session: FastHttpSession | None = None, **kwargs):
        """One HTTP request (on the user's own connection, or `session`'s), logged with its latency
        and kind of answer; never raises."""
        with (session or self.client).request(method, url, name=name, catch_response=True, **kwargs) as response:
            status = response.status_code or 0
            problem = _problem_type(response) if status >= 400 else None
            kind = classify(status, problem, type(response.error).__name__ if status == 0 and response.error else None)
            meta = response.request_meta
            # whether a refusal says when to come back: a 429 or 503 without Retry-After is a fault
            refusal = {"retry_after": response.headers.get("Retry-After")} if status in (429, 503) else {}
            record("request", t=meta["start_time"], ms=round(meta["response_time"], 2), name=name, status=status, kind=kind,
                   **refusal)
            if status >= 500 or status == 0:
                response.failure(kind)
            else:
                response.success()
            return response, status, problem

    def place(self, path: str = "/orders", line_pass: str | None = None) -> dict | None:
        """Place one order, retrying with the same Idempotency-Key; the order, or None if refused."""
        key = str(uuid.uuid4())
        headers = {**self.auth, "Idempotency-Key": key}
        if line_pass is not None:
            headers["Line-Pass"] = line_pass
        body = {"drop_id": CONFIG["drop_id"], "quantity": 1, "shipping_address": address_of(self.index)}
        deadline = time.monotonic() + CONFIG.get("give_up_seconds", 60)
        for attempt in range(1000):
            response, status, problem = self.request("POST", path, "POST /orders", json=body, headers=headers)
            order = _body(response) if status == 201 else None
            if order is not None:
                record("placed", order_id=order["id"], buyer=self.index)
                return order
            if status == 201:  # cut mid-answer: the same key brings the same order back
                record("cut_answer", buyer=self.index, name="POST /orders")
                gevent.sleep(_retry_after(None, attempt))
                continue
            if status == 409 and (problem or "").endswith("sold-out"):
                record("sold_out", buyer=self.index, via="order")
                return None
            if status == 403 and (problem or "").endswith("line-pass-expired"):
                record("left_line", buyer=self.index, state="expired", via="order")
                return None
            retryable = status in (0, 429, 502, 503, 504) or (status == 409 and (problem or "").endswith("in-progress"))
            if not retryable or time.monotonic() > deadline or not self.environment.runner or self.stopping:
                record("gave_up", buyer=self.index, reason=classify(status, problem))
                return None
            gevent.sleep(_retry_after(response, attempt))
        return None

    @property
    def stopping(self) -> bool:
        return time.time() > CONFIG.get("stop_at", float("inf"))


class DropBuyer(_Buyer):
    """A buyer of the real stack: order, pay at the simulator, wait for the confirmation."""

    @task
    def buy(self) -> None:
        try:
            line_pass = None
            if CONFIG.get("line"):
                line_pass = self.wait_in_line()
                if line_pass is None:
                    raise StopUser()
            order = self.place(line_pass=line_pass)
            if order is not None:
                self.pay(order)
                self.await_confirmation(order)
        except (StopUser, gevent.GreenletExit):
            raise
        except Exception as error:
            # once, not again from the start: Locust would run the task anew after an error
            record("gave_up", buyer=self.index, reason=f"the simulated buyer failed: {error!r}"[:200])
        raise StopUser()

    def wait_in_line(self) -> str | None:
        """Join the drop's line at its public edge and poll the place there until the line
        reaches the buyer, then ask checkout for the pass (as the drop page does): the pass, or
        None when the buyer leaves (told sold_out, closed or expired, or the rehearsal ends)."""
        tickets = f"/drops/{CONFIG['drop_id']}/line/tickets"
        self.front = FastHttpSession(CONFIG["line_host"], self.environment.events.request, self, client_pool=_front,
                                     max_retries=0, network_timeout=self.network_timeout,
                                     connection_timeout=self.connection_timeout)
        ticket = self.join_line(tickets)
        if ticket is None:
            return None
        state = None
        while True:
            if ticket["state"] != state:
                state = ticket["state"]
                # when the buyer heard it: the answer's arrival (the sold-out check times it)
                record("ticket", buyer=self.index, ticket_id=ticket["ticket_id"], state=state,
                       position=ticket.get("position"), ahead=ticket.get("ahead"), t=self.answered_at)
            if state == "admitted":
                if ticket.get("pass"):
                    return ticket["pass"]
                ticket = self.poll(f"{tickets}/mine", POLL_TICKET)  # the pass, signed in, at checkout
                if ticket is None:
                    return None
                continue
            if state in LEAVING or ticket.get("poll_after_seconds") is None:
                if state == "sold_out":
                    record("sold_out", buyer=self.index, via="line", t=self.answered_at)
                else:
                    record("left_line", buyer=self.index, state=state, via="line")
                return None
            if self.stopping:
                record("gave_up", buyer=self.index, reason=f"still {state} in the line when the rehearsal ended")
                return None
            gevent.sleep(ticket["poll_after_seconds"])
            # the edge knows a ticket once the admitter has placed it; until then, checkout does
            place = self.poll(f"{tickets}/{ticket['ticket_id']}", POLL_PLACE, session=self.front, missing_ok=True)
            ticket = {**ticket, **place} if place else self.poll(f"{tickets}/mine", POLL_TICKET)
            if ticket is None:
                return None

    def join_line(self, url: str) -> dict | None:
        """POST the join, retrying 429/503 after Retry-After and a cut connection; the ticket."""
        ticket, status = self.until_answered("POST", url, JOIN_LINE, (200, 201), "join", session=self.front)
        if ticket is not None:
            record("joined", buyer=self.index, ticket_id=ticket["ticket_id"], state=ticket["state"],
                   position=ticket.get("position"), again=status == 200, t=self.answered_at)
        return ticket

    def poll(self, url: str, name: str, session=None, missing_ok: bool = False) -> dict | None:
        """GET a place or ticket, retrying 429/503 after Retry-After and a cut connection; the
        answer, or None (a 404 when `missing_ok`: the edge has not placed the ticket yet)."""
        return self.until_answered("GET", url, name, (200,), "poll", session=session, missing_ok=missing_ok)[0]

    def until_answered(self, method: str, url: str, name: str, ok: tuple[int, ...], what: str, session=None,
                       missing_ok: bool = False) -> tuple[dict | None, int | None]:
        """Send the request until an `ok` status comes with its whole JSON body, retrying 429/503
        after Retry-After and a cut connection or answer: (the body, its status), or (None, the
        status) when refused (given up, said as `what`) or, with `missing_ok`, 404."""
        status = None
        for attempt in range(1000):
            response, status, problem = self.request(method, url, name, session=session, headers=self.auth)
            self.answered_at = time.time()
            body = _body(response) if status in ok else None
            if body is not None:
                return body, status
            if status == 404 and missing_ok:
                return None, status
            if status in ok:
                record("cut_answer", buyer=self.index, name=name)
            elif status not in (0, 429, 502, 503, 504) or self.stopping:
                record("gave_up", buyer=self.index, reason=f"{what}: {classify(status, problem)}")
                return None, status
            gevent.sleep(_retry_after(response, attempt))
        return None, status

    def pay(self, order: dict) -> None:
        link = order["payment"]["approval_url"]
        path, _, query = link.partition("?")
        for attempt in range(20):
            _, status, _ = self.request("POST", f"{path}/approve?{query}", "POST /pay/{id}/approve")
            if 200 <= status < 300:
                return
            gevent.sleep(_retry_after(None, attempt))
        record("gave_up", buyer=self.index, reason="payment not approved")

    def await_confirmation(self, order: dict) -> None:
        deadline = time.monotonic() + CONFIG.get("confirm_timeout_seconds", 60)
        while time.monotonic() < deadline:
            response, status, _ = self.request(
                "GET", f"/orders/{order['id']}", "GET /orders/{id}", headers=self.auth
            )
            if status == 200 and (_body(response) or {}).get("status") == "confirmed":
                record("confirmed", order_id=order["id"], buyer=self.index)
                return
            # a status page refreshing once a second
            gevent.sleep(1.0 if status == 200 else max(1.0, _retry_after(response, 1)))
        record("gave_up", buyer=self.index, reason="not confirmed in time")


class NaiveBuyer(_Buyer):
    """The same crowd against the naive checkout: one order each, until the run ends."""

    network_timeout = 60.0

    @task
    def buy(self) -> None:
        self.place()
        raise StopUser()


def main() -> None:
    global _front
    CONFIG.update(json.loads(open(sys.argv[1]).read()))
    if CONFIG.get("line"):
        _front = HTTPClientPool(concurrency=FRONT_CONNECTIONS, connection_timeout=10.0, network_timeout=60.0)
    user_class = DropBuyer if CONFIG["mode"] == "drop" else NaiveBuyer
    users = CONFIG.get("users") or len(CONFIG["buyers"])
    env = Environment(user_classes=[user_class], host=CONFIG["host"], events=locust.events)
    runner = env.create_local_runner()
    flusher = gevent.spawn(_flush_forever, CONFIG["events"])
    env.events.spawning_complete.add_listener(lambda user_count: record("spawned", users=user_count))
    record("start", users=users)
    # Spawned well before the opening; the users themselves wait for it.
    runner.start(users, spawn_rate=max(users, 1))
    deadline = CONFIG["stop_at"]
    while time.time() < deadline:
        gevent.sleep(0.2)
        if _finished >= users:
            break
    runner.quit()
    record("end", finished=_finished, users=users)
    gevent.sleep(0.5)
    flusher.kill()


if __name__ == "__main__":
    main()
