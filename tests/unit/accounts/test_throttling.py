"""Sign-in throttling: per account and client, per account, per client; doubling waits, nothing revealed."""
import threading
from datetime import timedelta

import pytest

from services.accounts import handlers
from services.accounts.errors import InvalidCredentials, SignInBusy, SignInThrottled
from services.accounts.schemas import RegistrationSchema, SessionRequestSchema
from services.accounts.throttle import BackoffPolicy, SignInThrottle, client_key

POLICY = BackoffPolicy(free_failures=3, base=timedelta(seconds=1), ceiling=timedelta(seconds=60), window=timedelta(minutes=15))
# the account from every client: more free failures, a short ceiling
ACCOUNT_POLICY = BackoffPolicy(free_failures=8, base=timedelta(seconds=1), ceiling=timedelta(seconds=4), window=timedelta(minutes=15))
THROTTLE = SignInThrottle(per_account_and_client=POLICY, per_account=ACCOUNT_POLICY,
                          per_client=BackoffPolicy(10, timedelta(seconds=1), timedelta(seconds=60), timedelta(minutes=15)))


@pytest.fixture
def accounts(uow, passwords):
    for email in ("ann@example.com", "bob@example.com"):
        handlers.register_account(RegistrationSchema().load({"email": email, "password": "correct horse battery"}), uow, passwords)


CLIENT = "198.51.100.7"
ANN_HERE = f"client:{CLIENT}|account:ann@example.com"  # ann's failures from CLIENT
ANN_ANYWHERE = "account:ann@example.com"  # ann's failures from every client


def attempt(uow, passwords, issuer, email, password, client=CLIENT):
    cmd = SessionRequestSchema().load({"email": email, "password": password})
    cmd["client"] = client
    return handlers.open_session(cmd, uow, passwords, issuer, THROTTLE)


def test_the_wait_doubles_after_the_free_failures_up_to_a_ceiling():
    assert [POLICY.wait_after(n) for n in (1, 2)] == [None, None]
    assert [POLICY.wait_after(n).total_seconds() for n in (3, 4, 5, 6, 20, 10_000)] == [1, 2, 4, 8, 60, 60]


def test_an_account_with_too_many_failures_from_a_client_is_refused_there_even_with_the_right_password_until_the_wait_ends(uow, passwords, issuer, clock, accounts):
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
    assert ANN_HERE not in uow.login_throttles.rows  # success clears the account's count from that client
    # ... but not the account's count from every client: the owner signing in gives guessers
    # spread over many clients no fresh allowance
    assert uow.login_throttles.rows[ANN_ANYWHERE]["failures"] == 3


def test_a_guesser_keeping_an_account_throttled_from_their_client_never_keeps_the_owner_out_from_theirs(uow, passwords, issuer, clock, accounts):
    guesser = "203.0.113.66"
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            attempt(uow, passwords, issuer, "ann@example.com", "wrong password!", client=guesser)

    # The guesser tries again each time the wait ends: their own waits grow ...
    waits = []
    for _ in range(4):
        with pytest.raises(SignInThrottled) as throttled:
            attempt(uow, passwords, issuer, "ann@example.com", "wrong password!", client=guesser)
        waits.append(int(throttled.value.headers["Retry-After"]))
        clock.now += timedelta(seconds=waits[-1])
        with pytest.raises(InvalidCredentials):
            attempt(uow, passwords, issuer, "ann@example.com", "wrong password!", client=guesser)
        # ... while the owner, from their own client, signs in every time.
        assert attempt(uow, passwords, issuer, "ann@example.com", "correct horse battery").token

    assert waits == [1, 2, 4, 8]
    with pytest.raises(SignInThrottled):
        attempt(uow, passwords, issuer, "ann@example.com", "correct horse battery", client=guesser)


