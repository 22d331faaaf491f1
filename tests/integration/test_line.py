"""The waiting room against the real stack: a verifiable pre-queue, admission bounded by the
stock, passes that `POST /orders` requires and uses up, slots that come back, and sold out."""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import signal
import socket
import uuid
from datetime import datetime, timedelta, timezone

import threading

import jwt
from sqlalchemy import orm

from devtools.client import poll
from devtools.line_crowd import CROWD
from services.checkout.line import LineSettings, pre_queue_order, put_line
from services.checkout.repository import CheckoutUnitOfWork
from shared.db import make_engine
from shared.values import utc_now
from tests.integration.database import execute, rows, scalar

OPENS_IN = 4.0  # seconds: long enough for every buyer to join the pre-queue first


def _ready_buyers(floodgate, count: int) -> list[str]:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return [token for _, token in pool.map(lambda _: floodgate.register(), range(count))]


def _active_passes(stack, drop_id: str) -> int:
    return scalar(stack, "checkout", "SELECT count(*) FROM line_tickets WHERE drop_id = :d AND used_at IS NULL "
                                     "AND pass_expires_at > now()", d=drop_id)


def test_the_pre_queue_is_the_order_the_revealed_seed_gives_then_first_come_first_served(floodgate, admin_token, stack):
    buyers = _ready_buyers(floodgate, 10)
    drop = floodgate.create_drop(admin_token, quantity=3, opens_in=OPENS_IN)
    line = floodgate.put_line(admin_token, drop, admission_rate=50, pass_ttl_seconds=120)
    assert (line["state"], line["seed"]) == ("pre_queue", None) and len(line["commitment"]) == 64

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        joined = list(pool.map(lambda token: floodgate.join_line(token, drop["id"]), buyers[:8]))
    assert [answer.status_code for answer in joined] == [201] * 8
    again = floodgate.join_line(buyers[0], drop["id"])  # another tab: the same place
    assert again.status_code == 200 and again.json()["ticket_id"] == joined[0].json()["ticket_id"]
    assert floodgate.my_ticket(buyers[3], drop["id"])["state"] == "pre_queue"

    opened = poll(lambda: (lambda body: body if body["seed"] else None)(floodgate.get_line(drop["id"]).json()),
                  timeout=OPENS_IN + 15, what="the line to open and reveal its seed")
    seed = bytes.fromhex(opened["seed"])
    assert hashlib.sha256(seed).hexdigest() == line["commitment"]
    # the positions are written just after the opening commits: until then the order is a 503
    published = poll(lambda: (lambda a: a.status_code == 200 and a.json())(
        floodgate.http.get(f"{stack.url('checkout')}/drops/{drop['id']}/line/order")), what="the published order")
    ticket_ids = [answer.json()["ticket_id"] for answer in joined]
    assert sorted(published["tickets"]) == sorted(ticket_ids)
    assert published["tickets"] == pre_queue_order(seed, ticket_ids)  # anyone can recompute it
    positions = {floodgate.my_ticket(token, drop["id"])["ticket_id"]: floodgate.my_ticket(token, drop["id"])["position"]
                 for token in buyers[:8]}
    assert [positions[ticket_id] for ticket_id in published["tickets"]] == list(range(1, 9))

    # joined one after the other once the line is open: each waits for the admitter's next turn,
    # which gives them the places after the pre-queue's, in the order they arrived
    for token in buyers[8:]:
        floodgate.join_line(token, drop["id"])
    placed = poll(lambda: (lambda p: p if None not in p else None)(
        [floodgate.my_ticket(token, drop["id"])["position"] for token in buyers[8:]]), timeout=10,
        what="the late arrivals' places, at the admitter's next turn")
    assert placed == [9, 10]

    # 3 units x factor 1: the first three positions are admitted, and no more
    first_three = {ticket_id for ticket_id, position in positions.items() if position <= 3}
    poll(lambda: _active_passes(stack, drop["id"]) == 3, what="three admissions")
    tickets = {token: floodgate.my_ticket(token, drop["id"]) for token in buyers}
    admitted = {t["ticket_id"] for t in tickets.values() if t["state"] == "admitted"}
    assert admitted == first_three
    assert all(t["pass"] for t in tickets.values() if t["state"] == "admitted")
    waiting = sorted((t for t in tickets.values() if t["state"] == "waiting"), key=lambda t: t["position"])
    assert [t["ahead"] for t in waiting] == list(range(7))
    assert all(t["poll_after_seconds"] and not t["pass"] for t in waiting)
    assert _active_passes(stack, drop["id"]) == 3
    # the crowd's poll, the public status edge, says the same from its copy (within a refresh: a
    # copy taken before the admissions still shows them waiting), and never the pass
    for ticket in tickets.values():
        def edge_agrees(t=ticket):
            answer = floodgate.place_in_line(drop["id"], t["ticket_id"])
            place = answer.json() if answer.status_code == 200 else {}
            seen = (place.get("state"), place.get("position"), place.get("ahead"))
            return place if seen == (t["state"], t["position"], t["ahead"]) else None

        place = poll(edge_agrees, what="the edge's copy to show the ticket as checkout does")
        assert "pass" not in place
    unknown = floodgate.place_in_line(drop["id"], str(uuid.uuid4()))
    assert unknown.status_code == 404 and unknown.headers["Content-Type"] == "application/problem+json"


