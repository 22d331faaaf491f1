"""The waiting room's public edge: `python -m services.checkout line-status`, where the crowd
joins lines and polls its place in them.

A line's crowd arrives together and polls every few seconds, so both must cost next to nothing.
This process serves them on an asyncio server (uvicorn), not through checkout's Flask API:

- `POST /drops/{drop_id}/line/tickets` (signed in: `Authorization: Bearer`): join, one ticket per
  account (joining again returns it: 200, else 201), as `line.join_many` says. The joins that
  arrive within `JOIN_WINDOW_SECONDS` of one another go to the database together, one statement
  and one commit for all of them (`Joiner`): the rush costs a commit per batch, not per buyer.
  Joins per client address are limited per minute (429 with `Retry-After`).

For the polls it keeps a copy of every live line in memory (its public figures, each placed
ticket's position, and each admitted ticket's buyer and pass expiry), refreshed from checkout's
database four times a second by one thread, and answers from it:

- `GET /drops/{drop_id}/line/tickets/{ticket_id}`: that ticket's place, as
  `line.place_view` says it (state, position, people ahead, estimated wait, when to poll next).
  A ticket id is no secret (the line publishes the pre-queue's ids for anyone to check the
  draw), so the answer holds nothing private, and may be cached, unless the line has admitted
  the ticket and the poll carries its buyer's token (`Authorization: Bearer`, optional): then it
  also holds the buyer's pass (`pass`, `pass_expires_at`; `expired` once that has passed) and
  may not be cached. The admitted buyer orders straight from the poll that told it, instead of
  asking checkout's API for the pass (`GET /drops/{id}/line/tickets/mine`, which still answers
  it): in the rehearsal that pickup took 0.4-0.5 s at the median and over a second at p95, with
  the rush at checkout, between each admitted buyer hearing and ordering. Only those polls
  verify a token (another buyer's, or one that does not verify, gets the public answer), and
  the copy keeps only the admitted tickets' buyers and expiries, fetched as the admitter admits
  them. A ticket the admitter has not placed yet is `waiting` without a position while the
  line has tickets without one (any ticket may be one of those), else 404 here (it joined
  since the admitter's last turn): ask the buyer's own poll instead.
- `GET /drops/{drop_id}/line/status`: the line's public figures.
- `GET /healthz` (the process runs) and `GET /readyz` (the copy is fresh).
- `GET /metrics` (Prometheus): its answers by route and status, their time, and the age of its
  copy (`EdgeMetrics`). With `METRICS_BIND` (HOST:PORT, as the APIs' gunicorn takes it) they
  are served there instead (prometheus_client's own server, which answers them on any path), so
  the public port never shows them; that needs one uvicorn worker a pod (each worker counts its
  own answers). A metrics port that cannot be opened stops the worker at startup.

Answers may be cached for a second (`Cache-Control: public, max-age=1`), so a CDN in front can
take the polls too. Nothing is logged per request (a crowd's polls would drown the logs); a
failed refresh is, and `/readyz` fails once the copy is older than `STALE_SECONDS`.
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace

import jwt
import prometheus_client
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy.dialects import postgresql as pg

from services.checkout import errors as checkout_errors, line as waiting_room
from services.checkout.schemas import TicketSchema
from shared import db, errors
from shared.auth import TokenVerifier
from shared.config import keepalive_seconds, metrics_address
from shared.values import utc_now
from shared.web import allowed_origins, cors_headers

log = logging.getLogger("floodgate.checkout.line_status")

STALE_SECONDS = 5.0  # /readyz fails when the copy is older than this
JOIN_WINDOW_SECONDS = 0.005  # joins arriving this close together share a statement and a commit
MAX_JOIN_BATCH = 500
TICKET = TicketSchema()
MAX_AGE = b"public, max-age=1"
# closed lines stay answerable for a day, so a buyer's page learns that its line closed
_LINES = sa.text(
    "SELECT drop_id, state, opens_at, joined, placed, pre_queue_size, admitted_through, remaining_units, "
    "observed_rate FROM lines WHERE state <> 'closed' OR updated_at > now() - interval '1 day'"
)
_PLACED = sa.text(
    "SELECT id, position FROM line_tickets WHERE drop_id = :drop_id AND position > :after ORDER BY position"
).bindparams(sa.bindparam("drop_id", type_=pg.UUID(as_uuid=True)))
# the admitter admits by position: every position up to a line's admitted_through is admitted
_ADMITTED = sa.text(
    "SELECT id, buyer_id, pass_expires_at FROM line_tickets WHERE drop_id = :drop_id AND position > :after "
    "AND position <= :through AND admitted_at IS NOT NULL"
).bindparams(sa.bindparam("drop_id", type_=pg.UUID(as_uuid=True)))


@dataclass
class Lines:
    """The copy: each line's public figures, each placed ticket's position by ticket id, and each
    admitted ticket's buyer and pass expiry (what its pass is made of)."""

    figures: dict[str, SimpleNamespace] = field(default_factory=dict)
    positions: dict[str, dict[str, int]] = field(default_factory=dict)
    placed: dict[str, int] = field(default_factory=dict)  # the highest position copied, per line
    admissions: dict[str, dict[str, tuple[str, datetime]]] = field(default_factory=dict)
    admitted: dict[str, int] = field(default_factory=dict)  # the admitted_through copied, per line
    refreshed: float = 0.0  # time.monotonic() of the last good refresh; 0: never
    made: float = field(default_factory=time.monotonic)

    def refresh(self, connection) -> None:
        """Bring the copy up to date: every line's figures, and the positions handed out and the
        admissions made since the last refresh (neither, once made, ever changes)."""
        figures = {str(row.drop_id): SimpleNamespace(**row._mapping) for row in connection.execute(_LINES)}
        for drop_id, line in figures.items():
            if line.placed > self.placed.get(drop_id, 0):
                known = self.positions.setdefault(drop_id, {})
                for ticket_id, position in connection.execute(
                        _PLACED, {"drop_id": line.drop_id, "after": self.placed.get(drop_id, 0)}):
                    known[str(ticket_id)] = position
                self.placed[drop_id] = max(known.values(), default=0)
            if line.admitted_through > self.admitted.get(drop_id, 0):
                admissions = self.admissions.setdefault(drop_id, {})
                for ticket_id, buyer_id, expires_at in connection.execute(_ADMITTED, {
                        "drop_id": line.drop_id, "after": self.admitted.get(drop_id, 0),
                        "through": line.admitted_through}):
                    admissions[str(ticket_id)] = (buyer_id, expires_at)
                self.admitted[drop_id] = line.admitted_through
        for gone in set(self.positions) - set(figures):
            del self.positions[gone], self.placed[gone]
        for gone in set(self.admissions) - set(figures):
            del self.admissions[gone], self.admitted[gone]
        self.figures = figures
        self.refreshed = time.monotonic()

    def fresh(self) -> bool:
        return self.refreshed > 0 and time.monotonic() - self.refreshed < STALE_SECONDS

    def age(self) -> float:
        """Seconds since the last good refresh (since the copy was made, before the first)."""
        return time.monotonic() - (self.refreshed or self.made)


