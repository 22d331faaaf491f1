"""The drop page (`GET /drops/{id}/page` on checkout) in a real headless browser: Debian's
chromium, driven by Playwright pointed at the system browser's executable. Nothing downloads a
browser: `make integration` installs chromium from Debian when it is missing, and without it
this test fails, saying so, rather than skip.

A buyer opens the page, signs up, joins the line before the opening, is let in after it, orders
with a Canadian address, pays on the payment simulator's page and sees the order confirmed with
its email sent; on a drop without a line, goes straight to the order form; and while paying in
another tab, the page reads the order less and less often (on a clock the test moves), and at once
when the buyer comes back. Each test leaves a screenshot of the page under var/test-artefacts/.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from devtools.client import Floodgate, poll
from tests.integration.conftest import watched_page

# Long enough for the buyer to open the page, sign up and join before the opening.
OPENS_IN_SECONDS = 12
PRODUCT = "OnePlus One 64GB Sandstone Black"
# Shown as text, never run: the page writes what the services say as text, not markup.
MARKUP_PRODUCT = 'OnePlus One <img src=x onerror="window.injected=1"> Sandstone Black'
TORONTO = {"name": "Alex Tremblay", "street_address": "1 Yonge St", "city": "Toronto",
           "country_area": "ON", "postal_code": "M5E 1W7"}


@pytest.fixture
def buyer_page(browser: Browser, request, capsys):
    with watched_page(browser, request.node.name, capsys, width=900) as page:
        yield page


def schedule_drop(floodgate: Floodgate, admin_token: str, opens_in: float, quantity: int = 5,
                  product_name: str = PRODUCT, price: dict | None = None, **terms) -> dict:
    """A drop of `quantity` units opening `opens_in` seconds from now for an hour, shipping to
    Canada and the United States, at `price` (29900 CAD); `terms` are more of its fields."""
    http, auth = floodgate.http, {"Authorization": f"Bearer {admin_token}"}
    inventory = floodgate.stack.url("inventory")
    product = http.post(f"{inventory}/products", headers=auth, json={
        "sku": f"OPO-{uuid.uuid4().hex[:8]}", "name": product_name,
        "description": "The flagship killer", "price": price or {"amount": 29900, "currency": "CAD"},
    })
    assert product.status_code == 201, product.text
    opens_at = datetime.now(timezone.utc) + timedelta(seconds=opens_in)
    drop = http.post(f"{inventory}/drops", headers=auth, json={
        "product_id": product.json()["id"], "quantity": quantity,
        "opens_at": opens_at.isoformat(), "closes_at": (opens_at + timedelta(hours=1)).isoformat(),
        "per_buyer_limit": 1, "shipping_countries": ["CA", "US"], **terms,
    })
    assert drop.status_code == 201, drop.text
    return drop.json()


def change_line(floodgate: Floodgate, admin_token: str, drop: dict, to_state: str) -> None:
    answer = floodgate.http.patch(f"{floodgate.stack.url('checkout')}/drops/{drop['id']}/line",
                                  headers={"Authorization": f"Bearer {admin_token}"}, json={"state": to_state})
    assert answer.status_code == 200, answer.text


def put_line_on(floodgate: Floodgate, admin_token: str, drop: dict, opens_at: str | None = None) -> dict:
    """A line on `drop`, opening with it unless `opens_at` says another time."""
    answer = floodgate.http.put(
        f"{floodgate.stack.url('checkout')}/drops/{drop['id']}/line",
        headers={"Authorization": f"Bearer {admin_token}"},
        json={"opens_at": opens_at or drop["opens_at"], "admission_factor": 1.0, "admission_rate": 50,
              "pass_ttl_seconds": 120},
    )
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def open_drop_page(page: Page, floodgate: Floodgate, drop: dict) -> None:
    answer = page.goto(f"{floodgate.stack.url('checkout')}/drops/{drop['id']}/page")
    assert answer is not None and answer.status == 200
    assert answer.headers["content-type"].startswith("text/html")
    expect(page.locator("#drop-product")).to_have_text(drop["product"]["name"], timeout=10_000)
    expect(page.locator("#drop-ships-to")).to_have_text("Canada (CA), United States (US)")


def sign_up(page: Page, invite_code: str | None = None) -> str:
    email = f"browser-{uuid.uuid4().hex[:10]}@example.com"
    form = page.locator("#account-form")
    form.get_by_label("Email").fill(email)
    form.get_by_label("Password").fill("correct horse battery staple")
    form.get_by_label("Your name").fill("Alex Tremblay")
    if invite_code is not None:
        form.get_by_label("Invite code").fill(invite_code)
    form.get_by_role("button", name="Create account").click()
    expect(page.locator("#signed-in")).to_have_text(re.compile(f"Signed in as {re.escape(email)}"), timeout=10_000)
    return email


def in_the_pre_queue(page: Page, floodgate: Floodgate, admin_token: str, opens_in: float) -> dict:
    """A drop with a line opening in `opens_in` seconds, whose page's buyer signs up and joins the
    pre-queue; the drop."""
    drop = schedule_drop(floodgate, admin_token, opens_in=opens_in)
    put_line_on(floodgate, admin_token, drop)
    open_drop_page(page, floodgate, drop)
    sign_up(page)
    page.get_by_role("button", name="Join the line").click()
    expect(page.locator("#ticket-state")).to_have_text("In the pre-queue")
    return drop


def fill_in_toronto(page: Page, country_code: str, ready: bool = True) -> None:
    """Fill the order form with a Canadian address (`ready`: the order may be placed now)."""
    form = page.locator("#order-form")
    if ready:
        expect(form.get_by_role("button", name="Place order")).to_be_enabled()
    for field, value in TORONTO.items():
        form.locator(f"input[name={field}]").fill(value)
    form.locator("select[name=country_code]").select_option(country_code)


def order_to_toronto(page: Page) -> str:
    """Fill the order form with a Canadian address, place the order; the order's id."""
    fill_in_toronto(page, "CA")
    page.get_by_role("button", name="Place order").click()
    expect(page.locator("#order-status")).to_have_text("Awaiting payment", timeout=15_000)
    expect(page.locator("#order-address")).to_have_text("Alex Tremblay, 1 YONGE ST, TORONTO, ON M5E 1W7, Canada (CA)")
    return page.locator("#order-id").inner_text()