def test_a_big_pre_queue_gets_its_positions_over_the_turns_after_a_short_opening(floodgate, admin_token, stack):
    """A pre-queue bigger than LINE_POSITIONS_PER_TURN (1,000 in the tests) is placed over the
    admitter's turns after the opening, which commits before any position is written: 500,000
    positions in the opening's transaction held joins back for 17-24 s. With the admitter frozen
    while it places them: joins go on, polls say `waiting` without a position, and the published
    order answers what is written, then 503. Then it is the seed's order, and later arrivals
    come after it."""
    crowd, buyers = 20_000, _ready_buyers(floodgate, 3)
    drop = floodgate.create_drop(admin_token, quantity=3, opens_in=OPENS_IN + 2)
    floodgate.put_line(admin_token, drop, admission_rate=50, pass_ttl_seconds=120)
    execute(stack, "checkout", CROWD, d=drop["id"], n=crowd)
    early = [floodgate.join_line(token, drop["id"]).json()["ticket_id"] for token in buyers[:2]]
    poll(lambda: scalar(stack, "checkout", "SELECT placed FROM lines WHERE drop_id = :d", d=drop["id"]) >= 1000,
         timeout=OPENS_IN + 20, what="the line to open and write its first positions")
    admitter = stack.processes["checkout-admitter"]
    order_url = f"{stack.url('checkout')}/drops/{drop['id']}/line/order"
    os.killpg(admitter.pid, signal.SIGSTOP)
    try:
        [(placed, size)] = rows(stack, "checkout", "SELECT placed, pre_queue_size FROM lines WHERE drop_id = :d",
                                d=drop["id"])
        assert size == crowd + 2 and placed < size, (placed, size)
        # a verifier paging through the published order gets what is written, then a 503 (never
        # an end of the list that would pass for the whole order)
        served, offset = [], 0
        while (page := floodgate.http.get(order_url, params={"limit": 1000, "offset": offset})).status_code == 200:
            served += page.json()["tickets"]
            offset = page.json()["next_offset"]
            assert offset is not None, "the order ended before the pre-queue did"
        assert page.status_code == 503 and page.headers["Retry-After"], page.text
        assert page.json()["type"].endswith("/line-being-placed") and len(served) == placed
        late = floodgate.join_line(buyers[2], drop["id"])
        assert late.status_code == 201 and late.json()["position"] is None, late.text
        late_id = late.json()["ticket_id"]
        for ticket_id in (late_id, early[0]):  # the edge's copy has seen the opening within a refresh
            place = poll(lambda t=ticket_id: (lambda a: a.json() if a.status_code == 200 and a.json()["state"]
                                              in ("waiting", "admitted") else None)(floodgate.place_in_line(drop["id"], t)),
                         timeout=5, what="the edge to show the opened line")
            if ticket_id == late_id:
                assert (place["position"], place["poll_after_seconds"]) == (None, 3), place
        mine = floodgate.my_ticket(buyers[2], drop["id"])
        assert (mine["state"], mine["position"], mine["poll_after_seconds"]) == ("waiting", None, 3), mine
    finally:
        os.killpg(admitter.pid, signal.SIGCONT)
    poll(lambda: scalar(stack, "checkout", "SELECT placed FROM lines WHERE drop_id = :d", d=drop["id"]) == crowd + 3,
         timeout=60, what="every position written")
    placed = rows(stack, "checkout", "SELECT id::text, position FROM line_tickets WHERE drop_id = :d ORDER BY position",
                  d=drop["id"])
    assert [position for _, position in placed] == list(range(1, crowd + 4))
    seed = bytes.fromhex(floodgate.get_line(drop["id"]).json()["seed"])
    pre_queue = [ticket_id for ticket_id, _ in placed[:-1]]
    assert set(early) <= set(pre_queue) and pre_queue == pre_queue_order(seed, pre_queue)
    # the pre-queue was read and keyed in the seconds before the opening, not read again at it
    [ordered] = [entry for entry in stack.log_entries("checkout-admitter")
                 if entry["message"] == "pre-queue ordered" and entry["drop_id"] == drop["id"]]
    assert ordered["read_ahead"] >= crowd and not ordered["whole_read"], ordered
    assert placed[-1][0] == late_id  # after the whole pre-queue
    published = []
    for offset in range(0, crowd + 2, 10_000):
        page = floodgate.http.get(order_url, params={"limit": 10_000, "offset": offset})
        assert page.status_code == 200, page.text
        published += page.json()["tickets"]
    assert published == pre_queue and served == pre_queue[:len(served)]
    poll(lambda: _active_passes(stack, drop["id"]) == 3, what="three admissions")
    assert scalar(stack, "checkout", "SELECT max(position) FROM line_tickets WHERE drop_id = :d "
                                     "AND admitted_at IS NOT NULL", d=drop["id"]) == 3
    closed = floodgate.http.patch(f"{stack.url('checkout')}/drops/{drop['id']}/line", json={"state": "closed"},
                                  headers={"Authorization": f"Bearer {admin_token}"})
    assert closed.status_code == 200, closed.text  # the admitter turns its 20,000 tickets no more