# the edge's answers by what was asked: its label on the figures below
_ROUTES = ("join", "ticket", "status", "probe", "metrics", "other")


class EdgeMetrics:
    """What the edge reports at /metrics, in a registry of its own (one uvicorn worker's):

    - `floodgate_line_edge_answers_total{route, status}`: answers, by route (`join`, `ticket`,
      `status`, `probe`, `metrics`, `other`) and HTTP status;
    - `floodgate_line_edge_answer_seconds{route}`: the time to make each answer, in the worker
      (the crowd's polls at the opening are the figure to watch);
    - `floodgate_line_edge_copy_age_seconds`: since the copy of the lines was last refreshed
      (/readyz fails past `STALE_SECONDS`; an alert fires when every pod's copy is old);
    - `floodgate_line_edge_lines`: the lines in the copy.

    The answers are counted in plain dicts by the event loop's one thread and read by the
    scrape's: prometheus_client's labelled counter and histogram took 10 µs a poll, a quarter of
    the poll's own cost (`make bench-line`: 22,300 polls/s became 17,700)."""

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

    def __init__(self, lines: Lines):
        self.lines = lines
        self.answers: dict[tuple[str, int], int] = {}
        # per route: the count in each bucket (the last one: above every bound), and the sum
        self.times = {route: [0] * (len(self.BUCKETS) + 1) for route in _ROUTES}
        self.time_sums = dict.fromkeys(_ROUTES, 0.0)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.answers[key] = self.answers.get(key, 0) + 1
        self.times[route][bisect.bisect_left(self.BUCKETS, seconds)] += 1
        self.time_sums[route] += seconds

    def collect(self):
        answers = CounterMetricFamily("floodgate_line_edge_answers", "Answers of the line's edge, by route and status",
                                      labels=["route", "status"])
        for (route, status), count in list(self.answers.items()):
            answers.add_metric([route, str(status)], count)
        yield answers
        seconds = HistogramMetricFamily("floodgate_line_edge_answer_seconds",
                                        "Time to make an answer at the line's edge", labels=["route"])
        for route in _ROUTES:
            counts = list(self.times[route])
            if sum(counts):
                cumulative = list(itertools.accumulate(counts))
                buckets = [(str(bound), total) for bound, total in zip(self.BUCKETS, cumulative)]
                seconds.add_metric([route], buckets + [("+Inf", cumulative[-1])], self.time_sums[route])
        yield seconds
        yield GaugeMetricFamily("floodgate_line_edge_copy_age_seconds",
                                "Seconds since the edge's copy of the lines was refreshed", value=self.lines.age())
        yield GaugeMetricFamily("floodgate_line_edge_lines", "Lines in the edge's copy", value=len(self.lines.figures))

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


