"""In-memory stand-ins for the accounts unit of work: no database, no network."""
from __future__ import annotations

import pytest

from services.accounts.errors import EmailTaken
from services.accounts.passwords import Passwords
from services.accounts.tokens import TokenIssuer


class FakeAccounts:
    def __init__(self):
        self.rows = {}

    def get(self, account_id):
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

    def add(self, key):
        self.rows.append(key)

    def lock(self):
        self.locked = True


class FakeUnitOfWork:
    def __init__(self):
        self.accounts = FakeAccounts()
        self.signing_keys = FakeSigningKeys()
        self.published = []
        self.committed = False

    def __enter__(self):
        self.committed = False
        return self

    def __exit__(self, *exc_info):
        pass

    def commit(self):
        self.committed = True

    def publish(self, event_type, data):
        self.published.append((event_type, data))


@pytest.fixture
def uow():
    return FakeUnitOfWork()


@pytest.fixture(scope="session")
def passwords():
    return Passwords()


@pytest.fixture
def issuer():
    return TokenIssuer(issuer="floodgate-accounts", audience="floodgate", ttl_seconds=3600)


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
