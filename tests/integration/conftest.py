"""Integration fixtures: real gunicorn processes, real PostgreSQL, RabbitMQ and SMTP."""
from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Mapping

import pytest

from devtools.client import Floodgate
from devtools.stack import SERVICES, Infra, Stack, free_ports
from shared.db import drop_database
from tests.integration.infra import provision

PREVIOUS_WEBHOOK_SECRET = "test-only-previous-webhook-secret"  # development value, public

# Fast retries so retry and dead-letter behaviour shows within a test.
TEST_ENV = {
    "RETRY_DELAYS_MS": "200,500",
    "MAX_ATTEMPTS": "3",
    # a refund the payment provider cannot take: retried 2 s of tiers, not a day, then parked
    "PARTNER_DOWN_SECONDS": "2",
    # drops of a few seconds' window let buyers in to their last seconds
    "LINE_MIN_ORDER_SECONDS": "1",
    "JWKS_MIN_REFRESH_SECONDS": "1",
    "HOLD_RELEASE_GRACE_SECONDS": "1",
    "WEB_CONCURRENCY": "2",
    "LOG_LEVEL": "INFO",
    # every test buyer registers and joins the waiting room from 127.0.0.1 (the limits have their
    # own tests, which read the setting)
    "LINE_JOINS_PER_CLIENT_PER_MINUTE": "100000",
    "REGISTRATION_CLIENT_FREE_ATTEMPTS": "100000",
    # email goes at once: the tests keep this machine busy, and the wait for a quieter machine
    # (up to 30 s) would only slow them; test_notifications turns it on where it is the subject
    "DEFER_WHILE_BUSY_SECONDS": "0",
    # a pre-queue over this is placed over several admitter turns: a test line of thousands shows it
    "LINE_POSITIONS_PER_TURN": "1000",
    # a secret rotation in progress: webhooks signed with the one before are still taken
    "PAYMENT_WEBHOOK_PREVIOUS_SECRET": PREVIOUS_WEBHOOK_SECRET,
}


@pytest.fixture(scope="session")
def infra():
    provisioned = provision()
    yield provisioned
    provisioned.cleanup()


@contextlib.contextmanager
def running_stack(postgres_url: str, amqp_url: str, var_dir: Path, pooler_url: str = "",
                  extra_env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """A whole stack in its own databases and on its own ports, migrated, started and ready;
    stopped and its databases dropped afterwards. With `pooler_url` (a PgBouncer in front of
    `postgres_url`) the services' processes go through the pooler; migrations go straight.
    `extra_env` adds to (or overrides) TEST_ENV in every process."""
    prefix = f"fgtest_{uuid.uuid4().hex[:8]}"
    stack = Stack(
        infra=Infra(postgres_url=postgres_url, amqp_url=amqp_url, database_prefix=prefix, pooler_url=pooler_url),
        var_dir=var_dir,
        ports=free_ports(),
        extra_env={**TEST_ENV, **(extra_env or {})},
    )
    stack.migrate()
    stack.start_all()
    try:
        stack.wait_until_ready()
        yield stack
    finally:
        stack.stop_all()
        for service in SERVICES:
            drop_database(stack.infra.database_url(service))


@pytest.fixture(scope="session")
def stack(infra, tmp_path_factory):
    with running_stack(infra.postgres_url, infra.amqp_url, Path(tmp_path_factory.mktemp("stack"))) as stack:
        yield stack


@pytest.fixture(scope="session")
def stack_on(infra, tmp_path_factory) -> Callable[[str], ContextManager[Stack]]:
    """Another stack, on the session's PostgreSQL and the broker(s) of the AMQP URL given."""
    return lambda amqp_url: running_stack(infra.postgres_url, amqp_url, Path(tmp_path_factory.mktemp("stack")))


@pytest.fixture(autouse=True)
def whole_stack(request):
    """A test that stopped a process and failed before restarting it does not take the next
    tests down with it."""
    yield
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").ensure_running()


ARTEFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artefacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Playwright (the drop page's and the control room's
    tests). Never a downloaded browser: without /usr/bin/chromium the test fails, saying so."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"Debian's chromium is not at {CHROMIUM}: `make integration` installs it "
                    "(or `apt-get install chromium`). Never `playwright install`: the test uses the system browser.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def watched_page(browser, name: str, capsys, width: int) -> Iterator:
    """A fresh browser profile's tab (the drop page's and the control room's tests); its
    screenshot is kept under var/test-artefacts/ whatever the outcome. Script errors and
    Content-Security-Policy refusals are collected in `page.script_problems`."""
    context = browser.new_context(viewport={"width": width, "height": 1000}, locale="en-CA",
                                  timezone_id="America/Toronto")
    page = context.new_page()
    page.script_problems = []
    page.on("pageerror", lambda error: page.script_problems.append(f"page error: {error}"))
    page.on("console", lambda message: page.script_problems.append(message.text)
            if "Content Security Policy" in message.text else None)
    try:
        yield page
    finally:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTEFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        context.close()
        with capsys.disabled():
            print(f"\nscreenshot: {path}")


@pytest.fixture(scope="session")
def floodgate(stack) -> Floodgate:
    return Floodgate(stack)


# An access token lasts 15 minutes (accounts' ACCESS_TOKEN_TTL_SECONDS): a test is handed one
# signed in at most this long ago, so it has at least 5 minutes to run.
ADMIN_SIGNED_IN_AGAIN_AFTER_SECONDS = 600


class SessionAdmin:
    """The run's admin, signed in again when its token is `ADMIN_SIGNED_IN_AGAIN_AFTER_SECONDS` old."""

    password = "admin password for tests"

    def __init__(self, floodgate: Floodgate):
        self.floodgate = floodgate
        self.email = f"admin-{uuid.uuid4().hex[:6]}@floodgate.test"
        self._token = floodgate.create_admin(self.email, self.password)
        self._signed_in = time.monotonic()

    def token(self) -> str:
        if time.monotonic() - self._signed_in > ADMIN_SIGNED_IN_AGAIN_AFTER_SECONDS:
            self._token, self._signed_in = self.floodgate.login(self.email, self.password), time.monotonic()
        return self._token


@pytest.fixture(scope="session")
def session_admin(floodgate) -> SessionAdmin:
    return SessionAdmin(floodgate)


@pytest.fixture
def admin_token(session_admin) -> str:
    """An admin's access token with minutes to run. One token for the whole run ran out in a
    run slower than 15 minutes, and every test after it read 401."""
    return session_admin.token()


@pytest.fixture
def buyer(floodgate):
    """A registered, signed-in buyer: (email, token)."""
    return floodgate.register()


@pytest.fixture
def open_drop(floodgate, admin_token):
    """A drop open now with 50 units, one per buyer."""
    return floodgate.create_drop(admin_token, quantity=50)