def client_address(scope: dict, trusted_proxy_hops: int) -> str:
    """Where a request comes from, for the join limit: the connection's peer, or with
    `trusted_proxy_hops` N (TRUSTED_PROXY_HOPS) the address the N proxies in front put in
    `X-Forwarded-For`, counted from the right as accounts' ProxyFix counts it. Behind an ingress
    the peer is the ingress, the same for the whole crowd; and whatever a client wrote there
    itself stands further left, so it is never taken. With fewer addresses than N: the peer."""
    peer = (scope.get("client") or ("", 0))[0]
    if trusted_proxy_hops <= 0:
        return peer
    forwarded = b",".join(value for name, value in scope.get("headers", ()) if name == b"x-forwarded-for")
    hops = [part.strip() for part in forwarded.decode("latin-1").split(",") if part.strip()]
    return hops[-trusted_proxy_hops] if len(hops) >= trusted_proxy_hops else peer


def route_of(method: str, path: str) -> str:
    """The route label of a request (`_ROUTES`)."""
    if method == "POST" and _JOIN.fullmatch(path):
        return "join"
    if _TICKET.fullmatch(path):
        return "ticket"
    if _STATUS.fullmatch(path):
        return "status"
    if path in ("/healthz", "/readyz"):
        return "probe"
    return "metrics" if path == "/metrics" else "other"


class Refresher(threading.Thread):
    """Refreshes `lines` every `interval` seconds until stopped; a failure is logged and the
    copy kept (it goes stale, and /readyz says so)."""

    def __init__(self, engine: sa.Engine, lines: Lines, interval: float):
        super().__init__(name="line-status-refresh", daemon=True)
        self.engine, self.lines, self.interval = engine, lines, interval
        self.stopping = threading.Event()

    def run(self) -> None:
        failing = False
        while not self.stopping.is_set():
            try:
                with self.engine.connect() as connection:
                    self.lines.refresh(connection)
                if failing:
                    log.info("line copy refreshed again")
                failing = False
            except sa.exc.SQLAlchemyError as error:
                if not failing:
                    log.warning("cannot refresh the line copy", extra={"error": repr(error)})
                failing = True
            self.stopping.wait(self.interval)


def _drop_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise errors.NotFound(f"{raw!r} is not a drop id.") from None


def _line(lines: Lines, drop_id: str) -> SimpleNamespace:
    line = lines.figures.get(_drop_id(drop_id))
    if line is None:
        raise errors.NotFound(f"There is no line for drop {drop_id}.")
    return line


def ticket_status(lines: Lines, drop_id: str, ticket_id: str, now: datetime) -> dict:
    line = _line(lines, drop_id)
    position = lines.positions.get(str(line.drop_id), {}).get(ticket_id.lower())
    # before the opening, and while the line has tickets without a position (a big pre-queue's
    # are written over its first turns, and as many arrivals a turn after it), any ticket may be
    # one of those: its buyer hears so here, not from checkout's database
    unplaced = line.state in (waiting_room.OPEN, waiting_room.PAUSED) and waiting_room.behind(line)
    if position is None and line.state != waiting_room.PRE_QUEUE and not unplaced:
        raise errors.NotFound("No such ticket in this line, or it joined less than a turn ago: "
                              "ask GET /drops/{id}/line/tickets/mine at checkout.")
    return {"ticket_id": ticket_id.lower(), "drop_id": str(line.drop_id), **waiting_room.place_view(position, line, now),
            "as_of": now.isoformat()}


