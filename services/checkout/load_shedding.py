"""How many orders a checkout process takes at once, and when a refused buyer should come back.

`OrderAdmission` wraps checkout's WSGI app: `POST /orders` passes the gate before Flask sees it,
so a refusal costs gunicorn's parsing and a few lines here, not Flask's request machinery, its
hooks and a log line (0.8 ms a refusal before: the rehearsal's crowd spent a core on them).

A drop's crowd arrives in the same second. Checkout takes `limit` orders at a time per process
and answers the rest at once with 429 and a `Retry-After`. A fixed `Retry-After: 1` brought the
whole refused crowd back every second, and answering those refusals cost more CPU than the
orders (0.8 ms each, 1,000 a second in the rehearsal). So the wait follows the ratio of refused
to admitted orders counted over the last one to two seconds, drawn at random from 1 s up to that
ratio (capped at `max_retry_after` seconds): the crowd comes back spread out, at one to two times
the rate checkout admits orders; who comes back too soon is refused again, cheaply, with a new
wait. (Drawn up to twice the ratio, it came back at half to once that rate: in a drop's last
seconds, when the refused are all the demand left, checkout sat partly idle while the last units
waited for buyers sitting out their `Retry-After`. The rehearsal placed 42.4 / 50.0 / 40.6
orders/s so, and 42.9 / 53.0 / 54.7 with the shorter draw.)

An order that carries a genuine, unexpired line pass (`Line-Pass`, checked here by its signature
alone; whose it is, Flask checks) is not turned away at once: it waits up to `patience` seconds
for a slot, and only then gets its 429. The line has already paced these buyers: the admitter
never puts more passes in play than the remaining units x the admission factor. Turned away, they
sat out a whole `Retry-After` (a second or two) while checkout, between waves of returning buyers,
idled and the units waited for them: in the rehearsal a third to two thirds of the admitted
buyers' first orders were refused so. A waiting order holds one of the process's request threads
(blocked, costing no CPU), and one order per pass waits (the same pass sent again while it waits
is refused at once, so a pass cannot hold more than one thread). The price: while the order
slots are taken and pass holders wait in the threads they leave, the process's other requests
(webhooks, polls, health probes) wait in gunicorn's queue behind them, each for up to
`patience` seconds more than before (Kubernetes' probes allow for that: liveness fails after 3
misses 10 s apart, readiness after 2 misses 5 s apart). Keeping threads free instead (at most
threads - slots - 2 waiting, the rest refused at once) turned the queue back into refusals: 155
429s and 58.7 orders/s in the rehearsal, 98-112 and 56.5-60.9 with 32 threads, against 0 and
68-99 without. Orders without a pass (a drop without a line, where the whole crowd comes at
once) are refused at once as before: waiting would only move that crowd into the threads. A
pass holder still without a slot after `patience` is refused and counted, which is what the
admitter slows down for; a refused order without a pass is not counted, and takes no slot while
pass holders wait for one. `floodgate_order_gate_wait_seconds{outcome}` shows how long pass
holders waited, and an order that got its slot counts its wait in its own time too (its log
line's `duration_ms`, `floodgate_http_request_seconds`: `FloodgateOrdersSlow` reads it;
before 2026-12-07 it left the wait out).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import threading
import time
from typing import Callable, Iterable, Sequence

import sqlalchemy as sa
from prometheus_client import Histogram

from services.checkout import line as waiting_room
from shared import metrics
from shared.errors import PROBLEM_JSON
from shared.web import ARRIVED_AT, cors_headers

WINDOW_SECONDS = 2.0
log = logging.getLogger("floodgate.checkout")


class OrderGate:
    """At most `limit` orders in hand at once; `retry_after()` for those turned away."""

    def __init__(self, limit: int, max_retry_after: int = 10, clock: Callable[[], float] = time.monotonic,
                 draw: Callable[[int, int], int] = random.randint):
        self._slots = threading.BoundedSemaphore(max(1, limit))
        self._waiting: set[str] = set()  # the passes (their tickets) whose orders wait for a slot
        self._max_retry_after = max(1, max_retry_after)
        self._clock = clock
        self._draw = draw
        self._lock = threading.Lock()
        self._window_start = clock()
        self._admitted = self._refused = 0
        self._last_admitted = self._last_refused = 0
        # pass holders refused since the process started: what LoadReport tells the admitter
        self.refused_total = 0

    def try_enter(self, wait_seconds: float = 0.0, waiter: str | None = None) -> bool:
        """Take a slot (True; `leave()` when done) or count a refusal (False). With `wait_seconds`
        and a `waiter` (a pass's ticket), wait up to that long for one to be left, unless this
        waiter already waits. No order takes a slot at once while pass holders wait for one: the
        slot left is theirs (a semaphore hands it to whoever asks first), and a pass holder who
        comes later waits after them.

        Only a pass holder's refusal counts in `refused_total`: the admitter slows the line down
        for it. Counting every 429 let orders without a pass (bots, or a lineless drop's crowd on
        the same checkout) halve the line's pace at every report, down to one buyer a second."""
        entered = not self._waiting and self._slots.acquire(blocking=False)
        if not entered and wait_seconds > 0 and waiter is not None and self._start_waiting(waiter):
            try:
                entered = self._slots.acquire(timeout=wait_seconds)
            finally:
                with self._lock:
                    self._waiting.discard(waiter)
        with self._lock:
            self._roll()
            if entered:
                self._admitted += 1
            else:
                self._refused += 1
                if waiter is not None:
                    self.refused_total += 1
        return entered

    def _start_waiting(self, waiter: str) -> bool:
        with self._lock:
            if waiter in self._waiting:
                return False
            self._waiting.add(waiter)
            return True

    def leave(self) -> None:
        self._slots.release()

    def retry_after(self) -> int:
        """Seconds a refused buyer should wait: at random from 1 up to the ratio of refused to
        admitted orders lately, so the refused return spread out, at one to two times the
        admitted rate (the counts cover one to two seconds)."""
        with self._lock:
            self._roll()
            refused = self._refused + self._last_refused
            admitted = self._admitted + self._last_admitted
        spread = min(self._max_retry_after, max(1, math.ceil(refused / max(admitted, 1))))
        return self._draw(1, spread)

    def _roll(self) -> None:
        # two half-windows: the current one and the one before it
        now = self._clock()
        if now - self._window_start >= WINDOW_SECONDS / 2:
            stale = now - self._window_start >= WINDOW_SECONDS
            self._last_admitted, self._last_refused = (0, 0) if stale else (self._admitted, self._refused)
            self._admitted = self._refused = 0
            self._window_start = now


class LoadReport:
    """Tells the waiting room's admitter (services/checkout/admitter.py) that checkout turns
    orders away: every `every` seconds, from its first order on, a thread of each API process
    writes the process's refusals so far to `checkout_load`, one row per process, and deletes
    the rows of processes that have not reported for an hour."""

    def __init__(self, gate: OrderGate, engine, every: float = 2.0):
        self._gate, self._engine, self._every = gate, engine, every
        self._started = False
        self._lock = threading.Lock()
        self.process = f"{socket.gethostname()}:{os.getpid()}"

    def start(self) -> None:
        """Start reporting, once per process (called on the first order: after gunicorn's fork)."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self.process = f"{socket.gethostname()}:{os.getpid()}"
        threading.Thread(target=self._run, name="load-report", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self._every)
            try:
                self.report()
            except Exception:  # the database restarting, say: the next report tries again
                log.warning("could not report checkout's load", exc_info=True)

    def report(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(_REPORT, {"process": self.process, "refused": self._gate.refused_total})


# The report also clears out the rows of processes gone for an hour (a row per process ever
# started would pile up with every deploy and restart); only the last 30 s are ever read.
_REPORT = sa.text(
    "WITH gone AS (DELETE FROM checkout_load WHERE updated_at < now() - interval '1 hour') "
    "INSERT INTO checkout_load (process, refused, updated_at) VALUES (:process, :refused, now()) "
    "ON CONFLICT (process) DO UPDATE SET refused = excluded.refused, updated_at = excluded.updated_at"
)


GATE_WAIT = Histogram(
    "floodgate_order_gate_wait_seconds",
    "How long orders with a line pass waited at checkout's gate for a slot, by whether they got one",
    ["service", "outcome"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)


def line_pass_patience(secret: str | Sequence[str], seconds: float) -> Callable[[dict], tuple[float, str | None]]:
    """How long an order may wait for a slot, and as whom: `seconds` and the pass's ticket with
    a genuine, unexpired line pass (signed with `secret`), else (0, None) (see the module's
    docstring)."""

    def patience(environ: dict) -> tuple[float, str | None]:
        ticket = waiting_room.current_pass_ticket(secret, environ.get("HTTP_LINE_PASS"))
        return (seconds, ticket) if ticket is not None else (0.0, None)

    return patience


class OrderAdmission:
    """WSGI middleware: `POST <path>` takes a slot of `gate` for as long as the app handles it,
    or is answered with 429, its `Retry-After` and a problem+json body: at once, or after the
    seconds `patience(environ)` gives without a slot (a line pass holder's, with its ticket)."""

    def __init__(self, app, gate: OrderGate, refusal, service: str, path: str = "/orders",
                 report: LoadReport | None = None, cors_origins: frozenset = frozenset(),
                 patience: Callable[[dict], tuple[float, str | None]] = lambda environ: (0.0, None)):
        self.app, self.gate, self.path, self.service = app, gate, path, service
        self._refusal = refusal  # the problem (a TooBusy) every refusal carries
        self._report = report
        self._cors_origins = cors_origins
        self._patience = patience

    def __call__(self, environ, start_response) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != self.path:
            return self.app(environ, start_response)
        environ[ARRIVED_AT] = time.perf_counter()  # the order's time counts its wait at the gate
        if self._report is not None:
            self._report.start()
        patience, waiter = self._patience(environ)
        started = time.monotonic()
        entered = self.gate.try_enter(patience, waiter)
        if patience > 0:
            GATE_WAIT.labels(self.service, "entered" if entered else "refused").observe(time.monotonic() - started)
        if not entered:
            return self._refuse(start_response, environ.get("HTTP_ORIGIN"))
        try:
            # Flask has produced the whole body by the time it returns: the slot is free after
            return self.app(environ, start_response)
        finally:
            self.gate.leave()

    def _refuse(self, start_response, origin: str | None) -> Iterable[bytes]:
        body = json.dumps(dict(self._refusal.to_dict(), instance=self.path)).encode()
        start_response(f"{self._refusal.status} Too Many Requests", [
            ("Content-Type", PROBLEM_JSON),
            ("Content-Length", str(len(body))),
            ("Retry-After", str(self.gate.retry_after())),
            *cors_headers(origin, self._cors_origins),
        ])
        metrics.HTTP_REQUESTS.labels(self.service, "POST", self.path, self._refusal.status).inc()
        return [body]
