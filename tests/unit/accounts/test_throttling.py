"""Sign-in throttling: per account and per client, doubling waits, nothing revealed."""
from datetime import datetime, timedelta, timezone

import pytest

from services.accounts import handlers
from services.accounts.errors import InvalidCredentials, SignInThrottled
from services.accounts.schemas import RegistrationSchema, SessionRequestSchema
from services.accounts.throttle import BackoffPolicy, SignInThrottle

POLICY = BackoffPolicy(free_failures=3, base=timedelta(seconds=1), ceiling=timedelta(seconds=60), window=timedelta(minutes=15))
THROTTLE = SignInThrottle(per_account=POLICY, per_client=BackoffPolicy(10, timedelta(seconds=1), timedelta(seconds=60), timedelta(minutes=15)))


class Clock:
    def __init__(self):
        self.now = datetime(2026, 11, 22, 15, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(handlers, "utc_now", clock)
    return clock


@pytest.fixture
def accounts(uow, passwords):
    for email in ("ann@example.com", "bob@example.com"):
        handlers.register_account(RegistrationSchema().load({"email": email, "password": "correct horse battery"}), uow, passwords)


def attempt(uow, passwords, issuer, email, password, client="198.51.100.7"):
    cmd = SessionRequestSchema().load({"email": email, "password": password})
    cmd["client"] = client
    return handlers.open_session(cmd, uow, passwords, issuer, THROTTLE)


def test_the_wait_doubles_after_the_free_failures_up_to_a_ceiling():
    assert [POLICY.wait_after(n) for n in (1, 2)] == [None, None]
    assert [POLICY.wait_after(n).total_seconds() for n in (3, 4, 5, 6, 20, 10_000)] == [1, 2, 4, 8, 60, 60]


def test_an_account_with_too_many_failures_is_refused_even_with_the_right_password_until_the_wait_ends(uow, passwords, issuer, clock, accounts):
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            attempt(uow, passwords, issuer, "ann@example.com", "wrong password!")

    with pytest.raises(SignInThrottled) as throttled:
        attempt(uow, passwords, issuer, "ann@example.com", "correct horse battery")
    assert throttled.value.status == 429 and throttled.value.headers["Retry-After"] == "1"

    # Another account from the same client is not slowed.
    assert attempt(uow, passwords, issuer, "bob@example.com", "correct horse battery").token

    clock.now += timedelta(seconds=1)
    assert attempt(uow, passwords, issuer, "ann@example.com", "correct horse battery").token
    assert "account:ann@example.com" not in uow.login_throttles.rows  # success clears the account's count


def test_each_failure_past_the_free_ones_doubles_the_wait(uow, passwords, issuer, clock, accounts):
    waits = []
    for _ in range(6):
        try:
            attempt(uow, passwords, issuer, "ann@example.com", "wrong password!")
        except InvalidCredentials:
            pass
        blocked = uow.login_throttles.rows["account:ann@example.com"]["blocked_until"]
        waits.append((blocked - clock.now).total_seconds() if blocked else 0)
        clock.now += timedelta(seconds=waits[-1])

    assert waits == [0, 0, 1, 2, 4, 8]


def test_unknown_emails_are_throttled_exactly_like_known_ones(uow, passwords, issuer, clock, accounts):
    answers = {}
    for email in ("ann@example.com", "nobody@example.com"):
        for _ in range(3):
            with pytest.raises(InvalidCredentials):
                attempt(uow, passwords, issuer, email, "wrong password!")
        with pytest.raises(SignInThrottled) as throttled:
            attempt(uow, passwords, issuer, email, "wrong password!")
        answers[email] = (throttled.value.to_dict(), throttled.value.headers)

    assert answers["ann@example.com"] == answers["nobody@example.com"]


def test_a_client_spraying_many_accounts_is_throttled_as_a_client(uow, passwords, issuer, clock, accounts):
    for n in range(10):
        with pytest.raises(InvalidCredentials):
            attempt(uow, passwords, issuer, f"guess{n}@example.com", "wrong password!")

    with pytest.raises(SignInThrottled):
        attempt(uow, passwords, issuer, "bob@example.com", "correct horse battery")
    # The same account from another client still signs in.
    assert attempt(uow, passwords, issuer, "bob@example.com", "correct horse battery", client="203.0.113.9").token


def test_failures_older_than_the_window_are_forgotten(uow, passwords, issuer, clock, accounts):
    for _ in range(2):
        with pytest.raises(InvalidCredentials):
            attempt(uow, passwords, issuer, "ann@example.com", "wrong password!")
    clock.now += timedelta(minutes=16)

    with pytest.raises(InvalidCredentials):
        attempt(uow, passwords, issuer, "ann@example.com", "wrong password!")

    assert uow.login_throttles.rows["account:ann@example.com"]["failures"] == 1


def test_over_http_a_throttled_sign_in_is_a_429_problem_with_retry_after(client, uow, accounts):
    for _ in range(5):
        client.post("/sessions", json={"email": "ann@example.com", "password": "wrong password!"})

    response = client.post("/sessions", json={"email": "ann@example.com", "password": "correct horse battery"})

    assert response.status_code == 429 and response.mimetype == "application/problem+json"
    assert int(response.headers["Retry-After"]) >= 1
    assert "ann" not in response.get_data(as_text=True)


def test_behind_a_trusted_proxy_the_forwarded_client_is_the_one_throttled(monkeypatch, uow, accounts):
    from services.accounts import api
    from services.accounts.app import create_app
    from services.accounts.config import Settings

    monkeypatch.setattr(api, "unit_of_work", lambda: uow)
    app = create_app(Settings(service_name="accounts", database_url="postgresql+psycopg://nobody@127.0.0.1:1/unused", trusted_proxy_hops=1))
    client = app.test_client()

    client.post("/sessions", json={"email": "ann@example.com", "password": "wrong password!"},
                headers={"X-Forwarded-For": "198.51.100.23"}, environ_base={"REMOTE_ADDR": "10.0.0.1"})

    assert "client:198.51.100.23" in uow.login_throttles.rows and "client:10.0.0.1" not in uow.login_throttles.rows


def test_over_http_an_email_that_lower_cases_past_254_characters_is_a_422_problem_and_counts_nothing(client, uow, accounts):
    # "İ" lower-cases to two characters: 254 of them would make a key too long for its column.
    response = client.post("/sessions", json={"email": "İ" * 254, "password": "wrong password!"})

    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    assert "email" in response.get_json()["errors"]
    assert uow.login_throttles.rows == {}