def with_pass(status: dict, admission: tuple[str, datetime], now: datetime, pass_secret: str) -> dict:
    """`status` (an admitted ticket's, from `ticket_status`) as its buyer sees it, from the copy's
    `admission` of it (buyer, pass expiry): with its pass, or `expired` (`line.admission_view`)."""
    ticket = SimpleNamespace(id=status["ticket_id"], drop_id=status["drop_id"], buyer_id=admission[0],
                             pass_expires_at=admission[1])
    view = {**status, **waiting_room.admission_view(ticket, now, pass_secret)}
    if "pass_expires_at" in view:
        view["pass_expires_at"] = view["pass_expires_at"].isoformat()
    return view


def line_status(lines: Lines, drop_id: str, now: datetime) -> dict:
    line = _line(lines, drop_id)
    sold_out = line.state == waiting_room.OPEN and line.remaining_units == 0
    return {"drop_id": str(line.drop_id), "state": "sold_out" if sold_out else line.state,
            "opens_at": line.opens_at.isoformat(), "joined": line.joined, "pre_queue_size": line.pre_queue_size,
            "placed": line.placed, "admitted_through": line.admitted_through, "waiting": max(0, line.joined - line.admitted_through),
            "remaining_units": line.remaining_units, "admissions_per_second": round(line.observed_rate, 2),
            "poll_after_seconds": waiting_room.place_view(None, line, now)["poll_after_seconds"],
            "as_of": now.isoformat()}