def test_an_order_needs_its_own_pass_and_uses_it_up(floodgate, admin_token, stack):
    first, second, outsider = _ready_buyers(floodgate, 3)
    drop = floodgate.create_drop(admin_token, quantity=5, opens_in=2, per_buyer_limit=2)
    floodgate.put_line(admin_token, drop, admission_rate=50)
    for token in (first, second):
        assert floodgate.join_line(token, drop["id"]).status_code == 201
    passes = {token: poll(lambda token=token: floodgate.my_ticket(token, drop["id"])["pass"], timeout=20,
                          what="admission") for token in (first, second)}

    def refused(answer, status, slug):
        assert answer.status_code == status, answer.text
        assert answer.json()["type"].endswith(f"/{slug}")

    refused(floodgate.place_order(first, drop["id"]), 403, "line-pass-required")
    refused(floodgate.place_order(outsider, drop["id"], line_pass=passes[first]), 403, "line-pass-invalid")
    forged = jwt.encode(dict(jwt.decode(passes[first], options={"verify_signature": False}), sub="someone"), "a guess at the secret, long enough for HS256",
                        algorithm="HS256")
    refused(floodgate.place_order(first, drop["id"], line_pass=forged), 403, "line-pass-invalid")
    other_drop = floodgate.create_drop(admin_token, quantity=5)
    refused(floodgate.place_order(first, other_drop["id"], line_pass=passes[first]), 403, "line-pass-invalid")
    assert floodgate.get_drop(drop["id"])["remaining"] == 5  # nothing held by any refusal

    # refused at inventory (over the per-buyer limit): the pass is left for the buyer's next try
    refused(floodgate.place_order(first, drop["id"], quantity=3, line_pass=passes[first]), 409, "limit-exceeded")
    assert floodgate.my_ticket(first, drop["id"])["state"] == "admitted"
    key = str(uuid.uuid4())
    refused(floodgate.place_order(first, drop["id"], key=key), 403, "line-pass-required")
    placed = floodgate.place_order(first, drop["id"], key=key, line_pass=passes[first])  # same key: not remembered
    assert placed.status_code == 201, placed.text
    refused(floodgate.place_order(first, drop["id"], line_pass=passes[first]), 409, "line-pass-used")
    assert floodgate.my_ticket(first, drop["id"])["state"] == "ordered"
    assert floodgate.get_drop(drop["id"])["remaining"] == 4
    assert floodgate.place_order(second, drop["id"], line_pass=passes[second]).status_code == 201
    assert floodgate.get_drop(drop["id"])["remaining"] == 3


