"""The control room (`GET /drops/{id}/control-room` on checkout) in a real headless browser, as the
drop page is tested (test_drop_page.py: Debian's chromium through Playwright, never a downloaded
browser).

During a small drop (a few buyers order, some pay), an admin signs in on the page; its figures
match what the services themselves count (inventory's stock, checkout's orders, checkout's own
count of answers); the admin extends the window from the page and inventory's drop closes an hour
later, the action listed with who and when; an email parked in the dead-letter queue is replayed
from the page and delivered. On a drop with a line, the admin pauses it, re-rates it and resumes
it, and a reload keeps the admin signed in with a renewed token. Each test leaves a screenshot of
the page under var/test-artefacts/.
"""
from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import datetime, timedelta

import pytest
from playwright.sync_api import Browser, Page, expect

from devtools.client import Floodgate, poll
from tests.integration.database import scalar
from tests.integration.events import publish
from tests.integration.conftest import watched_page
from tests.integration.test_notifications import mails_by_message_id, message_id, order_confirmed, set_fault

PASSWORD = "control room password for tests"
FIGURES_TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def admin(floodgate) -> tuple[str, str]:
    """An admin of the room's own, whose password the page is given: (email, token)."""
    email = f"ops-{uuid.uuid4().hex[:6]}@floodgate.test"
    return email, floodgate.create_admin(email, PASSWORD)


@pytest.fixture
def room_page(browser: Browser, request, capsys):
    with watched_page(browser, request.node.name, capsys, width=1200) as page:
        yield page


def open_control_room(page: Page, floodgate: Floodgate, drop: dict, admin_email: str) -> None:
    answer = page.goto(f"{floodgate.stack.url('checkout')}/drops/{drop['id']}/control-room")
    assert answer is not None and answer.status == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert "script-src 'nonce-" in answer.headers["content-security-policy"]
    form = page.locator("#sign-in-form")
    form.get_by_label("Email").fill(admin_email)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signed-in")).to_have_text(re.compile(f"Signed in as {re.escape(admin_email)}"), timeout=10_000)
    expect(page.locator("#drop-title")).to_have_text(f"Control room: {drop['product']['name']}", timeout=10_000)


def place_and_pay(floodgate: Floodgate, drop_id: str, buyers: int, paying: int) -> list[dict]:
    """`buyers` buyers order one unit each; the first `paying` of them pay. Their orders."""
    orders = []
    for n in range(buyers):
        _, token = floodgate.register()
        answer = floodgate.place_order(token, drop_id)
        assert answer.status_code == 201, answer.text
        orders.append(answer.json())
        if n < paying:
            assert floodgate.pay(orders[-1]).status_code == 200
    return orders


