"""In-memory stand-ins for the accounts unit of work: no database, no network."""
from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
from cryptography.fernet import Fernet

from services.accounts import handlers, throttle
from services.accounts.errors import EmailTaken
from services.accounts.key_encryption import KeyEncryptionKeys
from services.accounts.passwords import Passwords
from services.accounts.tokens import TokenIssuer


class FakeAccounts:
    def __init__(self):
        self.rows = {}
        self.locked = []  # the ids of the accounts read for update, in order

    def get(self, account_id):
        return self.rows.get(account_id)

    def get_for_update(self, account_id):
        self.locked.append(account_id)
        return self.rows.get(account_id)

    def by_email(self, email):
        return next((account for account in self.rows.values() if account.email == email), None)

    def add(self, account):
        if self.by_email(account.email) is not None:
            raise EmailTaken()
        self.rows[account.id] = account


class FakeSigningKeys:
    def __init__(self):
        self.rows = []
        self.locked = False

    def active(self):
        live = [key for key in self.rows if key.retired_at is None]
        return sorted(live, key=lambda key: key.created_at, reverse=True)

    def all(self):
        return sorted(self.rows, key=lambda key: key.created_at)

    def add(self, key):
        self.rows.append(key)

    def lock(self):
        self.locked = True


class FakeSessions:
    def __init__(self):
        self.rows = {}

    def add(self, signed_in):
        self.rows[signed_in.id] = signed_in

    def get_for_update(self, session_id):
        return self.rows.get(session_id)

    def revoke_all(self, account_id, now, reason):
        live = [s for s in self.rows.values() if s.account_id == account_id and s.revoked_at is None]
        for signed_in in live:
            signed_in.revoked_at, signed_in.revoked_reason = now, reason
        return len(live)

    def delete_without_tokens_before(self, cutoff, limit):
        empty = [s for s in self.rows.values() if s.created_at < cutoff and not self.tokens.of(s.id)][:limit]
        for signed_in in empty:
            del self.rows[signed_in.id]
        return len(empty)


class FakeRefreshTokens:
    def __init__(self, sessions):
        self.rows = {}
        self.sessions = sessions
        self.batches = []  # the size of every delete, to see that none exceeds its limit

    def add(self, token):
        self.rows[token.token_hash] = token

    def session_of(self, token_hash):
        token = self.rows.get(token_hash)
        return token.session_id if token else None

    def get_for_update(self, token_hash):
        return self.rows.get(token_hash)

    def successor_for_update(self, token):
        return next((t for t in self.of(token.session_id) if t.issued_at == token.used_at and t is not token), None)

    def of(self, session_id):
        return [t for t in self.rows.values() if t.session_id == session_id]

    def delete_expired_before(self, cutoff, limit):
        return self._delete(lambda t: t.expires_at < cutoff, limit)

    def delete_of_sessions_revoked_before(self, cutoff, limit):
        def revoked(token):
            signed_in = self.sessions.rows.get(token.session_id)
            return signed_in is not None and signed_in.revoked_at is not None and signed_in.revoked_at < cutoff

        return self._delete(revoked, limit)

    def _delete(self, condition, limit):
        doomed = [t for t in self.rows.values() if condition(t)][:limit]
        for token in doomed:
            del self.rows[token.token_hash]
        self.batches.append(len(doomed))
        return len(doomed)