def test_a_line_that_opens_before_its_drop_admits_its_first_buyer_once_the_sale_opens(floodgate, admin_token, stack):
    """Admitted as the line opened, the first buyer's pass ran out before the drop's sale opened."""
    buyers = _ready_buyers(floodgate, 2)
    drop = floodgate.create_drop(admin_token, quantity=2, opens_in=OPENS_IN + 6)
    line_opens = datetime.fromisoformat(drop["opens_at"]) - timedelta(seconds=6)
    floodgate.put_line(admin_token, drop, opens_at=line_opens.isoformat(), admission_rate=50, pass_ttl_seconds=10)
    for token in buyers:
        assert floodgate.join_line(token, drop["id"]).status_code == 201
    poll(lambda: floodgate.get_line(drop["id"]).json()["state"] == "open", timeout=20, what="the line open")

    _first_admitted_orders(floodgate, stack, drop, buyers, not_before=drop["opens_at"])


def _first_admitted_orders(floodgate, stack, drop: dict, buyers: list[str], not_before: str) -> None:
    """The first of `buyers` the line admits, at `not_before` or later, orders with their pass."""
    first = poll(lambda: next((t for t in buyers if floodgate.my_ticket(t, drop["id"])["pass"]), None), timeout=30,
                 what="the first admission")
    first_admitted = scalar(stack, "checkout", "SELECT min(admitted_at) FROM line_tickets WHERE drop_id = :d",
                            d=drop["id"])
    assert first_admitted >= datetime.fromisoformat(not_before)
    placed = floodgate.place_order(first, drop["id"], line_pass=floodgate.my_ticket(first, drop["id"])["pass"])
    assert placed.status_code == 201, placed.text


def _invited_buyer(floodgate, admin_token, tier: str) -> str:
    """A buyer who registered with an invite to `tier`: their token carries it."""
    email = f"invited-{uuid.uuid4().hex[:8]}@example.com"
    auth = {"Authorization": f"Bearer {admin_token}"}
    code = floodgate.http.post(floodgate.stack.url("accounts") + "/invites", headers=auth,
                               json={"email": email, "tier": tier}).json()["code"]
    registered = floodgate.http.post(floodgate.stack.url("accounts") + "/accounts",
                                     json={"email": email, "password": "correct horse battery", "invite_code": code})
    assert registered.status_code == 201, registered.text
    return floodgate.login(email, "correct horse battery")