def pay_on_the_simulator(page: Page) -> None:
    with page.context.expect_page() as opened:
        page.get_by_role("link", name="Pay now").click()
    provider = opened.value
    expect(provider.get_by_role("heading")).to_have_text(re.compile(r"^Pay 29900 CAD$"), timeout=10_000)
    provider.get_by_role("button", name="Approve payment").click()
    expect(provider.locator("body")).to_contain_text("COMPLETED", timeout=15_000)
    provider.close()


def see_it_confirmed(page: Page, floodgate: Floodgate, admin_token: str, order_id: str, email: str) -> None:
    expect(page.locator("#order-status")).to_have_text("Confirmed: payment received", timeout=30_000)
    expect(page.locator("#order-email")).to_have_text("Confirmation email sent", timeout=60_000)
    expect(page.locator("#pay")).to_be_hidden()
    order = floodgate.get_order(admin_token, order_id).json()
    assert order["status"] == "confirmed"
    assert order["shipping_address"]["country_code"] == "CA"
    assert order["shipping_address"]["postal_code"] == "M5E 1W7"
    [mail] = poll(lambda: floodgate.confirmations_of(order_id), what="the confirmation email")
    assert mail["to"] == [email]
    assert "Canada" in mail["text"] and "United States" not in mail["text"]
    assert page.script_problems == []