class FakeLoginThrottles:
    """The same arithmetic as the SQL, in a dict; each call atomic, as the row lock makes it."""

    def __init__(self):
        self.rows = {}
        self.lock = threading.Lock()

    def blocked_until(self, keys, now):
        times = [self.rows[k]["blocked_until"] for k in keys if k in self.rows and self.rows[k]["blocked_until"]]
        future = [t for t in times if t > now]
        return max(future) if future else None

    def reserve(self, key, policy, now):
        with self.lock:
            row = self.rows.setdefault(key, {"failures": 0, "last_failure_at": now, "blocked_until": None})
            reservation = throttle.reserve(key, policy, now, row["failures"], row["last_failure_at"], row["blocked_until"])
            if reservation.refused_until is None:
                row["failures"], row["last_failure_at"] = reservation.failures, now
                if reservation.blocks_until is not None:
                    row["blocked_until"] = reservation.blocks_until
            return reservation

    def count_failure(self, key, policy, now):
        with self.lock:
            row = self.rows.setdefault(key, {"failures": 0, "last_failure_at": now, "blocked_until": None})
            failure = throttle.count_failure(key, policy, now, row["failures"], row["last_failure_at"])
            row["failures"], row["last_failure_at"] = failure.failures, now
            if failure.blocks_until is not None:
                row["blocked_until"] = max(filter(None, (row["blocked_until"], failure.blocks_until)))
            return failure

    def give_back(self, reservation):
        with self.lock:
            row = self.rows.get(reservation.key)
            if row is None:
                return
            row["failures"] = max(row["failures"] - 1, 0)
            if reservation.previous_failure_at is not None and row["last_failure_at"] == reservation.at:
                row["last_failure_at"] = reservation.previous_failure_at
            if reservation.blocks_until is not None and row["blocked_until"] == reservation.blocks_until:
                row["blocked_until"] = None

    def clear(self, key):
        with self.lock:
            self.rows.pop(key, None)

    def forget_stale(self, before):
        pass


class FakeInvites:
    def __init__(self):
        self.rows = {}
        self.redemptions = set()

    def add(self, invite):
        self.rows[invite.code] = invite

    def by_code_for_update(self, code):
        return self.rows.get(code)

    def redeemed_by(self, invite_id, account_id):
        return (invite_id, account_id) in self.redemptions

    def add_redemption(self, redemption):
        self.redemptions.add((redemption.invite_id, redemption.account_id))


class FakeAddresses:
    def __init__(self):
        self.rows = {}

    def add(self, address):
        self.rows[address.id] = address

    def of(self, account_id):
        return [a for a in self.rows.values() if a.account_id == account_id]

    def get(self, address_id):
        return self.rows.get(address_id)

    def delete(self, address):
        del self.rows[address.id]


class FakeUnitOfWork:
    def __init__(self):
        self.accounts = FakeAccounts()
        self.signing_keys = FakeSigningKeys()
        self.sessions = FakeSessions()
        self.refresh_tokens = FakeRefreshTokens(self.sessions)
        self.sessions.tokens = self.refresh_tokens
        self.login_throttles = FakeLoginThrottles()
        self.invites = FakeInvites()
        self.addresses = FakeAddresses()
        self.published = []
        self.committed = False

    def __enter__(self):
        self.committed = False
        return self

    def __exit__(self, *exc_info):
        pass

    def commit(self):
        self.committed = True

    def rollback(self):
        pass  # the handlers roll back only what they read

    def publish(self, event_type, data):
        self.published.append((event_type, data))


@pytest.fixture
def uow():
    return FakeUnitOfWork()


@pytest.fixture(scope="session")
def passwords():
    return Passwords()


@pytest.fixture
def key_encryption():
    """One key-encryption key, made for the test."""
    return KeyEncryptionKeys([Fernet.generate_key().decode()])


@pytest.fixture
def issuer(key_encryption):
    return TokenIssuer(issuer="floodgate-accounts", audience="floodgate", ttl_seconds=3600, key_encryption=key_encryption)


@pytest.fixture
def app(monkeypatch, uow):
    """The real accounts app, its views given the fake unit of work; nothing connects."""
    from services.accounts import api
    from services.accounts.app import create_app
    from services.accounts.config import Settings

    monkeypatch.setattr(api, "unit_of_work", lambda: uow)
    settings = Settings(service_name="accounts", database_url="postgresql+psycopg://nobody@127.0.0.1:1/unused")
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


class Clock:
    """The accounts handlers' clock (`handlers.utc_now`), moved by the test."""

    def __init__(self):
        self.now = datetime.now(timezone.utc)

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(handlers, "utc_now", clock)
    return clock