def test_a_drop_with_an_invite_only_phase_and_a_line_serves_the_invited_first_then_the_line(floodgate, admin_token,
                                                                                               stack):
    """The invited tier orders without a pass during the phase; the line draws its order but
    admits nobody until the phase ends, then lets its buyers in. Before, the line admitted by
    position from the opening: its passes went to buyers inventory refused as not invited, which
    lost them their turn, and the invited could not order without a pass."""
    invited, invited_late = (_invited_buyer(floodgate, admin_token, "friends") for _ in range(2))
    crowd = _ready_buyers(floodgate, 2)
    drop = floodgate.create_drop(admin_token, quantity=5, opens_in=OPENS_IN,
                                 invite_only_until=(utc_now() + timedelta(minutes=10)).isoformat(),
                                 invite_tier="friends")
    floodgate.put_line(admin_token, drop, admission_rate=50)
    for token in crowd:
        assert floodgate.join_line(token, drop["id"]).status_code == 201
    poll(lambda: floodgate.get_line(drop["id"]).json()["state"] == "open", timeout=20, what="the line open")
    poll(lambda: floodgate.place_order(invited, drop["id"]).status_code == 201, timeout=20,
         what="the invited buyer's order without a pass, once the drop opens")
    passless = floodgate.place_order(crowd[0], drop["id"])
    assert (passless.status_code, passless.json()["type"].rsplit("/", 1)[-1]) == (403, "line-pass-required")
    assert floodgate.get_drop(drop["id"])["remaining"] == 4
    # the admitter's turns come every half second: a few of them, and nobody is let in
    poll(lambda: scalar(stack, "checkout", "SELECT count(*) FROM line_tickets WHERE drop_id = :d "
                                           "AND position IS NOT NULL", d=drop["id"]) == 2, what="the draw")
    assert all(floodgate.my_ticket(token, drop["id"])["pass"] is None for token in crowd)

    ends_at = (utc_now() + timedelta(seconds=1)).isoformat()  # an admin ends the phase
    ended = floodgate.http.patch(floodgate.stack.url("inventory") + f"/drops/{drop['id']}",
                                 headers={"Authorization": f"Bearer {admin_token}"}, json={"invite_only_until": ends_at})
    assert ended.status_code == 200, ended.text
    _first_admitted_orders(floodgate, stack, drop, crowd, not_before=ends_at)
    late = floodgate.place_order(invited_late, drop["id"])  # the phase is over: the line is the way
    assert (late.status_code, late.json()["type"].rsplit("/", 1)[-1]) == (403, "line-pass-required")
    assert floodgate.get_drop(drop["id"])["remaining"] == 3


def test_an_unused_pass_expires_and_its_slot_goes_to_the_next_buyer(floodgate, admin_token, stack):
    buyers = _ready_buyers(floodgate, 2)
    drop = floodgate.create_drop(admin_token, quantity=1, opens_in=2)
    floodgate.put_line(admin_token, drop, admission_rate=50, pass_ttl_seconds=10)
    for token in buyers:
        assert floodgate.join_line(token, drop["id"]).status_code == 201
    # the pre-queue's order is the seed's: whoever it put first is admitted, and never orders
    idle = poll(lambda: next((t for t in buyers if floodgate.my_ticket(t, drop["id"])["pass"]), None), timeout=20,
                what="the first admission")
    patient = next(token for token in buyers if token != idle)
    idle_pass = floodgate.my_ticket(idle, drop["id"])["pass"]
    assert floodgate.my_ticket(patient, drop["id"])["state"] == "waiting"

    patient_pass = poll(lambda: floodgate.my_ticket(patient, drop["id"])["pass"], timeout=30,
                        what="the slot to pass on when the first pass expires")
    assert floodgate.my_ticket(idle, drop["id"])["state"] == "expired"
    refused = floodgate.place_order(idle, drop["id"], line_pass=idle_pass)
    assert refused.status_code == 403 and refused.json()["type"].endswith("/line-pass-expired")
    assert floodgate.place_order(patient, drop["id"], line_pass=patient_pass).status_code == 201


