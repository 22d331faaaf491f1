"""The waiting room's public edge, without a server or a database: what a poll of a ticket or of
a line answers from the copy, how the copy is refreshed, what a stale copy does, and joins
gathered into batches."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import jwt
import pytest

from services.checkout import line as waiting_room
from services.checkout.line_status import STALE_SECONDS, Joiner, LineStatusApp, Lines, client_address
from shared.auth import Principal
from shared.errors import Unauthorized
from shared.values import utc_now
from tests.unit.checkout.fakes import FakeUnitOfWork

DROP = uuid.UUID("5f0d7c7e-8a43-4b0b-a1a4-0c8c1d2e3f40")
PAGE = "http://shop.example"
PASS_SECRET = "a pass secret for unit tests, long enough for HS256"


def figures(**overrides) -> SimpleNamespace:
    line = dict(drop_id=DROP, state=waiting_room.OPEN, opens_at=utc_now() - timedelta(minutes=1), joined=0, placed=0,
                pre_queue_size=0, admitted_through=0, remaining_units=10, observed_rate=2.0)
    return SimpleNamespace(**{**line, **overrides})


class FakeConnection:
    """Answers the copy's three queries from `lines`, `tickets` ({ticket id: position}) and
    `buyers` ({ticket id: buyer}; an admitted ticket's pass expires at `expires_at`)."""

    def __init__(self, lines: list[SimpleNamespace], tickets: dict[uuid.UUID, int],
                 buyers: dict[uuid.UUID, str] | None = None, expires_at=None):
        self.lines, self.tickets, self.asked_after, self.asked_admitted = lines, tickets, [], []
        self.buyers, self.expires_at = buyers or {}, expires_at or utc_now() + timedelta(minutes=2)

    def execute(self, statement, params=None):
        if params is None:
            return [SimpleNamespace(_mapping=vars(line), **vars(line)) for line in self.lines]
        if "through" in params:
            self.asked_admitted.append((params["after"], params["through"]))
            return [(t, self.buyers.get(t, f"buyer at {p}"), self.expires_at) for t, p in self.tickets.items()
                    if params["after"] < p <= params["through"]]
        self.asked_after.append(params["after"])
        return sorted(((t, p) for t, p in self.tickets.items() if p > params["after"]), key=lambda item: item[1])


def app_with(tickets: dict[uuid.UUID, int], buyers: dict[uuid.UUID, str] | None = None, expires_at=None,
             **line) -> tuple[LineStatusApp, FakeConnection]:
    lines = Lines()
    connection = FakeConnection([figures(placed=max(tickets.values(), default=0), **line)], tickets, buyers, expires_at)
    lines.refresh(connection)
    joiner = Joiner(FakeUnitOfWork, Tokens(), waiting_room.JoinLimit(100), PASS_SECRET)
    return LineStatusApp(lines, frozenset({PAGE}), joiner=joiner), connection


def get(app: LineStatusApp, path: str, origin: str | None = None, token: str | None = None) -> tuple[int, dict, dict]:
    headers = {b"origin": origin.encode()} if origin else {}
    if token is not None:
        headers[b"authorization"] = f"Bearer {token}".encode()
    status, body, answer_headers = asyncio.run(app.answer("GET", path, headers))
    return status, json.loads(body), {name.decode(): value.decode() for name, value in answer_headers}


def test_a_waiting_buyer_sees_the_people_ahead_and_an_estimate_and_may_cache_it_a_second():
    tickets = {uuid.uuid4(): position for position in range(1, 8)}
    app, _ = app_with(tickets, admitted_through=2, observed_rate=2.0)
    fifth = next(t for t, p in tickets.items() if p == 5)
    status, body, headers = get(app, f"/drops/{DROP}/line/tickets/{fifth}", origin=PAGE)
    assert status == 200
    assert (body["state"], body["position"], body["ahead"], body["eta_seconds"]) == ("waiting", 5, 2, 1)
    # due in a second: polls again in one (waiting_room.poll_after)
    assert body["ticket_id"] == str(fifth) and body["poll_after_seconds"] == 1
    assert headers["cache-control"] == "public, max-age=1" and headers["Access-Control-Allow-Origin"] == PAGE
    # the line has reached the second: a poll not signed in as its buyer never has the pass
    second = next(t for t, p in tickets.items() if p == 2)
    status, body, _ = get(app, f"/drops/{DROP}/line/tickets/{second}")
    assert body["state"] == "admitted" and "pass" not in body


def test_an_admitted_buyers_own_poll_has_its_pass_and_is_not_cached():
    ann, bob = uuid.uuid4(), uuid.uuid4()
    app, _ = app_with({ann: 1, bob: 2}, buyers={ann: "ann", bob: "bob"}, admitted_through=1)
    status, body, headers = get(app, f"/drops/{DROP}/line/tickets/{ann}", token=token_for("ann"))
    assert status == 200 and body["state"] == "admitted" and headers["cache-control"] == "no-store"
    assert waiting_room.verify_pass(PASS_SECRET, body["pass"], "ann", str(DROP)) == ann
    assert body["pass_expires_at"] and body["poll_after_seconds"] == 10 and headers["vary"] == "Authorization"
    # another buyer's token, one naming ann that does not verify, a forged one, or none: the
    # public answer, no pass; only the token that names ann is checked at all
    tokens = app.joiner.verifier
    checked = tokens.verified
    for token in (token_for("bob"), token_for("ann", key="someone else's key, long enough for HS256"), "forged", None):
        status, body, headers = get(app, f"/drops/{DROP}/line/tickets/{ann}", token=token)
        assert (status, body["state"], "pass" in body, headers["cache-control"]) == (
            200, "admitted", False, "public, max-age=1"), token
    assert tokens.verified == checked + 1
    # a ticket still waiting has no pass, signed in or not
    body = get(app, f"/drops/{DROP}/line/tickets/{bob}", token=token_for("bob"))[1]
    assert body["state"] == "waiting" and "pass" not in body


def test_an_admitted_buyer_whose_pass_has_expired_is_told_so():
    ann = uuid.uuid4()
    app, _ = app_with({ann: 1}, buyers={ann: "ann"}, expires_at=utc_now() - timedelta(seconds=1), admitted_through=1)
    body = get(app, f"/drops/{DROP}/line/tickets/{ann}", token=token_for("ann"))[1]
    assert body["state"] == "expired" and body["poll_after_seconds"] is None and "pass" not in body


def test_only_the_configured_origins_get_cors_headers():
    app, _ = app_with({uuid.uuid4(): 1})
    _, _, headers = get(app, f"/drops/{DROP}/line/status", origin="http://elsewhere.example")
    assert "Access-Control-Allow-Origin" not in headers


def test_sold_out_and_closed_lines_say_so_to_everyone_still_waiting():
    ticket = uuid.uuid4()
    app, _ = app_with({ticket: 3}, remaining_units=0)
    assert get(app, f"/drops/{DROP}/line/tickets/{ticket}")[1]["state"] == "sold_out"
    assert get(app, f"/drops/{DROP}/line/status")[1]["state"] == "sold_out"
    app, _ = app_with({ticket: 3}, state=waiting_room.CLOSED)
    body = get(app, f"/drops/{DROP}/line/tickets/{ticket}")[1]
    assert body["state"] == "closed" and body["poll_after_seconds"] is None


def test_a_buyer_admitted_before_the_line_closed_still_gets_the_pass_the_others_hear_closed():
    ann, bob = uuid.uuid4(), uuid.uuid4()
    app, _ = app_with({ann: 1, bob: 2}, buyers={ann: "ann", bob: "bob"}, admitted_through=1, state=waiting_room.CLOSED)
    status, body, headers = get(app, f"/drops/{DROP}/line/tickets/{ann}", token=token_for("ann"))
    assert (status, body["state"], headers["cache-control"]) == (200, "admitted", "no-store")
    assert waiting_room.verify_pass(PASS_SECRET, body["pass"], "ann", str(DROP)) == ann
    assert "pass" not in get(app, f"/drops/{DROP}/line/tickets/{ann}")[1]  # the public answer: admitted, no pass
    body = get(app, f"/drops/{DROP}/line/tickets/{bob}", token=token_for("bob"))[1]
    assert (body["state"], body["poll_after_seconds"], "pass" in body) == ("closed", None, False)
    app, _ = app_with({ann: 1}, buyers={ann: "ann"}, expires_at=utc_now() - timedelta(seconds=1), admitted_through=1,
                      state=waiting_room.CLOSED)
    assert get(app, f"/drops/{DROP}/line/tickets/{ann}", token=token_for("ann"))[1]["state"] == "expired"


def test_before_the_opening_every_ticket_is_in_the_pre_queue_and_polls_slower_the_further_off_it_is():
    app, _ = app_with({}, state=waiting_room.PRE_QUEUE, opens_at=utc_now() + timedelta(minutes=10))
    status, body, _ = get(app, f"/drops/{DROP}/line/tickets/{uuid.uuid4()}")
    assert status == 200 and body["state"] == "pre_queue" and body["position"] is None
    assert body["poll_after_seconds"] == 30
    app, _ = app_with({}, state=waiting_room.PRE_QUEUE, opens_at=utc_now() + timedelta(seconds=3))
    assert get(app, f"/drops/{DROP}/line/tickets/{uuid.uuid4()}")[1]["poll_after_seconds"] == 1


def test_unknown_lines_and_tickets_not_yet_placed_are_clear_404s():
    app, _ = app_with({uuid.uuid4(): 1})
    for path in (f"/drops/{uuid.uuid4()}/line/tickets/{uuid.uuid4()}", f"/drops/{DROP}/line/tickets/{uuid.uuid4()}",
                 "/drops/not-a-drop/line/status", "/elsewhere"):
        status, body, headers = get(app, path)
        assert status == 404 and headers["content-type"] == "application/problem+json", path
        assert body["status"] == 404 and body["detail"] and headers["cache-control"] == "no-store"


def test_while_the_pre_queue_is_placed_a_ticket_without_its_position_yet_is_waiting_not_404():
    first, second = uuid.uuid4(), uuid.uuid4()
    app, _ = app_with({first: 1, second: 2}, pre_queue_size=5, joined=6)  # 2 of the pre-queue's 5 placed
    status, body, _ = get(app, f"/drops/{DROP}/line/tickets/{uuid.uuid4()}")
    assert status == 200 and (body["state"], body["position"], body["ahead"]) == ("waiting", None, None)
    assert body["poll_after_seconds"] == waiting_room.WAITING_POLL_SECONDS
    assert get(app, f"/drops/{DROP}/line/tickets/{second}")[1]["position"] == 2
    status, body, _ = get(app, f"/drops/{DROP}/line/status")
    assert (body["placed"], body["pre_queue_size"], body["joined"]) == (2, 5, 6)
    # the pre-queue placed, arrivals still to place (as many a turn): the same
    app, _ = app_with({first: 1, second: 2}, pre_queue_size=2, joined=5)
    body = get(app, f"/drops/{DROP}/line/tickets/{uuid.uuid4()}")[1]
    assert (body["state"], body["poll_after_seconds"]) == ("waiting", waiting_room.WAITING_POLL_SECONDS)
    # a closed line places no more arrivals: an unknown ticket is 404, not `closed` for a day
    app, _ = app_with({first: 1, second: 2}, pre_queue_size=2, joined=5, state=waiting_room.CLOSED)
    assert get(app, f"/drops/{DROP}/line/tickets/{uuid.uuid4()}")[0] == 404


def test_it_answers_get_and_post_only():
    app, _ = app_with({uuid.uuid4(): 1})
    status, body, headers = asyncio.run(app.answer("POST", f"/drops/{DROP}/line/status", {}))
    assert status == 405 and json.loads(body)["title"] == "Method not allowed"
    assert asyncio.run(app.answer("OPTIONS", f"/drops/{DROP}/line/status", {b"origin": PAGE.encode()}))[0] == 204


def test_a_stale_copy_answers_503_with_retry_after_and_is_not_ready():
    ticket = uuid.uuid4()
    app, _ = app_with({ticket: 1})
    assert get(app, "/readyz")[0] == 200
    app.lines.refreshed = time.monotonic() - STALE_SECONDS - 1
    status, body, headers = get(app, f"/drops/{DROP}/line/tickets/{ticket}")
    assert status == 503 and headers["retry-after"] == "2"
    assert get(app, "/readyz")[0] == 503 and get(app, "/healthz")[0] == 200
    never = LineStatusApp(Lines())
    assert get(never, "/readyz")[0] == 503


def test_the_copy_fetches_only_the_positions_handed_out_since_its_last_refresh():
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    lines = Lines()
    connection = FakeConnection([figures(placed=2)], {first: 1, second: 2})
    lines.refresh(connection)
    connection.tickets[third] = 3
    connection.lines = [figures(placed=3)]
    lines.refresh(connection)
    lines.refresh(connection)  # nothing new: no query for positions
    assert connection.asked_after == [0, 2]
    assert lines.positions[str(DROP)] == {str(first): 1, str(second): 2, str(third): 3}
    # admissions likewise: only those made since the last refresh
    connection.lines = [figures(placed=3, admitted_through=1)]
    lines.refresh(connection)
    connection.lines = [figures(placed=3, admitted_through=3)]
    lines.refresh(connection)
    lines.refresh(connection)
    assert connection.asked_admitted == [(0, 1), (1, 3)]
    assert set(lines.admissions[str(DROP)]) == {str(first), str(second), str(third)}
    connection.lines = []  # the line is gone (closed over a day ago)
    lines.refresh(connection)
    assert lines.positions == {} and lines.figures == {} and lines.admissions == {}


# --- joins ----------------------------------------------------------------------------------------

TOKEN_KEY = "the unit tests' token key, long enough for HS256"


def token_for(buyer: str, key: str = TOKEN_KEY) -> str:
    return jwt.encode({"sub": buyer}, key, algorithm="HS256")


class Tokens:
    """A verifier that knows tokens by name ("token-<buyer>") and JWTs signed with TOKEN_KEY."""

    def __init__(self):
        self.keys = None
        self.verified = 0

    def verify(self, token: str) -> Principal:
        self.verified += 1
        if token.startswith("token-"):
            return Principal(subject=token.removeprefix("token-"), role="buyer", account_created_at=utc_now())
        try:
            subject = jwt.decode(token, TOKEN_KEY, algorithms=["HS256"])["sub"]
        except jwt.PyJWTError:
            raise Unauthorized("That token does not verify.") from None
        return Principal(subject=subject, role="buyer", account_created_at=utc_now())


def joining_app(per_minute: int = 100) -> tuple[LineStatusApp, FakeUnitOfWork]:
    uow = FakeUnitOfWork()
    now = utc_now()
    waiting_room.put_line(DROP, waiting_room.LineSettings(opens_at=now + timedelta(minutes=5)), uow, now)
    uow.commit()
    batches = []
    original = uow.lines.join_many
    uow.lines.join_many = lambda wanted: batches.append(len(wanted)) or original(wanted)
    uow.batches = batches
    # a window long enough that joins sent together arrive within it on a busy machine too; the
    # limit's clock stands still, so a test's joins never straddle two of its minutes
    joiner = Joiner(lambda: uow, Tokens(), waiting_room.JoinLimit(per_minute, clock=lambda: 30.0),
                    "a pass secret for unit tests", window_seconds=0.5)
    return LineStatusApp(Lines(), frozenset({PAGE}), joiner=joiner), uow


def join(app, *tokens: str, client: str = "10.0.0.1") -> list[tuple[int, dict]]:
    async def everyone():
        return await asyncio.gather(*(app.answer("POST", f"/drops/{DROP}/line/tickets",
                                                 {b"authorization": f"Bearer {token}".encode()}, client)
                                      for token in tokens))
    return [(status, json.loads(body)) for status, body, _ in asyncio.run(everyone())]


def test_joins_arriving_together_are_made_in_one_batch_and_a_second_join_returns_the_same_ticket():
    app, uow = joining_app()
    answers = join(app, *(f"token-buyer-{n}" for n in range(20)), "token-buyer-0")
    assert uow.batches == [21]  # one statement for all of them
    assert sorted(status for status, _ in answers) == [200] + [201] * 20
    assert len({body["ticket_id"] for _, body in answers}) == 20
    assert all(body["state"] == "pre_queue" and body["pass"] is None for _, body in answers)
    again = join(app, "token-buyer-7")[0]
    assert again[0] == 200 and again[1]["ticket_id"] == next(b["ticket_id"] for s, b in answers[7:8])


class Deadlocked(Exception):
    """What psycopg raises when PostgreSQL breaks a deadlock."""
    sqlstate = "40P01"


def test_a_batch_postgresql_gave_up_on_for_a_deadlock_is_made_again_and_joins():
    """Two edges' batches held each other's buyers' new tickets (a buyer's first joins from two
    devices): PostgreSQL ended one, and every join of it was answered 503."""
    app, uow = joining_app()
    join_many, failures = uow.lines.join_many, [Deadlocked("deadlock detected")]
    uow.lines.join_many = lambda wanted: join_many(wanted) if not failures else (_ for _ in ()).throw(failures.pop())
    answers = join(app, *(f"token-buyer-{n}" for n in range(5)))
    assert sorted(status for status, _ in answers) == [201] * 5
    assert len(uow.lines.tickets(DROP)) == 5


@pytest.mark.parametrize("failures, tries", [([Deadlocked("deadlock"), Deadlocked("deadlock again")], 2),
                                             ([RuntimeError("connection lost")], 1)])
def test_a_batch_deadlocked_twice_or_failing_otherwise_is_answered_503(failures, tries):
    app, uow = joining_app()
    tried = []
    uow.lines.join_many = lambda wanted: tried.append(1) or (_ for _ in ()).throw(failures.pop(0))
    answers = join(app, "token-ann", "token-bob")
    assert [status for status, _ in answers] == [503, 503]
    assert len(tried) == tries
    assert uow.lines.tickets(DROP) == []


def test_a_join_without_a_good_token_or_to_no_line_is_refused_and_nothing_is_made():
    app, uow = joining_app()
    [(status, body)] = join(app, "forged")
    assert status == 401 and body["type"].endswith("/unauthorized")
    status, body, _ = asyncio.run(app.answer("POST", f"/drops/{DROP}/line/tickets", {}, "10.0.0.1"))
    assert status == 401
    status, body, _ = asyncio.run(app.answer("POST", f"/drops/{uuid.uuid4()}/line/tickets",
                                             {b"authorization": b"Bearer token-ann"}, "10.0.0.1"))
    assert status == 404 and json.loads(body)["type"].endswith("/line-not-found")
    assert uow.lines.tickets(DROP) == []


def test_joins_per_client_are_limited():
    app, _ = joining_app(per_minute=2)
    answers = join(app, "token-a", "token-b", "token-c")
    assert sorted(status for status, _ in answers) == [201, 201, 429]
    assert join(app, "token-d", client="10.0.0.2")[0][0] == 201  # another client is not held back


def test_behind_an_ingress_each_buyer_is_limited_by_their_own_address_not_the_ingress():
    """The whole crowd reaches the edge through the ingress: one peer address. The limit must
    hold back a client that joins too often, and only that client."""
    app, _ = joining_app(per_minute=1)
    app.trusted_proxy_hops = 1
    ingress = "10.1.2.3"

    def join_through_ingress(token: str, forwarded_for: str) -> int:
        return served(app, "POST", f"/drops/{DROP}/line/tickets",
                      {b"authorization": f"Bearer {token}".encode(), b"x-forwarded-for": forwarded_for.encode()},
                      peer=ingress)[0]

    assert join_through_ingress("token-a", "203.0.113.7") == 201
    assert join_through_ingress("token-b", "198.51.100.4") == 201  # another buyer, same ingress
    assert join_through_ingress("token-c", "203.0.113.7") == 429  # the first address again
    # what a client writes in X-Forwarded-For itself stands left of what the ingress appends
    assert join_through_ingress("token-d", "192.0.2.99, 203.0.113.7") == 429
    # without trusted proxies the header is the client's word, and the peer is what counts
    app.trusted_proxy_hops = 0
    assert join_through_ingress("token-e", "192.0.2.1") == 201
    assert join_through_ingress("token-f", "192.0.2.2") == 429


def test_the_client_address_is_the_one_the_trusted_proxies_saw():
    scope = {"client": ("10.1.2.3", 5555), "headers": [(b"x-forwarded-for", b"192.0.2.99, 203.0.113.7"),
                                                      (b"x-forwarded-for", b"10.9.9.9")]}
    assert client_address(scope, 0) == "10.1.2.3"
    assert client_address(scope, 1) == "10.9.9.9"
    assert client_address(scope, 2) == "203.0.113.7"
    assert client_address(scope, 4) == "10.1.2.3"  # fewer addresses than proxies: the peer
    assert client_address({"client": None, "headers": []}, 1) == ""


def served(app: LineStatusApp, method: str, path: str, headers: dict | None = None,
           peer: str = "10.0.0.1") -> tuple[int, bytes]:
    """One request through the ASGI interface, as uvicorn sends it (where the figures are counted)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list((headers or {}).items()),
             "client": (peer, 1234)}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], sent[1]["body"]


def test_metrics_count_the_answers_by_route_and_status_and_tell_the_age_of_the_copy():
    ticket = uuid.uuid4()
    app, _ = app_with({ticket: 1})
    for _ in range(3):
        assert served(app, "GET", f"/drops/{DROP}/line/tickets/{ticket}")[0] == 200
    assert served(app, "GET", f"/drops/{DROP}/line/tickets/{uuid.uuid4()}")[0] == 404
    assert served(app, "POST", f"/drops/{DROP}/line/tickets")[0] == 401  # no token
    served(app, "GET", "/readyz")
    app.lines.refreshed = time.monotonic() - 42
    status, body = served(app, "GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert 'floodgate_line_edge_answers_total{route="ticket",status="200"} 3.0' in text
    assert 'floodgate_line_edge_answers_total{route="ticket",status="404"} 1.0' in text
    assert 'floodgate_line_edge_answers_total{route="join",status="401"} 1.0' in text
    assert 'floodgate_line_edge_answers_total{route="probe",status="200"} 1.0' in text
    assert 'floodgate_line_edge_answer_seconds_count{route="ticket"} 4.0' in text
    assert "floodgate_line_edge_lines 1.0" in text
    assert 42 <= copy_age(text) < 60


def copy_age(exposition: str) -> float:
    """`floodgate_line_edge_copy_age_seconds` as /metrics shows it."""
    line = next(line for line in exposition.splitlines() if line.startswith("floodgate_line_edge_copy_age_seconds "))
    return float(line.split()[1])


def test_a_copy_never_refreshed_is_reported_as_old_as_the_copy():
    app = LineStatusApp(Lines())
    app.lines.made -= 30
    assert 30 <= copy_age(served(app, "GET", "/metrics")[1].decode()) < 60


def test_with_a_metrics_port_the_public_port_does_not_show_the_metrics():
    app = LineStatusApp(Lines(), metrics_bind="127.0.0.1:9100")
    assert served(app, "GET", "/metrics")[0] == 404


@pytest.mark.parametrize("bind", ["9100", "127.0.0.1:", "127.0.0.1:metrics", "127.0.0.1:70000"])
def test_a_metrics_port_that_cannot_be_opened_fails_the_startup_and_starts_nothing(bind):
    refresher = SimpleNamespace(started=False)
    refresher.start = lambda: setattr(refresher, "started", True)
    app = LineStatusApp(Lines(), refresher=refresher, metrics_bind=bind)
    sent = asyncio.run(lifespan_startup(app))
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "METRICS_BIND must be HOST:PORT" in sent[0]["message"]
    assert not refresher.started


async def lifespan_startup(app: LineStatusApp) -> list[dict]:
    sent, messages = [], [{"type": "lifespan.startup"}]

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app({"type": "lifespan"}, receive, send), timeout=5)
    return sent