def actions_of(floodgate: Floodgate, token: str, service: str, drop_id: str) -> list[dict]:
    answer = floodgate.http.get(floodgate.stack.url(service) + "/admin-actions", params={"drop_id": drop_id},
                                headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def answered_orders(floodgate: Floodgate, status: int) -> int:
    """Checkout's own count of its answers to POST /orders with `status`, from its /metrics."""
    text = floodgate.http.get(floodgate.stack.url("checkout") + "/metrics").text
    pattern = re.compile(r'^floodgate_http_requests_total\{([^}]*)\} ([0-9.e+]+)$', re.MULTILINE)
    total = 0.0
    for labels, value in pattern.findall(text):
        if {'route="/orders"', 'method="POST"', f'status="{status}"', 'service="checkout"'} <= set(labels.split(",")):
            total += float(value)
    return int(total)


def test_the_control_room_shows_the_drops_figures_extends_its_window_and_replays_a_dead_letter(
        floodgate, stack, admin, room_page):
    page = room_page
    admin_email, token = admin
    drop = floodgate.create_drop(token, quantity=5)
    orders = place_and_pay(floodgate, drop["id"], buyers=3, paying=2)
    # the two payments become sales once inventory's consumer has their order.confirmed
    poll(lambda: scalar(stack, "inventory", "SELECT count(*) FROM reservations WHERE drop_id = :d AND status = 'sold'",
                        d=drop["id"]) == 2, what="the two sales")

    open_control_room(page, floodgate, drop, admin_email)

    # --- its figures are the services' own counts ---
    expect(page.locator("#stock-sold")).to_have_text("2", timeout=FIGURES_TIMEOUT_MS)
    remaining = floodgate.get_drop(drop["id"])["remaining"]
    held = scalar(stack, "inventory", "SELECT coalesce(sum(quantity), 0) FROM reservations "
                                      "WHERE drop_id = :d AND status = 'held'", d=drop["id"])
    assert (remaining, held) == (2, 1)
    expect(page.locator("#stock-remaining")).to_have_text(str(remaining))
    expect(page.locator("#stock-held")).to_have_text(str(held))
    expect(page.locator("#stock-total")).to_have_text("5")

    statuses = Counter(floodgate.get_order(token, order["id"]).json()["status"] for order in orders)
    assert statuses == {"confirmed": 2, "awaiting_payment": 1}
    for status in ("confirmed", "awaiting_payment", "shipped", "cancelled", "expired", "payment_failed"):
        expect(page.locator(f"#orders-{status}")).to_have_text(str(statuses[status]), timeout=FIGURES_TIMEOUT_MS)
    expect(page.locator("#orders-total")).to_have_text("3")
    expect(page.locator("#orders-rate")).to_have_text(re.compile(r"^\d+\.\d$"))
    # this pod's count of answers is checkout's own /metrics count (nothing else orders meanwhile)
    expect(page.locator("#answers-201")).to_have_text(str(answered_orders(floodgate, 201)), timeout=FIGURES_TIMEOUT_MS)
    assert answered_orders(floodgate, 201) >= 3
    expect(page.locator("#line-none")).to_have_text("This drop has no line.")
    expect(page.locator("#email-backlog")).to_have_text(re.compile(r"^\d+ \(\d+ queued, \d+ retrying later\)$"))
    # the relays beat: they publish these very orders' events
    expect(page.locator("#worker-checkout-relay td").nth(2)).to_have_text(re.compile(r"^[\d.]+ s ago$"),
                                                                         timeout=FIGURES_TIMEOUT_MS)

    # --- extending the window: inventory's drop closes an hour later, and the action is listed ---
    closes_at = datetime.fromisoformat(floodgate.get_drop(drop["id"])["closes_at"])
    page.get_by_role("button", name="Extend by 1 hour").click()
    expect(page.locator("#window-news")).to_contain_text("Extended by 1 h: the drop now closes at")
    extended = datetime.fromisoformat(floodgate.get_drop(drop["id"])["closes_at"])
    assert abs(extended - (closes_at + timedelta(hours=1))) < timedelta(seconds=1)

    action, scheduled = actions_of(floodgate, token, "inventory", drop["id"])
    assert (scheduled["method"], scheduled["path"], scheduled["admin"]["email"]) == ("POST", "/drops", admin_email)
    assert action["admin"]["email"] == admin_email and action["admin"]["subject"]
    assert (action["method"], action["path"], action["drop_id"]) == ("PATCH", f"/drops/{drop['id']}", drop["id"])
    assert datetime.fromisoformat(action["body"]["closes_at"]) == extended
    assert abs(datetime.fromisoformat(action["at"]) - datetime.now(extended.tzinfo)) < timedelta(minutes=1)
    shown = page.locator("#action-rows tr").filter(has_text=f"PATCH /drops/{drop['id']}")
    expect(shown).to_have_count(1, timeout=FIGURES_TIMEOUT_MS)
    expect(shown).to_contain_text(admin_email)
    expect(shown).to_contain_text("inventory")

    # --- a dead letter replayed from the page is handled ---
    run = uuid.uuid4().hex[:8]
    recipient = f"bounced-{run}@example.com"
    parked = order_confirmed(recipient)
    set_fault(stack, "550", recipients=(recipient,))
    try:
        publish(stack, [parked])
        replay_button = page.get_by_role("button", name=f"Replay {parked.id} of notifications")
        expect(replay_button).to_be_visible(timeout=30_000)  # parked after its attempts; the page lists it
        expect(page.locator("#dead-notifications td").nth(1)).not_to_have_text("0")
    finally:
        set_fault(stack, "none")
    assert not mails_by_message_id(floodgate, {message_id(parked)})
    replay_button.click()
    expect(page.locator("#dead-news")).to_have_text("1 event of notifications sent back to be handled again.")
    poll(lambda: mails_by_message_id(floodgate, {message_id(parked)}), what="the replayed email")
    expect(page.get_by_role("button", name=f"Replay {parked.id} of notifications")).to_have_count(0,
                                                                                                   timeout=FIGURES_TIMEOUT_MS)
    replays = [a for a in actions_of(floodgate, token, "notifications", drop["id"])
               if a["body"].get("message_id") == parked.id]
    assert [(a["method"], a["path"], a["outcome"], a["admin"]["email"]) for a in replays] == [
        ("POST", "/dead-letters/replay", {"replayed": 1}, admin_email)]
    expect(page.locator("#action-rows tr").filter(has_text=parked.id)).to_contain_text('{"replayed":1}')
    assert page.script_problems == []


def test_the_line_is_paused_re_rated_and_resumed_from_the_control_room(floodgate, stack, admin, room_page):
    page = room_page
    admin_email, token = admin
    drop = floodgate.create_drop(token, quantity=5)
    floodgate.put_line(token, drop, admission_rate=20)
    # the admitter opens the line at its opening, which has passed
    poll(lambda: floodgate.get_line(drop["id"]).json()["state"] == "open", what="the line to open")
    open_control_room(page, floodgate, drop, admin_email)
    expect(page.locator("#line-state")).to_have_text("Open", timeout=FIGURES_TIMEOUT_MS)
    expect(page.locator("#line-pace")).to_have_text("20.0 a second (the ceiling)", timeout=FIGURES_TIMEOUT_MS)

    page.get_by_role("button", name="Pause the line").click()
    expect(page.locator("#line-state")).to_have_text("Paused")
    expect(page.locator("#line-pace")).to_have_text("not admitting")
    assert floodgate.get_line(drop["id"]).json()["state"] == "paused"
    expect(page.get_by_role("button", name="Resume the line")).to_be_enabled()
    expect(page.get_by_role("button", name="Pause the line")).to_be_disabled()

    page.get_by_label("Admissions a second at most").fill("7.5")
    page.get_by_role("button", name="Set the rate").click()
    expect(page.locator("#line-news")).to_have_text("The line lets in at most 7.5 buyers a second.")
    assert floodgate.get_line(drop["id"]).json()["admission_rate"] == 7.5

    page.get_by_role("button", name="Resume the line").click()
    expect(page.locator("#line-state")).to_have_text("Open")
    assert floodgate.get_line(drop["id"]).json()["state"] == "open"
    # the admitter's next turn paces the line at the new ceiling
    expect(page.locator("#line-pace")).to_have_text("7.5 a second (the ceiling)", timeout=FIGURES_TIMEOUT_MS)

    put, *recorded = reversed(actions_of(floodgate, token, "checkout", drop["id"]))
    assert (put["method"], put["body"]["admission_rate"], put["admin"]["email"]) == ("PUT", 20, admin_email)
    assert [(a["method"], a["body"], a["outcome"]["state"], a["admin"]["email"]) for a in recorded] == [
        ("PATCH", {"state": "paused"}, "paused", admin_email),
        ("PATCH", {"admission_rate": 7.5}, "paused", admin_email),
        ("PATCH", {"state": "open"}, "open", admin_email),
    ]
    expect(page.locator("#action-rows tr").filter(has_text=f"/drops/{drop['id']}/line")).to_have_count(4)

    # closed (as the admitter closes it when the window ends), then opened again: the OnePlus case
    page.get_by_text("Close the line for good").click()
    page.get_by_role("button", name="Close the line").click()
    expect(page.locator("#line-state")).to_have_text("Closed")
    page.get_by_role("button", name="Open the line again").click()
    expect(page.locator("#line-state")).to_have_text("Open")
    assert floodgate.get_line(drop["id"]).json()["state"] == "open"

    # a reload keeps the admin signed in; an access token about to run out is renewed first
    spent = page.evaluate("localStorage.getItem('floodgate.admin.token')")
    page.evaluate("localStorage.setItem('floodgate.admin.expires', '0')")
    page.reload()
    expect(page.locator("#signed-in")).to_have_text(re.compile(f"Signed in as {re.escape(admin_email)}"))
    expect(page.locator("#line-state")).to_have_text("Open", timeout=FIGURES_TIMEOUT_MS)
    # the line's state is public (no token): wait for the renewal itself, which the page's first
    # signed-in call starts
    page.wait_for_function("spent => localStorage.getItem('floodgate.admin.token') !== spent", arg=spent,
                           timeout=FIGURES_TIMEOUT_MS)
    renewed = page.evaluate("localStorage.getItem('floodgate.admin.token')")
    assert renewed and renewed != spent
    assert page.script_problems == []


def test_a_room_follows_a_sign_out_and_a_sign_in_in_another_tab(floodgate, admin, room_page):
    """The session is shared by the admin's tabs: a room left open after signing out in another
    stopped reading and still showed its figures as live, and stayed so after signing in again."""
    page = room_page
    admin_email, token = admin
    drop = floodgate.create_drop(token, quantity=5)
    open_control_room(page, floodgate, drop, admin_email)
    other = page.context.new_page()  # signed in already: the session is the context's
    other.goto(f"{floodgate.stack.url('checkout')}/drops/{drop['id']}/control-room")
    expect(other.locator("#signed-in")).to_have_text(re.compile(f"Signed in as {re.escape(admin_email)}"))

    other.get_by_role("button", name="Sign out").click()
    expect(page.locator("#sign-in-form")).to_be_visible(timeout=5_000)
    expect(page.locator("#account-problem")).to_contain_text("You signed out in another tab.")
    expect(page.locator("#room")).to_be_hidden()

    open_control_room(other, floodgate, drop, admin_email)  # signed in again there
    expect(page.locator("#room")).to_be_visible(timeout=5_000)
    updated = page.locator("#updated").inner_text()
    expect(page.locator("#updated")).not_to_have_text(updated, timeout=FIGURES_TIMEOUT_MS)  # reading again
    other.close()


def test_a_service_that_does_not_answer_holds_no_other_figure_and_what_is_not_known_says_so(
        floodgate, admin, room_page):
    # The page read every figure together and waited for all: one service that never answered
    # (its node gone, the ingress waiting a minute) froze the stock, the orders and the line at
    # their last values. And with notifications down, the dead letters kept "Nothing is parked."
    page = room_page
    admin_email, token = admin
    drop = floodgate.create_drop(token, quantity=5)
    accounts, notifications = floodgate.stack.url("accounts"), floodgate.stack.url("notifications")
    open_control_room(page, floodgate, drop, admin_email)
    expect(page.locator("#dead-summary")).to_have_text(re.compile(r"^(Nothing is parked\.|\d+ parked: .*)$"),
                                                       timeout=FIGURES_TIMEOUT_MS)
    expect(page.locator("#stock-held")).to_have_text("0", timeout=FIGURES_TIMEOUT_MS)

    page.route(f"{accounts}/workers*", lambda route: None)  # never answered
    page.route(f"{notifications}/figures*", lambda route: route.fulfill(
        status=503, content_type="application/problem+json", headers={"Access-Control-Allow-Origin": "*"},
        body='{"title": "Service unavailable", "status": 503, "detail": "notifications is restarting"}'))
    expect(page.locator("#workers-problem")).to_contain_text("accounts: Cannot reach accounts", timeout=FIGURES_TIMEOUT_MS)
    # while accounts' /workers still never answers, the other figures go on: a hold shows
    place_and_pay(floodgate, drop["id"], buyers=1, paying=0)
    expect(page.locator("#stock-held")).to_have_text("1", timeout=FIGURES_TIMEOUT_MS)
    expect(page.locator("#dead-summary")).to_have_text("Unknown: the counts could not be read.")
    expect(page.locator("#email-last-sent")).to_have_text("unknown")
    expect(page.locator("#email-problem")).to_contain_text("notifications is restarting")