def test_everyone_still_waiting_hears_sold_out_within_seconds(floodgate, admin_token, stack):
    buyers = _ready_buyers(floodgate, 4)
    drop = floodgate.create_drop(admin_token, quantity=1, opens_in=2)
    floodgate.put_line(admin_token, drop, admission_rate=50)
    for token in buyers:
        assert floodgate.join_line(token, drop["id"]).status_code == 201
    lucky = poll(lambda: next((t for t in buyers if floodgate.my_ticket(t, drop["id"])["pass"]), None), timeout=20,
                 what="admission")
    waiting = [token for token in buyers if token != lucky]
    lucky_pass = floodgate.my_ticket(lucky, drop["id"])["pass"]
    assert floodgate.place_order(lucky, drop["id"], line_pass=lucky_pass).status_code == 201
    ticket_ids = [floodgate.my_ticket(token, drop["id"])["ticket_id"] for token in waiting]
    for token, ticket_id in zip(waiting, ticket_ids):
        # both where the crowd polls (the status edge) and in each buyer's own poll
        poll(lambda ticket_id=ticket_id: floodgate.place_in_line(drop["id"], ticket_id).json().get("state") == "sold_out",
             timeout=5, what="sold out at the status edge, within 5 s")
        poll(lambda token=token: floodgate.my_ticket(token, drop["id"])["state"] == "sold_out", timeout=5,
             what="sold out, within 5 s")
    assert floodgate.get_line(drop["id"]).json()["state"] == "sold_out"


def test_a_buyer_admitted_just_before_an_admin_closes_the_line_gets_the_pass_at_the_edge_and_orders(
        floodgate, admin_token, stack):
    buyers = _ready_buyers(floodgate, 2)
    drop = floodgate.create_drop(admin_token, quantity=1, opens_in=2)
    floodgate.put_line(admin_token, drop, admission_rate=50)
    tickets = {token: floodgate.join_line(token, drop["id"]).json()["ticket_id"] for token in buyers}
    lucky = poll(lambda: next((t for t in buyers if floodgate.my_ticket(t, drop["id"])["pass"]), None), timeout=20,
                 what="the one unit's admission")
    [waiting] = [token for token in buyers if token != lucky]
    closed = floodgate.http.patch(f"{stack.url('checkout')}/drops/{drop['id']}/line", json={"state": "closed"},
                                  headers={"Authorization": f"Bearer {admin_token}"})
    assert closed.status_code == 200, closed.text
    poll(lambda: floodgate.place_in_line(drop["id"], tickets[waiting]).json().get("state") == "closed", timeout=5,
         what="the edge's copy to see the line closed")

    def edge_answer(token):
        return floodgate.http.get(f"{stack.url('line-status')}/drops/{drop['id']}/line/tickets/{tickets[token]}",
                                  headers={"Authorization": f"Bearer {token}"}).json()

    told = poll(lambda: (lambda place: place if place.get("pass") else None)(edge_answer(lucky)), timeout=5,
                what="the edge to give the admitted buyer the pass on the closed line")
    assert told["state"] == "admitted" and edge_answer(waiting)["state"] == "closed"
    assert floodgate.place_order(lucky, drop["id"], line_pass=told["pass"]).status_code == 201


def test_a_line_may_refuse_accounts_made_after_it(floodgate, admin_token):
    veteran, = _ready_buyers(floodgate, 1)
    drop = floodgate.create_drop(admin_token, quantity=1, opens_in=60)
    floodgate.put_line(admin_token, drop, refuse_new_accounts=True)
    _, newcomer = floodgate.register()
    assert floodgate.join_line(veteran, drop["id"]).status_code == 201
    refused = floodgate.join_line(newcomer, drop["id"])
    assert refused.status_code == 403 and refused.json()["type"].endswith("/account-too-new")