def test_each_failure_past_the_free_ones_doubles_the_wait(uow, passwords, issuer, clock, accounts):
    waits = []
    for _ in range(6):
        try:
            attempt(uow, passwords, issuer, "ann@example.com", "wrong password!")
        except InvalidCredentials:
            pass
        blocked = uow.login_throttles.rows[ANN_HERE]["blocked_until"]
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

    assert uow.login_throttles.rows[ANN_HERE]["failures"] == uow.login_throttles.rows[ANN_ANYWHERE]["failures"] == 1


def test_a_guesser_trying_again_as_each_wait_ends_keeps_the_ceilings_pace_where_the_ceiling_is_the_window(
        uow, passwords, issuer, clock, accounts):
    """The defaults' account-from-one-client key waits at most 15 minutes, its window's length: the
    failures were forgotten as the longest wait ended, and the next guess found the free failures
    and the one-second waits anew."""
    policy = BackoffPolicy(free_failures=3, base=timedelta(seconds=1), ceiling=timedelta(minutes=15),
                           window=timedelta(minutes=15))
    throttle = SignInThrottle(per_account_and_client=policy, per_account=policy,
                              per_client=BackoffPolicy(1000, timedelta(seconds=1), timedelta(seconds=1), timedelta(minutes=15)))

    cmd = SessionRequestSchema().load({"email": "ann@example.com", "password": "wrong password!"})
    cmd["client"] = CLIENT
    checked, hour_ends = 0, clock.now + timedelta(hours=1)
    while clock.now < hour_ends:  # a guess; when refused, the next as the wait ends
        try:
            handlers.open_session(cmd, uow, passwords, issuer, throttle)
        except InvalidCredentials:
            checked += 1
            clock.now += timedelta(milliseconds=1)
        except SignInThrottled as refused:
            clock.now += timedelta(seconds=int(refused.headers["Retry-After"]), milliseconds=1)
    # 3 free, then waits of 1 s doubling to 512 s (1,023 s in all), then 15 minutes: 15 in the
    # hour. Forgotten as the first 15-minute wait ended, the guesser had about 27.
    assert checked == 15


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


class GatedPasswords:
    """The real password checks, each held at a gate the test opens: attempts in flight pile up
    there as they do waiting for argon2's hashing slots."""

    def __init__(self, passwords):
        self.passwords = passwords
        self.gate = threading.Event()
        self.changed = threading.Condition()
        self.checking = []  # the passwords that reached a check
        self.answers = []  # the attempts answered, by outcome

    def verify(self, password_hash, password):
        with self.changed:
            self.checking.append(password)
            self.changed.notify_all()
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        return self.passwords.verify(password_hash, password)

    def hash(self, password):
        return self.passwords.hash(password)

    def needs_rehash(self, password_hash):
        return self.passwords.needs_rehash(password_hash)

    def answered(self, outcome):
        with self.changed:
            self.answers.append(outcome)
            self.changed.notify_all()

    def wait_until(self, condition):
        with self.changed:
            assert self.changed.wait_for(condition, timeout=30)


def in_flight(uow, gated, issuer, email, password):
    """A sign-in on its own thread; its outcome (the tokens or the error) lands in gated.answers."""

    def sign_in():
        try:
            gated.answered(attempt(uow, gated, issuer, email, password))
        except (InvalidCredentials, SignInThrottled) as error:
            gated.answered(error)

    thread = threading.Thread(target=sign_in, daemon=True)
    thread.start()
    return thread


def all_at_once(uow, gated, issuer, guesses):
    """Fire `guesses` ((email, password) pairs, or (email, password, client)) together; open the
    gate only once each is either waiting for its password check or answered, so none is counted
    late because it ran late."""
    start = threading.Barrier(len(guesses))

    def together(email, password, client=CLIENT):
        start.wait(timeout=30)
        try:
            gated.answered(attempt(uow, gated, issuer, email, password, client))
        except (InvalidCredentials, SignInThrottled) as error:
            gated.answered(error)

    threads = [threading.Thread(target=together, args=guess, daemon=True) for guess in guesses]
    for thread in threads:
        thread.start()
    gated.wait_until(lambda: len(gated.checking) + len(gated.answers) == len(guesses))
    gated.gate.set()
    for thread in threads:
        thread.join(timeout=30)
    return [type(answer) for answer in gated.answers]