class Joiner:
    """Joins, gathered: each waits at most JOIN_WINDOW_SECONDS for others to arrive, then the
    batch is made in one statement and one commit (`line.join_many`) on a database thread.
    Verifying the buyer's token runs on a thread too, since it may have to fetch accounts'
    keys; the event loop only routes."""

    def __init__(self, unit_of_work, verifier: TokenVerifier, join_limit: waiting_room.JoinLimit, pass_secret: str,
                 window_seconds: float = JOIN_WINDOW_SECONDS):
        self.unit_of_work, self.verifier, self.join_limit, self.pass_secret = (
            unit_of_work, verifier, join_limit, pass_secret)
        self.window_seconds = window_seconds
        self.verifying = ThreadPoolExecutor(2, thread_name_prefix="line-verify")
        # one thread: this process's batches commit in the order their arrival numbers were
        # taken, so the admitter's turn never places a later batch before an earlier one
        self.database = ThreadPoolExecutor(1, thread_name_prefix="line-join")
        self._pending: list[tuple[waiting_room.JoinRequest, asyncio.Future]] = []
        self._flush_scheduled = False

    async def join(self, drop_id: str, authorization: str, client: str) -> tuple[int, dict]:
        """(201 or 200, the ticket as `GET .../line/tickets/mine` shows it), or raises a Problem."""
        drop = uuid.UUID(_drop_id(drop_id))
        wait = self.join_limit.take(client)
        if wait is not None:
            raise checkout_errors.JoinThrottled("Too many joins from this address; retry after the time given.",
                                                retry_after=wait)
        principal = await self.principal(authorization)
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._pending.append((waiting_room.JoinRequest(drop, principal.subject, principal.account_created_at), answer))
        if len(self._pending) >= MAX_JOIN_BATCH:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_later(self.window_seconds, self._flush)
        ticket, new = await answer
        view = waiting_room.ticket_view(ticket, ticket, utc_now(), self.pass_secret)
        return (201 if new else 200), TICKET.dump(view)

    async def principal(self, authorization: str):
        """Who `authorization` (`Bearer <token>`) signs in, verified on a thread; raises
        Unauthorized."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.Unauthorized("Send an access token as 'Authorization: Bearer <token>'.")
        return await asyncio.get_running_loop().run_in_executor(self.verifying, self.verifier.verify, token.strip())

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            asyncio.get_running_loop().run_in_executor(self.database, self._make, batch)

    def _make(self, batch: list) -> None:
        """On a database thread: make the batch, and hand each request its answer."""
        answers = self._join_many([request for request, _ in batch])
        for (_, future), answer in zip(batch, answers):
            future.get_loop().call_soon_threadsafe(_settle, future, answer)

    def _join_many(self, requests: list) -> list:
        """Each request's ticket, or the database's refusal for all of them. A batch PostgreSQL
        gave up on for a deadlock is made once more: another edge's batch held some of its
        buyers' new tickets while waiting for others of this one's (a buyer's first joins from
        two devices, in two batches in the other order), and every join of this batch would have
        been refused for it."""
        for tries_left in (1, 0):
            try:
                with self.unit_of_work() as uow:
                    return waiting_room.join_many(requests, uow)
            except Exception as error:  # the database is away: nobody in this batch joined
                if tries_left and db.deadlocked(error):
                    log.info("joins deadlocked with another batch; making them again", extra={"joins": len(requests)})
                    continue
                log.warning("joins failed", extra={"joins": len(requests), "error": repr(error)})
                return [errors.DatabaseUnavailable("Could not join just now; try again shortly.")] * len(requests)


def _settle(future: asyncio.Future, answer) -> None:
    if future.done():  # its client went away
        return
    if isinstance(answer, errors.Problem):
        future.set_exception(answer)
    else:
        future.set_result(answer)


_TICKET = re.compile(r"^/drops/([^/]+)/line/tickets/([0-9A-Fa-f-]{36})$")
_STATUS = re.compile(r"^/drops/([^/]+)/line/status$")
_JOIN = re.compile(r"^/drops/([^/]+)/line/tickets$")


class LineStatusApp:
    """The ASGI application; `lines` is refreshed by a Refresher it starts at lifespan startup
    (when given an engine)."""

    def __init__(self, lines: Lines, origins: frozenset = frozenset(), refresher: Refresher | None = None,
                 joiner: Joiner | None = None, metrics_bind: str = "", trusted_proxy_hops: int = 0):
        self.lines, self.origins, self.refresher, self.joiner = lines, origins, refresher, joiner
        self.trusted_proxy_hops = trusted_proxy_hops
        self.metrics, self.metrics_bind, self._metrics_server = EdgeMetrics(lines), metrics_bind, None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        client = client_address(scope, self.trusted_proxy_hops)
        method, path = scope["method"], scope["path"]
        started = time.perf_counter()
        status, body, headers = await self.answer(method, path, dict(scope["headers"]), client)
        self.metrics.observe(route_of(method, path), status, time.perf_counter() - started)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, method: str, path: str, request_headers: dict, client: str = "") -> tuple[int, bytes, list]:
        """(status, body, headers) for one request (tests call it without a server)."""
        headers = [(name.encode(), value.encode())
                   for name, value in cors_headers(request_headers.get(b"origin", b"").decode("latin-1") or None,
                                                   self.origins)]
        request_id = request_headers.get(b"x-request-id")
        if request_id:
            headers.append((b"x-request-id", request_id[:200]))
        if method == "OPTIONS":
            return 204, b"", headers
        try:
            if method == "POST" and (matched := _JOIN.fullmatch(path)) and self.joiner is not None:
                authorization = request_headers.get(b"authorization", b"").decode("latin-1")
                status, document = await self.joiner.join(matched.group(1), authorization, client)
                cache = False
            elif method in ("GET", "HEAD"):
                if path == "/metrics" and not self.metrics_bind:  # Prometheus' text, not a JSON document
                    return 200, (b"" if method == "HEAD" else self.metrics.exposition()), headers + [
                        (b"content-type", prometheus_client.CONTENT_TYPE_LATEST.encode()), (b"cache-control", b"no-store")]
                document, cache = self._route(path)
                status = 200
                if _TICKET.fullmatch(path):  # its answer depends on the token it carries
                    headers.append((b"vary", b"Authorization"))
                authorization = request_headers.get(b"authorization", b"").decode("latin-1")
                if authorization and document.get("state") == waiting_room.ADMITTED and self.joiner is not None:
                    private = await self._own(document, authorization)
                    if private is not None:
                        document, cache = private, False
            else:
                raise MethodNotAllowed("The line's edge answers GET, and POST to join a line.")
        except errors.Problem as problem:
            document, cache, status = {**problem.to_dict(), "instance": path}, False, problem.status
            headers += [(name.lower().encode(), value.encode()) for name, value in problem.headers.items()]
        body = json.dumps(document, separators=(",", ":")).encode()
        headers += [(b"content-type", b"application/json" if status < 400 else b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", MAX_AGE if cache else b"no-store")]
        return status, (b"" if method == "HEAD" else body), headers

    def _route(self, path: str) -> tuple[dict, bool]:
        now = utc_now()
        if matched := _TICKET.fullmatch(path):
            return self._needs_copy(ticket_status, matched.group(1), matched.group(2), now), True
        if matched := _STATUS.fullmatch(path):
            return self._needs_copy(line_status, matched.group(1), now), True
        if path == "/healthz":
            return {"status": "ok"}, False
        if path == "/readyz":
            if not self.lines.fresh():
                raise errors.ServiceUnavailable("The copy of the lines is stale: the database is not answering.")
            return {"status": "ready"}, False
        raise errors.NotFound("The line's edge serves POST /drops/{id}/line/tickets, "
                              "GET /drops/{id}/line/tickets/{ticket_id} and GET /drops/{id}/line/status.")

    async def _own(self, status: dict, authorization: str) -> dict | None:
        """An admitted ticket's status with its pass, for a poll signed in as its buyer (see the
        module's docstring); None for anyone else, or a token that does not verify (or cannot be
        verified just now: the public answer then, and the buyer's own poll has the pass). Only a
        token that names the ticket's buyer is verified: ticket ids are public, and anyone else's
        polls must not cost a signature check each."""
        admission = self.lines.admissions.get(status["drop_id"], {}).get(status["ticket_id"])
        if admission is None or _claimed_subject(authorization) != admission[0]:
            return None
        try:
            principal = await self.joiner.principal(authorization)
        except errors.Problem:
            return None
        if principal.subject != admission[0]:
            return None
        return with_pass(status, admission, utc_now(), self.joiner.pass_secret)

    def _needs_copy(self, view, *args) -> dict:
        if not self.lines.fresh():  # better no answer than a wrong one
            raise errors.ServiceUnavailable("The line's figures are being refreshed; try again shortly.",
                                            retry_after=2)
        return view(self.lines, *args)

    def _start(self) -> None:
        # the metrics port first: it is what can fail, before any thread is started
        if self.metrics_bind:
            host, port = metrics_address(self.metrics_bind)
            self._metrics_server, _ = prometheus_client.start_http_server(port, host, registry=self.metrics.registry)
        if self.refresher is not None:
            self.refresher.start()
        if self.joiner is not None:  # accounts' keys, fetched before the first join needs them
            threading.Thread(target=self.joiner.verifier.keys.keep_fresh, name="jwks-refresh", daemon=True).start()

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self._start()
                except Exception as error:  # a port taken, say: the worker must not serve without it
                    log.error("line-status cannot start", extra={"error": repr(error)})
                    await send({"type": "lifespan.startup.failed", "message": repr(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.refresher is not None:
                    self.refresher.stopping.set()
                if self._metrics_server is not None:
                    self._metrics_server.shutdown()
                if self.joiner is not None:
                    self.joiner.database.shutdown(wait=True)  # the joins in hand are made and answered
                await send({"type": "lifespan.shutdown.complete"})
                return


def _claimed_subject(authorization: str) -> str | None:
    """Whom a `Bearer` token says it is for, unverified (a cheap look before the real check)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    try:
        return jwt.decode(token.strip(), options={"verify_signature": False}).get("sub")
    except (jwt.PyJWTError, AttributeError):
        return None