def test_two_admitter_processes_admit_at_the_lines_rate_between_them(floodgate, admin_token, stack):
    rate, buyers = 4, _ready_buyers(floodgate, 24)
    second = stack.start("checkout-admitter", as_name="checkout-admitter-2")  # beside the stack's own
    try:
        # it turns the lines once it has beaten (its row, named by host and pid)
        poll(lambda: scalar(stack, "checkout", "SELECT count(*) FROM worker_heartbeats WHERE kind = 'admitter' "
                                               "AND instance = :me", me=f"{socket.gethostname()}:{second.pid}") == 1,
             timeout=30, what="the second admitter's first heartbeat")
        drop = floodgate.create_drop(admin_token, quantity=100, opens_in=OPENS_IN)
        floodgate.put_line(admin_token, drop, admission_rate=rate, pass_ttl_seconds=120)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            joined = set(pool.map(lambda t: floodgate.join_line(t, drop["id"]).status_code, buyers))
        assert joined == {201}
        poll(lambda: scalar(stack, "checkout", "SELECT count(*) FROM line_tickets WHERE drop_id = :d "
                                               "AND admitted_at IS NOT NULL", d=drop["id"]) >= 14,
             timeout=OPENS_IN + 30, what="three seconds' admissions")
        assert second.poll() is None, "the second admitter died: see its log"
    finally:
        stack.stop("checkout-admitter-2")
    # every admission so far, in seconds after the opening: by any instant, no more than the
    # line's first turn (half a second's worth) and `rate` a second since; two replicas each
    # keeping their own pace admitted twice that
    times = [row[0] for row in rows(
        stack, "checkout", "SELECT extract(epoch FROM t.admitted_at - l.opened_at) FROM line_tickets t "
                           "JOIN lines l USING (drop_id) WHERE t.drop_id = :d AND t.admitted_at IS NOT NULL "
                           "ORDER BY t.admitted_at", d=drop["id"])]
    assert len(times) >= 14
    over = [(n, float(at)) for n, at in enumerate(times, start=1) if n > rate / 2 + rate * float(at) + 1]
    assert not over, f"admitted faster than {rate}/s: (count, seconds after the opening) {over}"
    assert floodgate.get_line(drop["id"]).json()["pace_per_second"] == rate


def test_the_drop_pages_read_of_its_line_is_at_most_a_second_old(floodgate, admin_token, stack):
    drop = floodgate.create_drop(admin_token, quantity=3, opens_in=3600)
    floodgate.put_line(admin_token, drop, admission_rate=50, pass_ttl_seconds=120)
    url = f"{stack.url('checkout')}/drops/{drop['id']}/line"
    shown = floodgate.http.get(url)
    assert shown.status_code == 200 and shown.json()["state"] == "pre_queue"
    assert shown.headers["Cache-Control"] == "public, max-age=1"

    slower = floodgate.http.patch(url, json={"admission_rate": 7.5}, headers={"Authorization": f"Bearer {admin_token}"})
    assert slower.status_code == 200, slower.text
    assert floodgate.get_line(drop["id"]).json()["admission_rate"] == 7.5  # with the service key
    poll(lambda: floodgate.http.get(url).json()["admission_rate"] == 7.5, timeout=5, what="every worker's copy to follow")
    missing = floodgate.http.get(f"{stack.url('checkout')}/drops/{uuid.uuid4()}/line")
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("application/problem+json")