def test_twenty_wrong_passwords_at_once_get_no_more_checks_than_the_free_failures(uow, passwords, issuer, clock, accounts):
    gated = GatedPasswords(passwords)

    outcomes = all_at_once(uow, gated, issuer, [("ann@example.com", f"wrong guess {n}") for n in range(20)])

    assert len(gated.checking) == POLICY.free_failures
    assert sorted(outcomes, key=lambda kind: kind.__name__) == [InvalidCredentials] * 3 + [SignInThrottled] * 17
    # refused attempts count nothing
    assert uow.login_throttles.rows[ANN_HERE]["failures"] == uow.login_throttles.rows[ANN_ANYWHERE]["failures"] == 3


def test_twenty_wrong_passwords_at_once_from_twenty_clients_get_no_more_checks_than_the_accounts_free_failures(uow, passwords, issuer, clock, accounts):
    gated = GatedPasswords(passwords)

    outcomes = all_at_once(uow, gated, issuer, [("ann@example.com", "wrong password!", f"198.51.100.{n}") for n in range(20)])

    # Each client's own key is fresh: the account's loose key from every client is what holds.
    assert len(gated.checking) == ACCOUNT_POLICY.free_failures
    assert outcomes.count(InvalidCredentials) == 8 and outcomes.count(SignInThrottled) == 12
    assert uow.login_throttles.rows[ANN_ANYWHERE]["failures"] == 8
    # Its wait is short: the owner, caught behind it from a client of their own, signs in when it ends.
    with pytest.raises(SignInThrottled) as throttled:
        attempt(uow, passwords, issuer, "ann@example.com", "correct horse battery", client="203.0.113.9")
    assert int(throttled.value.headers["Retry-After"]) == 1
    clock.now += timedelta(seconds=1)
    assert attempt(uow, passwords, issuer, "ann@example.com", "correct horse battery", client="203.0.113.9").token


def test_the_accounts_wait_from_every_client_doubles_up_to_its_short_ceiling(uow, passwords, issuer, clock, accounts):
    waits = []
    for n in range(12):
        try:
            attempt(uow, passwords, issuer, "ann@example.com", "wrong password!", client=f"198.51.100.{n}")
        except InvalidCredentials:
            pass
        blocked = uow.login_throttles.rows[ANN_ANYWHERE]["blocked_until"]
        waits.append((blocked - clock.now).total_seconds() if blocked else 0)
        clock.now += timedelta(seconds=waits[-1])

    assert waits == [0] * 7 + [1, 2, 4, 4, 4]


def test_wrong_passwords_at_once_for_many_emails_each_count_against_the_client_once_checked(uow, passwords, issuer, clock, accounts):
    # The client's key counts verdicts, not attempts: all twenty are checked (the hashing slots
    # bound how many at a time), each counts, and the client then waits as long as twenty
    # failures call for.
    gated = GatedPasswords(passwords)

    outcomes = all_at_once(uow, gated, issuer, [(f"spray{n}@example.com", "wrong password!") for n in range(20)])

    assert outcomes == [InvalidCredentials] * 20
    row = uow.login_throttles.rows[f"client:{CLIENT}"]
    assert row["failures"] == 20 and row["blocked_until"] - clock.now == THROTTLE.per_client.wait_after(20)
    with pytest.raises(SignInThrottled):
        attempt(uow, passwords, issuer, "bob@example.com", "correct horse battery")