class MethodNotAllowed(errors.Problem):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


def create_app() -> LineStatusApp:
    """The app of one uvicorn worker (`uvicorn --factory`): its own copy, its own refresher."""
    from services.checkout.bootstrap import bootstrap
    from shared import auth, logs

    root = bootstrap("line-status")
    settings = root.settings
    logs.configure(root.process, settings.log_level)
    lines = Lines()
    joiner = Joiner(root.unit_of_work, auth.jwks_verifier(settings),
                    waiting_room.JoinLimit(settings.line_joins_per_client_per_minute), settings.line_pass_secret)
    return LineStatusApp(lines, allowed_origins(settings), Refresher(root.engine, lines, settings.line_status_refresh_seconds),
                         joiner, metrics_bind=settings.metrics_bind,
                         trusted_proxy_hops=settings.trusted_proxy_hops)


def run(root, args) -> None:
    """Serve on `args.bind` with `WEB_CONCURRENCY` workers (uvicorn, uvloop, httptools)."""
    import uvicorn

    workers = root.settings.web_concurrency
    if workers > 1 and root.settings.metrics_bind:
        raise SystemExit("METRICS_BIND takes one uvicorn worker (WEB_CONCURRENCY=1): each worker counts its own "
                         "answers, and only one can listen on the metrics port")
    host, _, port = args.bind.rpartition(":")
    uvicorn.run("services.checkout.line_status:create_app", factory=True, host=host or "0.0.0.0", port=int(port),
                workers=workers, loop="uvloop", http="httptools", lifespan="on",  # a failed startup exits
                access_log=False, log_config=None, timeout_graceful_shutdown=10, proxy_headers=False,
                timeout_keep_alive=keepalive_seconds())