def test_a_line_closes_with_its_drops_window_and_opens_again_when_the_drop_is_extended(floodgate, admin_token, stack):
    early, waiting, late = _ready_buyers(floodgate, 3)
    drop = floodgate.create_drop(admin_token, quantity=1, opens_in=-1, lasts=8)
    floodgate.put_line(admin_token, drop, admission_rate=50)
    for token in (early, waiting):
        assert floodgate.join_line(token, drop["id"]).status_code == 201
    poll(lambda: any(floodgate.my_ticket(t, drop["id"])["pass"] for t in (early, waiting)), timeout=20,
         what="the line to open and admit one buyer for the one unit")
    still = next(t for t in (early, waiting) if floodgate.my_ticket(t, drop["id"])["state"] == "waiting")
    ticket_id = floodgate.my_ticket(still, drop["id"])["ticket_id"]

    poll(lambda: floodgate.get_line(drop["id"]).json()["state"] == "closed", timeout=20,
         what="the admitter to close the line once the drop's window closed")
    poll(lambda: floodgate.place_in_line(drop["id"], ticket_id).json().get("state") == "closed", timeout=5,
         what="the status edge to tell a waiting buyer the line closed")
    assert floodgate.my_ticket(still, drop["id"])["state"] == "closed"
    refused = floodgate.join_line(late, drop["id"])
    assert refused.status_code == 409 and refused.json()["type"].endswith("/line-closed")

    admin = {"Authorization": f"Bearer {admin_token}"}
    line_url = f"{stack.url('checkout')}/drops/{drop['id']}/line"
    too_soon = floodgate.http.patch(line_url, json={"state": "open"}, headers=admin)  # the drop is still closed
    assert too_soon.status_code == 409 and too_soon.json()["type"].endswith("/drop-closed"), too_soon.text
    assert "extend" in too_soon.json()["detail"] and floodgate.get_line(drop["id"]).json()["state"] == "closed"
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    extended = floodgate.http.patch(stack.url("inventory") + f"/drops/{drop['id']}", json={"closes_at": later},
                                    headers=admin)
    assert extended.status_code == 200, extended.text
    reopened = floodgate.http.patch(line_url, json={"state": "open"}, headers=admin)
    assert reopened.status_code == 200 and reopened.json()["state"] == "open", reopened.text
    assert floodgate.join_line(late, drop["id"]).status_code == 201
    poll(lambda: floodgate.my_ticket(still, drop["id"])["state"] in ("waiting", "admitted"), timeout=5,
         what="the waiting buyer back in the line")
    assert floodgate.get_line(drop["id"]).json()["state"] == "open"


def test_two_admins_putting_a_line_on_a_new_drop_at_once_make_one_line_and_neither_fails(stack):
    """The first admin's line is sent, not yet committed, when the second's request reads the
    drop's line: a read that finds no row locks nothing, so both used to insert, and the second
    commit failed on the drop's key (a 500)."""
    engine = make_engine(stack.infra.database_url("checkout"), pool_size=2)
    drop_id, opens_at, answers = uuid.uuid4(), utc_now() + timedelta(hours=1), []

    def unit_of_work():
        return CheckoutUnitOfWork(orm.sessionmaker(engine), "checkout")

    def second_admin():
        try:
            with unit_of_work() as uow:
                answers.append(put_line(drop_id, LineSettings(opens_at, admission_rate=7.0), uow, utc_now()).commitment)
                uow.commit()
        except Exception as error:
            answers.append(error)

    second = threading.Thread(target=second_admin)
    try:
        with unit_of_work() as uow:
            first = put_line(drop_id, LineSettings(opens_at, admission_rate=5.0), uow, utc_now())
            uow.session.flush()
            second.start()
            poll(lambda: scalar(stack, "checkout", "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                                   "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO lines%'"),
                 timeout=10, what="the second admin's line to wait for the first's")
            commitment = first.commitment
            uow.commit()
        second.join(timeout=10)
        assert not second.is_alive() and answers == [commitment], answers  # the first's line, the second's settings
        assert rows(stack, "checkout", "SELECT commitment, admission_rate FROM lines WHERE drop_id = :d",
                    d=str(drop_id)) == [(commitment, 7.0)]
    finally:
        execute(stack, "checkout", "DELETE FROM lines WHERE drop_id = :d", d=str(drop_id))
        engine.dispose()