def test_right_passwords_at_once_from_a_client_one_failure_short_of_its_limit_all_sign_in(uow, passwords, issuer, clock):
    # Carrier NAT on drop day: one address, a few typos already, then everyone signs in at once.
    emails = [f"buyer{n}@example.com" for n in range(6)]
    for email in emails:
        handlers.register_account(RegistrationSchema().load({"email": email, "password": "correct horse battery"}), uow, passwords)
    for n in range(THROTTLE.per_client.free_failures - 1):
        with pytest.raises(InvalidCredentials):
            attempt(uow, passwords, issuer, f"typo{n}@example.com", "wrong password!")
    gated = GatedPasswords(passwords)

    outcomes = all_at_once(uow, gated, issuer, [(email, "correct horse battery") for email in emails])

    assert [kind.__name__ for kind in outcomes] == ["SessionTokens"] * 6
    assert uow.login_throttles.rows[f"client:{CLIENT}"]["failures"] == THROTTLE.per_client.free_failures - 1
    assert uow.login_throttles.blocked_until([f"client:{CLIENT}"], clock.now) is None


def test_a_right_password_signs_in_although_a_wrong_one_at_the_same_time_used_the_last_free_failure(uow, passwords, issuer, clock, accounts):
    with pytest.raises(InvalidCredentials):
        attempt(uow, passwords, issuer, "ann@example.com", "wrong password!")
    gated = GatedPasswords(passwords)

    owner = in_flight(uow, gated, issuer, "ann@example.com", "correct horse battery")
    gated.wait_until(lambda: len(gated.checking) == 1)
    guesser = in_flight(uow, gated, issuer, "ann@example.com", "a guess at it")
    gated.wait_until(lambda: len(gated.checking) == 2)
    # Counting the owner's attempt, the guess was the third failure: the account now waits ...
    with pytest.raises(SignInThrottled):
        attempt(uow, passwords, issuer, "ann@example.com", "another guess")
    gated.gate.set()
    owner.join(timeout=30), guesser.join(timeout=30)

    # ... but the owner, already being checked, is not refused for it.
    assert sorted(type(answer).__name__ for answer in gated.answers) == ["InvalidCredentials", "SessionTokens"]
    assert ANN_HERE not in uow.login_throttles.rows
    # the two wrong ones, not the owner's
    assert uow.login_throttles.rows[f"client:{CLIENT}"]["failures"] == uow.login_throttles.rows[ANN_ANYWHERE]["failures"] == 2


def test_right_passwords_from_one_client_never_add_up_to_its_limit(uow, passwords, issuer, clock, accounts):
    for n in range(9):
        with pytest.raises(InvalidCredentials):
            attempt(uow, passwords, issuer, f"typo{n}@example.com", "wrong password!")

    for _ in range(3):
        for email in ("ann@example.com", "bob@example.com"):
            assert attempt(uow, passwords, issuer, email, "correct horse battery").token

    # The client's ten free failures: nine wrong ones, none for the six right ones, this one.
    with pytest.raises(InvalidCredentials):
        attempt(uow, passwords, issuer, "typo@example.com", "wrong password!")
    with pytest.raises(SignInThrottled):
        attempt(uow, passwords, issuer, "bob@example.com", "correct horse battery")


def test_a_key_refused_just_after_the_check_costs_no_hashing_and_counts_nothing_against_the_other(uow, passwords, issuer, clock, accounts, monkeypatch):
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            attempt(uow, passwords, issuer, "ann@example.com", "wrong password!")
    # Another worker's failure blocked ann from this client between this attempt's read and its count.
    monkeypatch.setattr(uow.login_throttles, "blocked_until", lambda keys, now: None)
    gated = GatedPasswords(passwords)
    gated.gate.set()

    with pytest.raises(SignInThrottled):
        attempt(uow, gated, issuer, "ann@example.com", "correct horse battery")

    assert gated.checking == []
    assert [uow.login_throttles.rows[key]["failures"] for key in (ANN_HERE, ANN_ANYWHERE, f"client:{CLIENT}")] == [3, 3, 3]


class NoHashingSlot:
    def verify(self, password_hash, password):
        raise SignInBusy("Too many people are signing in right now; try again in a moment.")


