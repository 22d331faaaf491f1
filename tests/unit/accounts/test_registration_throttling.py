"""Registration before a drop: counted per client, and never holding more than half the hashing
slots, so a bot sign-up flood leaves buyers able to sign in."""
import threading
from datetime import timedelta

import pytest

from services.accounts import handlers
from services.accounts.config import Settings
from services.accounts.passwords import Passwords
from services.accounts.schemas import RegistrationSchema
from shared.errors import Problem

CLIENT = "198.51.100.7"
FREE = Settings().registration_client_free_attempts


def register_over_http(client, email, address=CLIENT, **headers):
    return client.post("/accounts", json={"email": email, "password": "correct horse battery"},
                       environ_base={"REMOTE_ADDR": address}, headers=headers)


def test_over_http_registrations_from_one_client_past_the_free_ones_are_429_and_email_taken_answers_count_too(client, uow):
    # Probing which emails have accounts spends the allowance as registering does.
    statuses = [register_over_http(client, "ann@example.com").status_code for _ in range(FREE)]

    refused = register_over_http(client, "bob@example.com")

    assert statuses == [201] + [409] * (FREE - 1)
    assert refused.status_code == 429 and refused.mimetype == "application/problem+json"
    assert refused.get_json()["type"].endswith("/too-many-registrations")
    assert refused.headers["Retry-After"] == "1"
    assert uow.accounts.by_email("bob@example.com") is None
    # Another client registers as usual.
    assert register_over_http(client, "bob@example.com", address="203.0.113.9").status_code == 201


def test_behind_a_trusted_proxy_registrations_are_counted_for_the_forwarded_client(monkeypatch, uow):
    from services.accounts import api
    from services.accounts.app import create_app

    monkeypatch.setattr(api, "unit_of_work", lambda: uow)
    app = create_app(Settings(service_name="accounts", database_url="postgresql+psycopg://nobody@127.0.0.1:1/unused", trusted_proxy_hops=1))

    answer = register_over_http(app.test_client(), "ann@example.com", address="10.0.0.1", **{"X-Forwarded-For": "198.51.100.23"})

    assert answer.status_code == 201
    assert "register:198.51.100.23" in uow.login_throttles.rows and "register:10.0.0.1" not in uow.login_throttles.rows


class Untouchable:
    """Fails the test if a refused registration looks anything up or hashes anything."""

    def __init__(self, what):
        self.what = what

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"a refused registration reached {self.what}")


def test_a_refused_registration_looks_up_no_email_hashes_nothing_and_the_wait_doubles_up_to_its_ceiling(uow, passwords, clock, monkeypatch):
    from services.accounts.throttle import BackoffPolicy, RegistrationThrottle

    throttle = RegistrationThrottle(BackoffPolicy(3, timedelta(seconds=1), timedelta(seconds=8), timedelta(minutes=15)))

    def register(email, passwords=passwords):
        cmd = RegistrationSchema().load({"email": email, "password": "correct horse battery"})
        cmd["client"] = CLIENT
        return handlers.register_account(cmd, uow, passwords, throttle=throttle)

    for n in range(3):
        register(f"buyer{n}@example.com")
    waits = []
    for n in range(5):
        with monkeypatch.context() as refused:
            refused.setattr(uow.accounts, "by_email", Untouchable("the email lookup"))
            with pytest.raises(Problem) as throttled:
                register(f"late{n}@example.com", passwords=Untouchable("password hashing"))
        assert (throttled.value.status, throttled.value.slug) == (429, "too-many-registrations")
        waits.append(int(throttled.value.headers["Retry-After"]))
        clock.now += timedelta(seconds=waits[-1])
        register(f"late{n}@example.com")  # counted, and never given back

    assert waits == [1, 2, 4, 8, 8]
    assert uow.login_throttles.rows[f"register:{CLIENT}"]["failures"] == 8


class GatedHasher:
    """Stands in for argon2: each hash waits at a gate the test opens (a registration being
    hashed); checks pass at once (sign-ins)."""

    def __init__(self):
        self.gate = threading.Event()
        self.changed = threading.Condition()
        self.hashing = 0

    def hash(self, password):
        with self.changed:
            self.hashing += 1
            self.changed.notify_all()
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        return f"hashed:{password}"

    def verify(self, password_hash, password):
        return password_hash == f"hashed:{password}"

    def check_needs_rehash(self, password_hash):
        return False


@pytest.mark.parametrize("concurrency, registering_at_most", [(1, 1), (2, 1), (4, 2), (5, 2)])
def test_registrations_hash_in_at_most_half_the_slots_and_the_rest_are_503_registration_busy_while_sign_ins_go_on(uow, concurrency, registering_at_most):
    hasher = GatedHasher()
    passwords = Passwords(hasher, concurrency=concurrency, wait_seconds=0.2)
    answers, answered = [], threading.Condition()

    def register(n):
        try:
            outcome = handlers.register_account(
                RegistrationSchema().load({"email": f"rush{n}@example.com", "password": "correct horse battery"}), uow, passwords)
        except Problem as error:
            outcome = error
        with answered:
            answers.append(outcome)
            answered.notify_all()

    rush = [threading.Thread(target=register, args=(n,), daemon=True) for n in range(concurrency + 2)]
    for thread in rush:
        thread.start()
    with answered:  # the ones that got no slot give up within the wait
        assert answered.wait_for(lambda: len(answers) == len(rush) - registering_at_most, timeout=10)

    assert hasher.hashing == registering_at_most
    busy = answers[0]
    assert (busy.status, busy.slug, busy.headers["Retry-After"]) == (503, "registration-busy", "1")
    assert "sign" not in busy.detail.lower()
    if concurrency > 1:  # a buyer signing in meanwhile still gets a slot
        assert passwords.verify("hashed:correct horse battery", "correct horse battery")
    hasher.gate.set()
    for thread in rush:
        thread.join(timeout=30)
    assert len(uow.accounts.rows) == registering_at_most


class NoSlotFree:
    """Password hashing with every registration slot taken."""

    def hash(self, password, registering=False):
        from services.accounts.errors import RegistrationBusy
        raise RegistrationBusy()


def test_a_registration_told_to_retry_for_want_of_a_hashing_slot_uses_none_of_its_clients_allowance(uow, passwords):
    """Buyers behind one address in a sign-up rush retry the 503s: counted, those retries ran
    out its allowance with nothing registered, and the next try was a 429."""
    from services.accounts.throttle import RegistrationThrottle

    throttle = RegistrationThrottle.from_settings(Settings())

    def register(email, hashing):
        cmd = RegistrationSchema().load({"email": email, "password": "correct horse battery"})
        cmd["client"] = CLIENT
        return handlers.register_account(cmd, uow, hashing, throttle=throttle)

    for _ in range(FREE + 5):
        with pytest.raises(Problem) as busy:
            register("ann@example.com", NoSlotFree())
        assert busy.value.slug == "registration-busy"
    assert register("ann@example.com", passwords).email == "ann@example.com"
    assert uow.login_throttles.rows[f"register:{CLIENT}"]["failures"] == 1
