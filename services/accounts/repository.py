"""Where accounts and signing keys are kept, behind the unit of work the handlers receive."""
from __future__ import annotations

import uuid

import sqlalchemy as sa
from psycopg import errors as pg_errors
from sqlalchemy import orm

from shared import web
from shared.db import UnitOfWork
from services.accounts.errors import EmailTaken
from services.accounts.models import Account, SigningKey

# Any constant shared by every accounts process: serialises the creation of the first key.
SIGNING_KEY_LOCK = 0x466C6F6F64  # "Flood"


class Accounts:
    def __init__(self, session: orm.Session):
        self._session = session

    def get(self, account_id: uuid.UUID) -> Account | None:
        return self._session.get(Account, account_id)

    def by_email(self, email: str) -> Account | None:
        return self._session.scalar(sa.select(Account).where(Account.email == email))

    def add(self, account: Account) -> None:
        """Add `account`; `EmailTaken` when a concurrent registration got the email first."""
        self._session.add(account)
        try:
            self._session.flush()
        except sa.exc.IntegrityError as error:
            if isinstance(error.orig, pg_errors.UniqueViolation):
                raise EmailTaken("An account cannot be registered with this email.") from None
            raise


class SigningKeys:
    def __init__(self, session: orm.Session):
        self._session = session

    def active(self) -> list[SigningKey]:
        """Non-retired keys, newest first."""
        return list(
            self._session.scalars(
                sa.select(SigningKey).where(SigningKey.retired_at.is_(None)).order_by(SigningKey.created_at.desc())
            )
        )

    def add(self, key: SigningKey) -> None:
        self._session.add(key)
        self._session.flush()

    def lock(self) -> None:
        """Hold, until the transaction ends, the lock every process takes before adding a key."""
        self._session.execute(sa.select(sa.func.pg_advisory_xact_lock(SIGNING_KEY_LOCK)))


class AccountsUnitOfWork(UnitOfWork):
    """The shared unit of work plus the accounts' repositories on its session."""

    accounts: Accounts
    signing_keys: SigningKeys

    def __enter__(self) -> "AccountsUnitOfWork":
        super().__enter__()
        self.accounts = Accounts(self.session)
        self.signing_keys = SigningKeys(self.session)
        return self


def unit_of_work() -> AccountsUnitOfWork:
    """A unit of work on the accounts database of the current app."""
    ctx = web.context()
    return AccountsUnitOfWork(ctx.session_factory, ctx.settings.service_name)