def test_attempts_turned_away_for_want_of_a_hashing_slot_count_as_no_failure(uow, passwords, issuer, clock, accounts):
    # A login storm on drop day: the owner retrying a busy sign-in must not lock themselves out.
    for _ in range(12):
        with pytest.raises(SignInBusy):
            attempt(uow, NoHashingSlot(), issuer, "ann@example.com", "correct horse battery")

    assert attempt(uow, passwords, issuer, "ann@example.com", "correct horse battery").token
    assert uow.login_throttles.rows.get(f"client:{CLIENT}", {"failures": 0})["failures"] == 0


@pytest.mark.parametrize("address, counted_as", [
    ("198.51.100.7", "198.51.100.7"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.7", "198.51.100.7"),  # an IPv4 client seen through an IPv6 socket
    ("not|an address", "not_an address"),
    (None, "unknown"),
])
def test_an_ipv6_client_is_counted_by_its_64_and_an_ipv4_one_by_its_address(address, counted_as):
    assert client_key(address) == counted_as


def test_no_email_typed_at_sign_in_counts_against_another_accounts_key(uow, passwords, issuer, clock, accounts):
    # The email is whatever is typed: one spelling the owner's key from their client must stay
    # a key of its own, however many guesses are made at it from however many clients.
    forged = f"ann@example.com|client:{CLIENT}"
    for n in range(ACCOUNT_POLICY.free_failures):
        with pytest.raises(InvalidCredentials):
            attempt(uow, passwords, issuer, forged, "wrong password!", client=f"203.0.113.{n}")
    assert uow.login_throttles.blocked_until([f"account:{forged}"], clock.now) is not None

    assert attempt(uow, passwords, issuer, "ann@example.com", "correct horse battery").token


def test_every_key_of_the_longest_email_from_the_longest_address_fits_its_column():
    from services.accounts.models import LoginThrottle
    from services.accounts.throttle import RegistrationThrottle

    clients = ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "not an address " * 9)
    keys = [key for client in clients for key in THROTTLE.keys("a" * 254, client)]
    keys += [THROTTLE.clients_key(client) for client in clients]
    keys += [RegistrationThrottle(POLICY).key(client) for client in clients]

    assert max(len(key) for key in keys) <= LoginThrottle.__table__.c.key.type.length


def test_an_ipv6_client_rotating_its_addresses_within_its_64_is_one_client(uow, passwords, issuer, clock, accounts):
    # A subscriber is given a whole /64: 2**64 addresses to try from, each one a click away.
    for n in range(3):
        with pytest.raises(InvalidCredentials):
            attempt(uow, passwords, issuer, "ann@example.com", "wrong password!", client=f"2001:db8:1:2::{n + 1:x}")

    with pytest.raises(SignInThrottled):
        attempt(uow, passwords, issuer, "ann@example.com", "correct horse battery", client="2001:db8:1:2:ffff:ffff:ffff:fffe")
    # Another network is another client.
    assert attempt(uow, passwords, issuer, "ann@example.com", "correct horse battery", client="2001:db8:1:3::1").token
    assert uow.login_throttles.rows["client:2001:db8:1:2::/64|account:ann@example.com"]["failures"] == 3
    assert uow.login_throttles.rows["client:2001:db8:1:2::/64"]["failures"] == 3


def test_over_http_an_ipv6_client_is_throttled_by_its_64(client, uow, accounts):
    for n in range(5):
        client.post("/sessions", json={"email": "ann@example.com", "password": "wrong password!"},
                    environ_base={"REMOTE_ADDR": f"2001:db8:7:7::{n + 1}"})

    rotated = client.post("/sessions", json={"email": "ann@example.com", "password": "correct horse battery"},
                          environ_base={"REMOTE_ADDR": "2001:db8:7:7:1234::1"})
    elsewhere = client.post("/sessions", json={"email": "ann@example.com", "password": "correct horse battery"},
                            environ_base={"REMOTE_ADDR": "2001:db8:7:8::1"})

    assert rotated.status_code == 429 and elsewhere.status_code == 201