def test_a_buyer_joins_the_line_before_the_opening_is_let_in_orders_to_canada_pays_and_sees_the_email_sent(
        floodgate, admin_token, buyer_page):
    page = buyer_page
    drop = schedule_drop(floodgate, admin_token, opens_in=OPENS_IN_SECONDS)
    line = put_line_on(floodgate, admin_token, drop)
    open_drop_page(page, floodgate, drop)
    expect(page.locator("#countdown")).to_have_text(re.compile(r"^Opens in 00:00:\d\d$"))
    expect(page.locator("#line-commitment")).to_have_text(line["commitment"])
    expect(page.get_by_role("button", name="Place order")).to_be_disabled()
    email = sign_up(page)

    edge = floodgate.stack.url("line-status")
    polled_the_edge = []  # while it waits, the page polls the public status edge, not checkout
    page.on("response", lambda response: polled_the_edge.append(response)
            if response.request.method == "GET" and response.url.startswith(edge + f"/drops/{drop['id']}/line/tickets/")
            else None)
    page.get_by_role("button", name="Join the line").click()
    expect(page.locator("#ticket-state")).to_have_text("In the pre-queue")
    expect(page.locator("#ticket-position")).to_have_text("drawn at the opening")
    expect(page.locator("#line-news")).to_contain_text("You're in the pre-queue")
    expect(page.locator("#order-gate")).to_have_text(
        "Fill in your address now: you can place the order when it's your turn in the line.")
    # the address is typed while the buyer waits, not on the pass's two-minute clock
    fill_in_toronto(page, "CA", ready=False)
    expect(page.get_by_role("button", name="Place order")).to_be_disabled()
    expect(page.locator("#countdown")).to_have_text(re.compile(r"^Opens in "))

    expect(page.locator("#countdown")).to_have_text(re.compile(r"^Open now"), timeout=(OPENS_IN_SECONDS + 5) * 1000)
    expect(page.locator("#ticket-state")).to_have_text("Admitted", timeout=30_000)
    assert polled_the_edge and {poll.status for poll in polled_the_edge} <= {200, 404}, polled_the_edge
    # the poll that told the buyer carried its token, and its answer the pass the order uses
    assert any(poll.status == 200 and (poll.json() or {}).get("pass") for poll in polled_the_edge)
    expect(page.locator("#line-news")).to_contain_text("It's your turn!")
    expect(page.locator("#ticket-position")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#line-seed")).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
    seed = page.locator("#line-seed").text_content()
    assert hashlib.sha256(bytes.fromhex(seed)).hexdigest() == line["commitment"]
    # what the buyer typed while waiting is there: one click places the order
    form = page.locator("#order-form")
    expect(form.locator("input[name=street_address]")).to_have_value(TORONTO["street_address"])
    expect(form.locator("select[name=country_code]")).to_have_value("CA")
    form.get_by_role("button", name="Place order").click()
    expect(page.locator("#order-status")).to_have_text("Awaiting payment", timeout=15_000)
    expect(page.locator("#order-address")).to_have_text("Alex Tremblay, 1 YONGE ST, TORONTO, ON M5E 1W7, Canada (CA)")
    order_id = page.locator("#order-id").inner_text()
    expect(page.locator("#line-news")).to_have_text("Your pass was used for your order.")

    pay_on_the_simulator(page)
    see_it_confirmed(page, floodgate, admin_token, order_id, email)


# The page's stored access token, made to fail: its signature's last characters changed (the
# server says 401, as it does to a token that ran out), while the page still thinks it fresh.
SPOIL_THE_TOKEN = """() => {
  const token = localStorage.getItem("floodgate.token");
  localStorage.setItem("floodgate.token", token.slice(0, -4) + (token.endsWith("AAAA") ? "BBBB" : "AAAA"));
  localStorage.setItem("floodgate.expires", String(Date.now() + 600000));
}"""


def test_a_buyer_whose_token_ran_out_while_waiting_in_the_line_is_still_signed_in_at_their_turn(
        floodgate, admin_token, buyer_page):
    # The page kept only the 15-minute access token: a buyer who joined the pre-queue longer
    # before their turn was told "Your session has ended" at the moment the line let them in, and
    # lost their ticket while signing in again on the pass's clock.
    page = buyer_page
    in_the_pre_queue(page, floodgate, admin_token, opens_in=25)

    renewals = []
    page.on("response", lambda response: renewals.append(response.status)
            if response.url.endswith("/sessions/refresh") else None)
    # accounts busy at that moment (503): the buyer stays signed in, and the page tries again
    accounts = floodgate.stack.url("accounts")
    page.route(f"{accounts}/sessions/refresh", lambda route: route.fulfill(
        status=503, content_type="application/problem+json", headers={"Access-Control-Allow-Origin": "*"},
        body='{"title": "Service unavailable", "status": 503}'))
    page.evaluate(SPOIL_THE_TOKEN)
    page.reload()  # the page reads its session back, and its ticket with it, with the spoiled token
    expect(page.locator("#line-problem")).to_contain_text("Your session could not be renewed just now", timeout=10_000)
    expect(page.locator("#signed-in")).to_be_visible()
    page.unroute(f"{accounts}/sessions/refresh")
    expect(page.locator("#ticket-state")).to_have_text("In the pre-queue", timeout=15_000)
    assert renewals[-1] == 201 and set(renewals[:-1]) <= {503}  # renewed once accounts answered
    expect(page.locator("#account-problem")).to_be_hidden()

    # A token about to run out is renewed before it is used: the admission's answer carries the pass.
    renewed = len(renewals)
    page.evaluate("() => localStorage.setItem('floodgate.expires', String(Date.now() + 30000))")
    page.reload()
    expect(page.locator("#ticket-state")).to_have_text("In the pre-queue", timeout=10_000)
    expect(page.locator("#ticket-state")).to_have_text("Admitted", timeout=60_000)
    assert renewals[renewed:] == [201]
    order_to_toronto(page)
    assert [problem for problem in page.script_problems if problem.startswith("page error")] == []

    # Signing out ends the session at accounts: its refresh token renews nothing more.
    refresh_token = page.evaluate("() => localStorage.getItem('floodgate.refresh')")
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#account-form")).to_be_visible()
    poll(lambda: floodgate.http.post(f"{accounts}/sessions/refresh", json={"refresh_token": refresh_token})
         .status_code == 401, what="the signed-out session's refresh token to be refused")


def test_two_tabs_of_one_buyer_share_the_session_and_renew_it_once(floodgate, admin_token, buyer_page):
    # Each tab kept its own copy of the single-use refresh token (a duplicated tab copies its
    # storage): both spent it, accounts took the second for a stolen token and ended the session,
    # and both tabs were signed out at their next call.
    page = buyer_page
    drop = in_the_pre_queue(page, floodgate, admin_token, opens_in=600)
    other = page.context.new_page()
    open_drop_page(other, floodgate, drop)
    expect(other.locator("#signed-in")).to_be_visible()  # signed in there too
    expect(other.locator("#ticket-state")).to_have_text("In the pre-queue", timeout=10_000)

    renewals = []
    page.context.on("response", lambda response: renewals.append(response.status)
                    if response.url.endswith("/sessions/refresh") else None)
    for _ in range(2):  # the token about to run out, in both tabs at once
        page.evaluate("() => localStorage.setItem('floodgate.expires', String(Date.now() + 30000))")
        page.reload()
        other.reload()
        expect(page.locator("#ticket-state")).to_have_text("In the pre-queue", timeout=10_000)
        expect(other.locator("#ticket-state")).to_have_text("In the pre-queue", timeout=10_000)
        poll(lambda: page.wait_for_timeout(50) or renewals, what="the renewal")  # events come while Playwright runs
        page.wait_for_timeout(1000)  # room for a second renewal, which must not come
        assert renewals == [201], renewals
        renewals.clear()
    expect(other.locator("#signed-in")).to_be_visible()
    expect(page.locator("#account-problem")).to_be_hidden()
    other.close()


def test_on_a_drop_without_a_line_the_buyer_goes_straight_to_the_order_form(floodgate, admin_token, buyer_page):
    page = buyer_page
    drop = schedule_drop(floodgate, admin_token, opens_in=-1, product_name=MARKUP_PRODUCT)
    open_drop_page(page, floodgate, drop)
    expect(page.locator("h1")).to_have_text(MARKUP_PRODUCT)
    assert page.locator("main img").count() == 0
    expect(page.locator("#line-summary")).to_have_text("This drop has no line: order as soon as it opens.")
    expect(page.locator("#order-gate")).to_have_text("Sign in to order.")
    email = sign_up(page)

    expect(page.get_by_role("button", name="Join the line")).to_be_hidden()
    expect(page.locator("#order-gate")).to_have_text("The drop is open: order now.")
    fill_in_toronto(page, "US")  # a Toronto address is no US address: refused, never relabelled
    page.get_by_role("button", name="Place order").click()
    refusal = page.locator("#order-problem")
    expect(refusal).to_contain_text("Address failed validation The address is not valid for its country.")
    expect(refusal).to_contain_text("shipping_address.postal_code: Not a valid postal code for this country")
    order_id = order_to_toronto(page)
    expect(refusal).to_be_hidden()
    pay_on_the_simulator(page)
    see_it_confirmed(page, floodgate, admin_token, order_id, email)
    expect(page.locator("#order-item")).to_have_text(f"1 × {MARKUP_PRODUCT}")
    assert page.evaluate("window.injected") is None


def test_during_the_invite_only_phase_an_invited_buyer_orders_without_the_line_and_the_others_wait_in_it(
        floodgate, admin_token, buyer_page, browser, request, capsys):
    """A drop with early access for a tier and a line: the invited buyer, signed up with their
    code, orders at once; anyone else is told when the line starts letting buyers in. Before,
    the page asked the invited buyer for a pass the line gave only by position, to anyone."""
    page = buyer_page
    code = floodgate.http.post(f"{floodgate.stack.url('accounts')}/invites", json={"tier": "friends", "max_uses": 1},
                               headers={"Authorization": f"Bearer {admin_token}"}).json()["code"]
    early_until = (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat()
    drop = schedule_drop(floodgate, admin_token, opens_in=-1, invite_only_until=early_until, invite_tier="friends")
    put_line_on(floodgate, admin_token, drop)
    open_drop_page(page, floodgate, drop)
    expect(page.locator("#drop-invited")).to_have_text(re.compile(r"^Invited buyers only until "))
    sign_up(page, invite_code=code)
    expect(page.locator("#order-gate")).to_have_text(re.compile(r"^You're invited: order now, no need to wait in line"))
    order_to_toronto(page)
    assert floodgate.get_drop(drop["id"])["remaining"] == 4

    assert page.script_problems == []

    with watched_page(browser, f"{request.node.name}-uninvited", capsys, width=900) as other:
        open_drop_page(other, floodgate, drop)
        sign_up(other)  # without a code
        expect(other.locator("#order-gate")).to_have_text(re.compile(
            r"^Until .+ the drop is open to invited buyers only: the line starts letting buyers in then\.$"))
        expect(other.get_by_role("button", name="Place order")).to_be_disabled()
        other.get_by_role("button", name="Join the line").click()
        expect(other.locator("#line-news")).to_have_text(re.compile(
            r"^You're in line: it starts letting buyers in at .+, when the invited buyers' early access ends\."))

        # an admin ends the phase: the open page lets its buyer in and order (its end once sent
        # the page's rendering round in circles until the stack overflowed, and it froze)
        ends_at = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
        ended = floodgate.http.patch(f"{floodgate.stack.url('inventory')}/drops/{drop['id']}",
                                     headers={"Authorization": f"Bearer {admin_token}"},
                                     json={"invite_only_until": ends_at})
        assert ended.status_code == 200, ended.text
        expect(other.locator("#line-news")).to_have_text(re.compile(r"^It's your turn!"), timeout=30_000)
        order_to_toronto(other)
        assert other.script_problems == []


def test_an_account_made_before_its_invite_signs_in_with_the_code_and_is_invited(floodgate, admin_token, buyer_page):
    """The code redeemed at sign-in, and the token renewed so that it carries the tier: the page
    lets the buyer order during the invite-only phase. A wrong code says so, signed in all the same."""
    page = buyer_page
    email, _ = floodgate.register(password="correct horse battery staple")
    code = floodgate.http.post(f"{floodgate.stack.url('accounts')}/invites", json={"tier": "friends", "max_uses": 1},
                               headers={"Authorization": f"Bearer {admin_token}"}).json()["code"]
    early_until = (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat()
    drop = schedule_drop(floodgate, admin_token, opens_in=-1, invite_only_until=early_until, invite_tier="friends")
    open_drop_page(page, floodgate, drop)
    form = page.locator("#account-form")

    def sign_in_with(invite_code: str) -> None:
        form.get_by_label("Email").fill(email)
        form.get_by_label("Password").fill("correct horse battery staple")
        form.get_by_label("Invite code").fill(invite_code)
        form.get_by_role("button", name="Sign in").click()
        expect(page.locator("#signed-in")).to_be_visible(timeout=10_000)

    sign_in_with("NOT-A-CODE")
    expect(page.locator("#account-problem")).to_be_visible()
    expect(page.locator("#order-gate")).to_have_text(re.compile(r"^Until .+ the drop is open to invited buyers only\.$"))
    page.get_by_role("button", name="Sign out").click()
    sign_in_with(code)
    expect(page.locator("#order-gate")).to_have_text(re.compile(r"^You're invited: order now\. Until "))
    order_to_toronto(page)
    assert page.script_problems == []


def test_a_buyer_whose_order_s_answer_was_lost_and_who_changed_the_form_is_shown_the_order_they_have(
        floodgate, admin_token, buyer_page):
    """The order was placed but its answer never reached the page; the buyer reloads, corrects
    the street and orders again with the purchase's key: checkout refuses the changed body and
    names the order the key placed. The page once showed that refusal and dropped the key, and
    the buyer, told "no", met `limit-exceeded` next, never learning they had an order. The page
    now finds the order as it opens (the buyer's orders on this drop), so the buyer is shown it
    before typing anything; were that read to fail, the refusal's order is followed."""
    page = buyer_page
    drop = schedule_drop(floodgate, admin_token, opens_in=-1)
    open_drop_page(page, floodgate, drop)
    sign_up(page)
    placed = []

    def answer_lost(route):
        if not placed:
            placed.append(route.fetch())  # reaches checkout, which places the order
        route.abort("connectionreset")  # and its answer, and the page's retries', never arrive

    page.route(re.compile(r"/orders$"), answer_lost)
    fill_in_toronto(page, "CA")
    page.get_by_role("button", name="Place order").click()
    expect(page.locator("#order-problem")).to_contain_text("Trying again", timeout=15_000)  # Playwright routes meanwhile
    assert placed[0].status == 201
    first = placed[0].json()
    page.unroute(re.compile(r"/orders$"))

    page.route(re.compile(r"/orders\?limit=20$"), lambda route: route.abort("connectionreset"))  # not found so
    page.reload()
    expect(page.locator("#order-form").get_by_role("button", name="Place order")).to_be_enabled(timeout=10_000)
    fill_in_toronto(page, "CA")
    page.locator("#order-form input[name=street_address]").fill("2 Yonge St")
    page.get_by_role("button", name="Place order").click()

    expect(page.locator("#order-id")).to_have_text(first["id"], timeout=15_000)
    expect(page.locator("#order-status")).to_have_text("Awaiting payment")
    expect(page.locator("#order-address")).to_have_text("Alex Tremblay, 1 YONGE ST, TORONTO, ON M5E 1W7, Canada (CA)")
    expect(page.locator("#order-problem")).to_be_hidden()
    expect(page.locator("#order-status")).to_have_text("Awaiting payment")
    expect(page.locator("#order-address")).to_have_text("Alex Tremblay, 1 YONGE ST, TORONTO, ON M5E 1W7, Canada (CA)")
    expect(page.locator("#order-problem")).to_be_hidden()


@pytest.mark.parametrize("price, shown", [({"amount": 1234500, "currency": "HUF"}, "12,345.00"),
                                          ({"amount": 12345, "currency": "JPY"}, "12,345")])
def test_an_order_total_is_shown_in_the_currency_s_iso_minor_units(floodgate, admin_token, buyer_page, price, shown):
    """Chromium's Intl takes CLDR's cash digits, 0 for HUF: the page divided by them and showed
    a 12,345.00 HUF order as 1,234,500 HUF."""
    page = buyer_page
    drop = schedule_drop(floodgate, admin_token, opens_in=-1, price=price)
    open_drop_page(page, floodgate, drop)
    sign_up(page)
    order_to_toronto(page)
    expect(page.locator("#order-total")).to_have_text(re.compile(rf"(^|\D){re.escape(shown)}(\D|$)"))
    expect(page.locator("#order-total")).to_contain_text(price["currency"])


# Counts the page's reads of its order (GET /orders/{id}) as they are sent and answered.
COUNT_ORDER_READS = """
window.orderReads = {sent: 0, answered: 0};
const realFetch = window.fetch;
window.fetch = function (input, init) {
  const path = new URL(typeof input === "string" ? input : input.url, location.href).pathname;
  const counted = !(init && init.method && init.method !== "GET") && /^\\/orders\\/[0-9a-f-]{36}$/.test(path);
  if (counted) window.orderReads.sent++;
  const answer = realFetch.apply(this, arguments);
  if (counted) answer.finally(() => { window.orderReads.answered++; });
  return answer;
};
"""


def test_while_the_buyer_pays_elsewhere_the_page_reads_its_order_less_often_and_at_once_on_return(
        floodgate, admin_token, buyer_page):
    page = buyer_page
    page.context.add_init_script(COUNT_ORDER_READS)
    page.clock.install()  # the page's timers on a clock the test moves
    drop = schedule_drop(floodgate, admin_token, opens_in=-1)
    open_drop_page(page, floodgate, drop)
    email = sign_up(page)
    order_id = order_to_toronto(page)

    def reads() -> dict:
        return page.evaluate("window.orderReads")

    def settled() -> int:
        return poll(lambda: (lambda r: r["sent"] if r["sent"] == r["answered"] else None)(reads()),
                    timeout=10, interval=0.02, what="the page's reads of its order answered")

    # a minute on the payment provider's page: 2 s apart would be 30 reads
    page.clock.pause_at(page.evaluate("Date.now()") + 1000)
    before = settled()
    for _ in range(120):
        page.clock.run_for(500)
        settled()
    while_paying = settled() - before
    assert 4 <= while_paying <= 9, while_paying
    expect(page.locator("#order-status")).to_have_text("Awaiting payment")

    # paid in the other tab: back on the page, the buyer sees it at once
    link = page.locator("#pay-link").get_attribute("href")
    target = urlsplit(link)
    approved = floodgate.http.post(f"{target.scheme}://{target.netloc}{target.path}/approve?{target.query}")
    assert approved.status_code == 200, approved.text
    sent = settled()
    # coming back to the tab: it is shown again and gets the focus, which make one read, not two
    page.evaluate("document.dispatchEvent(new Event('visibilitychange')); window.dispatchEvent(new Event('focus'))")
    assert reads()["sent"] == sent + 1
    page.clock.resume()
    see_it_confirmed(page, floodgate, admin_token, order_id, email)


@pytest.mark.parametrize("seen_by", ["coming back to the page", "its next read"])
def test_an_order_that_ran_out_shows_confirmed_once_its_late_payment_confirms_it(
        floodgate, admin_token, buyer_page, seen_by):
    """The buyer approves on the provider's page after the hold ran out, and the late payment
    confirms the order (the drop still had the unit). The page had read "Expired" and stopped
    reading the order: it said "Expired" still, and a buyer who believed it might order and pay
    again. It now reads such an order every 30 s for 10 minutes, and when the buyer comes back."""
    page = buyer_page
    page.context.add_init_script(COUNT_ORDER_READS)
    page.clock.install()  # time flows until the test pauses it
    drop = schedule_drop(floodgate, admin_token, opens_in=-1, hold_ttl_seconds=3)
    open_drop_page(page, floodgate, drop)
    email = sign_up(page)
    order_id = order_to_toronto(page)
    target = urlsplit(page.locator("#pay-link").get_attribute("href"))
    expect(page.locator("#order-status")).to_have_text("Expired: not paid in time", timeout=30_000)

    page.clock.pause_at(datetime.now(timezone.utc) + timedelta(seconds=1))  # the next read is 29 s away
    approved = floodgate.http.post(f"{target.scheme}://{target.netloc}{target.path}/approve?{target.query}")
    assert approved.status_code == 200, approved.text
    poll(lambda: floodgate.get_order(admin_token, order_id).json()["status"] == "confirmed", timeout=30,
         what="the late payment to confirm the order")
    sent = page.evaluate("window.orderReads.sent")
    if seen_by == "coming back to the page":
        page.evaluate("document.dispatchEvent(new Event('visibilitychange')); window.dispatchEvent(new Event('focus'))")
    else:
        page.clock.run_for(30_000)
    assert page.evaluate("window.orderReads.sent") == sent + 1
    expect(page.locator("#order-status")).to_have_text("Confirmed: payment received", timeout=10_000)
    page.clock.resume()
    see_it_confirmed(page, floodgate, admin_token, order_id, email)


def test_another_tab_shows_the_buyers_order_and_signing_out_takes_it_off_the_page(floodgate, admin_token, buyer_page):
    """The page kept the order it placed in its own tab only: a second tab, or the page opened
    again from a link, showed no order and no payment link and offered the form again. Signing
    out left the order (its address, its payment link) on the page, and the form locked for the
    next buyer on the device."""
    page = buyer_page
    drop = schedule_drop(floodgate, admin_token, opens_in=-1, per_buyer_limit=2)
    open_drop_page(page, floodgate, drop)
    sign_up(page)
    order_id = order_to_toronto(page)
    pay_link = page.locator("#pay-link").get_attribute("href")

    other = page.context.new_page()  # the same buyer's second tab, signed in by the shared session
    open_drop_page(other, floodgate, drop)
    expect(other.locator("#order-id")).to_have_text(order_id, timeout=10_000)
    expect(other.locator("#order-status")).to_have_text("Awaiting payment")
    assert other.locator("#pay-link").get_attribute("href") == pay_link
    expect(other.locator("#order-gate")).to_have_text("Your order is placed: follow it below.")
    other.close()

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#placed")).to_be_hidden()
    sign_up(page)  # the next buyer on this device
    expect(page.locator("#placed")).to_be_hidden()
    expect(page.get_by_role("button", name="Place order")).to_be_enabled()
    assert page.script_problems == []


def test_a_buyer_whose_order_ran_out_may_order_again(floodgate, admin_token, buyer_page):
    """Inventory gave the unit and the allowance back, but the ended order kept the form locked
    for good, reload or not."""
    page = buyer_page
    drop = schedule_drop(floodgate, admin_token, opens_in=-1, hold_ttl_seconds=3)
    open_drop_page(page, floodgate, drop)
    sign_up(page)
    first = order_to_toronto(page)
    expect(page.locator("#order-status")).to_have_text("Expired: not paid in time", timeout=30_000)
    expect(page.get_by_role("button", name="Place order")).to_be_enabled()
    page.get_by_role("button", name="Place order").click()
    expect(page.locator("#order-status")).to_have_text("Awaiting payment", timeout=15_000)
    assert page.locator("#order-id").inner_text() not in ("", first)


def test_a_paid_buyer_waiting_for_the_email_reads_the_order_less_and_less_often(floodgate, admin_token, buyer_page):
    """Every 2 s until the confirmation email was sent: an email backlog (here the buyer's address
    refused, so the email is parked) kept every paid page at 30 reads a minute."""
    from tests.integration.test_notifications import set_fault

    page = buyer_page
    page.context.add_init_script(COUNT_ORDER_READS)
    page.clock.install()
    drop = schedule_drop(floodgate, admin_token, opens_in=-1)
    open_drop_page(page, floodgate, drop)
    email = sign_up(page)
    set_fault(floodgate.stack, "550", recipients=(email,))
    try:
        order_to_toronto(page)
        pay_on_the_simulator(page)
        expect(page.locator("#order-status")).to_have_text("Confirmed: payment received", timeout=30_000)
        page.clock.pause_at(datetime.now(timezone.utc) + timedelta(seconds=1))
        before = page.evaluate("window.orderReads.sent")
        for _ in range(120):  # a minute, half a second at a time
            page.clock.run_for(500)
        assert page.evaluate("window.orderReads.sent") - before <= 6  # 2, 4, 8, 16, 30 s apart
        expect(page.locator("#order-email")).not_to_have_text("Confirmation email sent")
    finally:
        set_fault(floodgate.stack, "none")


def test_a_signed_in_page_not_in_line_leaves_checkout_alone_and_backs_off_when_it_fails(
        floodgate, admin_token, buyer_page):
    """Each poll of the line also asked checkout for the buyer's own ticket (a token check and a
    database read) when they had none: every signed-in page not in line, every 10 s. And a
    failing line read came back at its Retry-After, every second from a 503."""
    page = buyer_page
    asked = {"tickets": 0, "line": 0}

    def count(route):
        path = urlsplit(route.request.url).path
        asked["tickets" if path.endswith("/tickets/mine") else "line"] += 1
        route.continue_()

    page.route(re.compile(r"/line(/tickets/mine)?$"), count)
    page.clock.install()
    drop = schedule_drop(floodgate, admin_token, opens_in=600)
    put_line_on(floodgate, admin_token, drop)
    open_drop_page(page, floodgate, drop)
    sign_up(page)
    expect(page.get_by_role("button", name="Join the line")).to_be_visible()
    page.clock.pause_at(datetime.now(timezone.utc) + timedelta(seconds=1))
    before = dict(asked)
    for _ in range(60):  # a minute
        page.clock.run_for(1000)
    poll(lambda: asked["line"] - before["line"] >= 5, timeout=10, what="the line's reads")
    assert asked["tickets"] == before["tickets"]  # asked once, as the buyer signed in

    page.unroute(re.compile(r"/line(/tickets/mine)?$"))
    failing = {"reads": 0}

    def unavailable(route):
        failing["reads"] += 1
        route.fulfill(status=503, headers={"Retry-After": "1", "Content-Type": "application/problem+json"},
                      body='{"type": "about:blank", "title": "Unavailable", "status": 503}')

    page.route(re.compile(r"/line$"), unavailable)
    for _ in range(60):  # another minute, the line failing
        page.clock.run_for(1000)
    assert 2 <= failing["reads"] <= 10  # 10 s, then 2, 4, 8, 16, 30 s apart (jittered): not 50


def test_a_line_set_up_after_the_page_opened_is_offered_before_the_opening(floodgate, admin_token, buyer_page):
    """A page that found no line was told of one only by the opening's reload: its buyer joined
    behind the whole drawn pre-queue."""
    page = buyer_page
    page.clock.install()
    drop = schedule_drop(floodgate, admin_token, opens_in=120)
    open_drop_page(page, floodgate, drop)
    sign_up(page)
    expect(page.locator("#line-summary")).to_have_text("This drop has no line: order as soon as it opens.")
    put_line_on(floodgate, admin_token, drop)
    page.clock.pause_at(datetime.now(timezone.utc) + timedelta(seconds=1))
    page.clock.run_for(31_000)
    page.clock.resume()
    page.get_by_role("button", name="Join the line").click()
    expect(page.locator("#ticket-state")).to_have_text("In the pre-queue")


def test_at_the_opening_pages_reload_the_drop_and_its_line_spread_over_seconds_not_in_one_tick(
        floodgate, admin_token, buyer_page):
    # Every open page reloaded the drop and its line in the same 250 ms tick as the opening passed:
    # the whole crowd on checkout's and inventory's APIs at once, the admitted buyers' orders queued
    # behind. Each page now waits a moment drawn from the next 3 s (this page draws 0.9 of it).
    page = buyer_page
    page.add_init_script("Math.random = () => 0.9")
    page.clock.install()
    drop = schedule_drop(floodgate, admin_token, opens_in=120)
    # the page counts its own reads of the line as it makes them: read back at once, with no
    # wait for Playwright to hand over the page's request events
    page.add_init_script("""(() => {
      window.lineReads = 0;
      const fetched = window.fetch;
      window.fetch = (resource, init) => {
        if (String(resource).endsWith("/drops/%s/line")) window.lineReads += 1;
        return fetched(resource, init);
      };
    })()""" % drop["id"])
    open_drop_page(page, floodgate, drop)
    expect(page.locator("#line-summary")).to_have_text("This drop has no line: order as soon as it opens.")
    # the page's clock is the test's: the opening, on it (the page keeps the server's offset)
    behind = datetime.now(timezone.utc).timestamp() * 1000 - page.evaluate("Date.now()")
    opening = datetime.fromisoformat(drop["opens_at"]).timestamp() * 1000 - behind
    page.clock.pause_at((opening - 1000) / 1000)  # a number is seconds here; Date.now() says milliseconds
    # the page's reads so far, counted as each is sent: as it opened, then every 30 s before the
    # opening (for a line set up later)
    line_reads = page.evaluate("window.lineReads")
    page.clock.run_for(1500)  # the opening passes
    expect(page.locator("#countdown")).to_have_text(re.compile(r"^Open now"))
    assert page.evaluate("window.lineReads") == line_reads  # not in the opening's tick
    page.clock.run_for(1500)  # 2 s after the opening
    assert page.evaluate("window.lineReads") == line_reads
    page.clock.run_for(1000)  # 3 s after: read once, 2.7 s after the opening
    assert page.evaluate("window.lineReads") == line_reads + 1


def test_a_waiting_buyer_is_told_when_the_draw_is_and_that_the_line_is_paused(floodgate, admin_token, buyer_page):
    # The page spoke of the drop's opening only, while the pre-queue ends when the line opens,
    # which may be earlier; and a paused line went on saying "Waiting", with an estimate that
    # never came down.
    page = buyer_page
    drop = schedule_drop(floodgate, admin_token, opens_in=600)
    draw_at = (datetime.now(timezone.utc) + timedelta(seconds=OPENS_IN_SECONDS)).isoformat()
    put_line_on(floodgate, admin_token, drop, opens_at=draw_at)
    open_drop_page(page, floodgate, drop)
    expect(page.locator("#line-summary")).to_contain_text("Places are drawn at")
    sign_up(page)
    page.get_by_role("button", name="Join the line").click()
    expect(page.locator("#ticket-state")).to_have_text("In the pre-queue")
    expect(page.locator("#line-news")).to_contain_text("drawn at random when the line opens, at")

    # the line opens 10 minutes before the drop: places drawn, nobody admitted before the sale
    expect(page.locator("#ticket-state")).to_have_text("Waiting", timeout=(OPENS_IN_SECONDS + 15) * 1000)
    change_line(floodgate, admin_token, drop, "paused")
    expect(page.locator("#ticket-state")).to_have_text("Waiting: the line is paused", timeout=15_000)
    expect(page.locator("#line-news")).to_contain_text("The line is paused for a moment: you keep your place")
    expect(page.locator("#ticket-position")).to_have_text("1")
    change_line(floodgate, admin_token, drop, "open")
    expect(page.locator("#ticket-state")).to_have_text("Waiting", timeout=15_000)
    assert page.script_problems == []


EDGE_STALE = '{"type": "https://floodgate.dev/problems/service-unavailable", "title": "Service unavailable", ' \
             '"status": 503, "detail": "The copy of the lines is stale: the database is not answering."}'


def test_while_the_lines_edge_fails_a_waiting_page_backs_off_and_leaves_checkout_alone(
        floodgate, admin_token, buyer_page):
    # Each failed poll of the edge once sent the page to checkout's API at once (its own ticket,
    # a database read): a crowd of waiting pages moved onto checkout just as the database struggled.
    page = buyer_page
    page.clock.install()  # the page's timers on a clock the test moves
    in_the_pre_queue(page, floodgate, admin_token, opens_in=600)

    edge = floodgate.stack.url("line-status")
    edge_polls, checkout_reads = [], []
    page.on("request", lambda request: edge_polls.append(request.url)
            if request.method == "GET" and request.url.startswith(f"{edge}/drops/")
            else checkout_reads.append(request.url) if request.url.endswith("/line/tickets/mine") else None)
    page.route(f"{edge}/drops/**", lambda route: route.fulfill(
        status=503, body=EDGE_STALE, content_type="application/problem+json",
        headers={"Retry-After": "2", "Access-Control-Allow-Origin": "*"}))
    page.clock.pause_at(page.evaluate("Date.now()") + 1000)
    for _ in range(240):  # two minutes of the page's time
        page.clock.run_for(500)
    assert checkout_reads == []
    assert 3 <= len(edge_polls) <= 12, edge_polls  # backing off: 2, 4, 8, 16, then every 30 s at most, jittered

    page.unroute(f"{edge}/drops/**")
    answered = len(edge_polls)
    for _ in range(80):
        page.clock.run_for(500)
        if len(edge_polls) > answered:
            break
    assert len(edge_polls) > answered  # the edge is polled again once it answers
    expect(page.locator("#ticket-state")).to_have_text("In the pre-queue")
    assert checkout_reads == []


def test_a_page_told_sold_out_keeps_following_the_line_and_lets_its_buyer_in_when_a_unit_comes_back(
        floodgate, admin_token, buyer_page):
    # "Sold out" is not final: an unpaid hold that runs out, or a cancelled order, brings its unit
    # back and the line admits the next buyer. The page once stopped polling at "sold out", and
    # the pass it was given waited unseen until it expired.
    page = buyer_page
    drop = schedule_drop(floodgate, admin_token, opens_in=OPENS_IN_SECONDS, quantity=1)
    put_line_on(floodgate, admin_token, drop)
    first_email, first = floodgate.register()
    assert floodgate.join_line(first, drop["id"]).status_code == 201  # the pre-queue: ahead of the page's buyer
    open_drop_page(page, floodgate, drop)
    sign_up(page)
    expect(page.locator("#countdown")).to_have_text(re.compile(r"^Open now"), timeout=(OPENS_IN_SECONDS + 5) * 1000)
    page.get_by_role("button", name="Join the line").click()  # after the opening: behind the pre-queue

    pass_ = poll(lambda: floodgate.my_ticket(first, drop["id"]).get("pass"), timeout=30, what="the first buyer's pass")
    placed = floodgate.place_order(first, drop["id"], line_pass=pass_)
    assert placed.status_code == 201, placed.text
    expect(page.locator("#ticket-state")).to_have_text("Sold out", timeout=30_000)
    expect(page.locator("#line-news")).to_contain_text("Keep this page open")

    # "Closed" is not final either: an admin may open the line again (the window stretched), and
    # it goes on from where it stopped. The page once stopped polling at "closed", and the passes
    # the reopened line gave went to pages that never heard.
    change_line(floodgate, admin_token, drop, "closed")
    expect(page.locator("#ticket-state")).to_have_text("Line closed", timeout=30_000)
    change_line(floodgate, admin_token, drop, "open")
    expect(page.locator("#ticket-state")).to_have_text("Sold out", timeout=45_000)

    cancelled = floodgate.http.post(f"{floodgate.stack.url('checkout')}/orders/{placed.json()['id']}/cancel",
                                    headers={"Authorization": f"Bearer {first}"})
    assert cancelled.status_code == 200, cancelled.text
    expect(page.locator("#ticket-state")).to_have_text("Admitted", timeout=45_000)
    expect(page.locator("#line-news")).to_contain_text("It's your turn!")
    # the pass opens the form, whatever the page's older copies of the drop and the line say
    expect(page.locator("#order-fields")).to_be_enabled()
    expect(page.locator("#order-gate")).to_have_text("It's your turn: order now.")


def on_the_pages_clock(page: Page, moment: datetime) -> float:
    """`moment` (the server's time) on the page's clock, installed and flowing: in seconds, as
    `page.clock.pause_at` takes a number."""
    behind = datetime.now(timezone.utc).timestamp() - page.evaluate("Date.now()") / 1000
    return moment.timestamp() - behind


def test_at_the_drops_closing_the_order_button_is_disabled_at_once(floodgate, admin_token, buyer_page):
    """The form followed the drop's state as last read (every 10 s while it is open): for up to
    10 s after the closing, "Place order" stayed enabled, and its order was refused."""
    page = buyer_page
    page.clock.install()  # time flows until the test pauses it
    closing = datetime.now(timezone.utc) + timedelta(seconds=60)
    drop = schedule_drop(floodgate, admin_token, opens_in=-1, closes_at=closing.isoformat())
    open_drop_page(page, floodgate, drop)
    sign_up(page)
    fill_in_toronto(page, "CA")
    place = page.get_by_role("button", name="Place order")

    page.clock.pause_at(on_the_pages_clock(page, closing - timedelta(seconds=1)))
    expect(place).to_be_enabled()
    page.clock.run_for(3000)  # the closing passes; the drop's next read is seconds away
    expect(place).to_be_disabled()
    expect(page.locator("#order-gate")).to_have_text("The drop is closed.")


def test_at_its_pass_s_expiry_the_order_button_is_disabled_at_once(floodgate, admin_token, buyer_page):
    """The form followed the ticket as last read: for up to a poll's interval after the pass ran
    out, "Place order" stayed enabled, and its order was refused."""
    page = buyer_page
    page.clock.install()  # time flows until the test pauses it
    tickets = []  # the ticket as the page read it, from the line's edge or from checkout
    page.on("response", lambda response: tickets.append(response)
            if response.ok and response.request.method == "GET" and "/line/tickets/" in response.url else None)
    in_the_pre_queue(page, floodgate, admin_token, opens_in=OPENS_IN_SECONDS)
    expect(page.locator("#ticket-state")).to_have_text("Admitted", timeout=30_000)
    fill_in_toronto(page, "CA")
    expires = next(datetime.fromisoformat(answer["pass_expires_at"]) for answer in
                   reversed([ticket.json() for ticket in tickets]) if answer.get("pass_expires_at"))
    place = page.get_by_role("button", name="Place order")

    page.clock.pause_at(on_the_pages_clock(page, expires - timedelta(seconds=1)))
    expect(place).to_be_enabled()
    page.clock.run_for(3000)  # the pass runs out; the ticket's next read is seconds away
    expect(place).to_be_disabled()
    expect(page.locator("#order-gate")).to_have_text("Your pass expired before you ordered.")
    expect(page.locator("#line-news")).to_have_text("Your pass has expired.")
