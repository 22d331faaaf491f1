"""Passwords are hashed and checked with no transaction open: a request waiting for a hashing
slot holds no database connection that requests needing no hashing are waiting for."""
import threading
import time

import pytest
from argon2 import PasswordHasher

from services.accounts import handlers
from services.accounts.errors import InvalidCredentials
from services.accounts.passwords import OWASP_ARGON2ID, Passwords
from services.accounts.schemas import RegistrationSchema, SessionRequestSchema

REPOSITORIES = ("accounts", "signing_keys", "sessions", "refresh_tokens", "login_throttles", "invites", "addresses")


class Transactions:
    """The fake unit of work, noting whether a transaction is open, as a SQLAlchemy session
    holds its connection: from the first statement until commit or rollback."""

    def __init__(self, uow):
        self._uow = uow
        self.open = False

    def __getattr__(self, name):
        found = getattr(self._uow, name)
        if name in REPOSITORIES:
            return Statements(found, self)
        if name in ("commit", "rollback"):
            return self.then(found, open=False)
        if name == "publish":
            return self.then(found, open=True)
        return found

    def then(self, call, open):
        def noted(*args, **kwargs):
            self.open = open
            return call(*args, **kwargs)

        return noted


class Statements:
    def __init__(self, repository, transactions):
        self._repository = repository
        self._transactions = transactions

    def __getattr__(self, name):
        return self._transactions.then(getattr(self._repository, name), open=True)


class WatchedPasswords(Passwords):
    """Passwords noting, at each hash and check, whether a transaction was open."""

    def __init__(self, transactions, hasher=OWASP_ARGON2ID):
        super().__init__(hasher)
        self._transactions = transactions
        self.seen = []

    def hash(self, password, registering=False):
        self.seen.append(("hash", self._transactions.open))
        return super().hash(password, registering)

    def verify(self, password_hash, password):
        self.seen.append(("verify", self._transactions.open))
        return super().verify(password_hash, password)


def sign_in(uow, passwords, issuer, password):
    cmd = SessionRequestSchema().load({"email": "ann@example.com", "password": password})
    cmd["client"] = "198.51.100.7"
    return handlers.open_session(cmd, uow, passwords, issuer)


def test_registering_and_signing_in_hash_and_check_the_password_with_no_transaction_open(uow, issuer):
    transactions = Transactions(uow)
    weaker = WatchedPasswords(transactions, PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    passwords = WatchedPasswords(transactions)  # stronger: a sign-in rehashes ann's password

    ann = handlers.register_account(RegistrationSchema().load({"email": "ann@example.com", "password": "correct horse battery"}), transactions, weaker)
    transactions.commit()
    with pytest.raises(InvalidCredentials):
        sign_in(transactions, passwords, issuer, "wrong password!")
    assert uow.login_throttles.rows["client:198.51.100.7|account:ann@example.com"]["failures"] == 1
    assert sign_in(transactions, passwords, issuer, "correct horse battery").token

    assert weaker.seen == [("hash", False)]
    assert passwords.seen == [("verify", False), ("verify", False), ("hash", False)]
    assert uow.accounts.get(ann.id).password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "client:198.51.100.7|account:ann@example.com" not in uow.login_throttles.rows



class ThreadNotingHasher:
    """Stands in for argon2: notes the thread each hash and check ran on, and how many ran at once."""

    def __init__(self):
        self.threads, self.running, self.most_at_once = set(), 0, 0
        self._lock = threading.Lock()

    def _work(self):
        with self._lock:
            self.threads.add(threading.current_thread().name)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(0.002)  # long enough for the callers to overlap
        with self._lock:
            self.running -= 1

    def hash(self, password):
        self._work()
        return f"hashed:{password}"

    def verify(self, password_hash, password):
        self._work()
        return password_hash == f"hashed:{password}"

    def check_needs_rehash(self, password_hash):
        return False


def test_hashing_from_many_request_threads_runs_on_the_few_hashing_threads_only():
    """argon2's 19 MiB a hash stays in the arenas of the threads that allocated it: a sign-up
    storm over 24 request threads must not leave 24 of them holding it (benchmarks/memory.py
    measures what that cost)."""
    hasher = ThreadNotingHasher()
    passwords = Passwords(hasher, concurrency=2, wait_seconds=30)
    answers = []

    def request(index):
        stored = passwords.hash(f"password {index}")
        answers.append((passwords.verify(stored, f"password {index}"), passwords.verify(None, "guess")))

    requests = [threading.Thread(target=request, args=(index,), name=f"request-{index}") for index in range(24)]
    for thread in requests:
        thread.start()
    for thread in requests:
        thread.join()

    assert answers == [(True, False)] * 24
    assert len(hasher.threads) <= 2 and not any(name.startswith("request-") for name in hasher.threads)
    assert hasher.most_at_once <= 2
