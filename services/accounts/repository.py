"""Where accounts and signing keys are kept, behind the unit of work the handlers receive."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from psycopg import errors as pg_errors
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import insert

from shared.db import UnitOfWork
from services.accounts import throttle
from services.accounts.errors import EmailTaken
from services.accounts.models import (
    Account,
    Address,
    Invite,
    InviteRedemption,
    LoginThrottle,
    RefreshToken,
    Session,
    SigningKey,
)
from services.accounts.throttle import BackoffPolicy, Reservation

# Any constant shared by every accounts process: serialises the creation of the first key.
SIGNING_KEY_LOCK = 0x466C6F6F64  # "Flood"


class Accounts:
    def __init__(self, session: orm.Session):
        self._session = session

    def get(self, account_id: uuid.UUID) -> Account | None:
        return self._session.get(Account, account_id)

    def get_for_update(self, account_id: uuid.UUID) -> Account | None:
        """The account row, locked until the transaction ends and read as it is now (an earlier
        read in this transaction is refreshed): changes to one account's addresses or tier are
        made one at a time, each seeing the one before."""
        return self._session.get(Account, account_id, with_for_update=True, populate_existing=True)

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

    def all(self) -> list[SigningKey]:
        """Every key, retired ones too."""
        return list(self._session.scalars(sa.select(SigningKey).order_by(SigningKey.created_at)))

    def add(self, key: SigningKey) -> None:
        self._session.add(key)
        self._session.flush()

    def lock(self) -> None:
        """Hold, until the transaction ends, the lock every process takes before adding a key."""
        self._session.execute(sa.select(sa.func.pg_advisory_xact_lock(SIGNING_KEY_LOCK)))


class Sessions:
    def __init__(self, session: orm.Session):
        self._session = session

    def add(self, signed_in: Session) -> None:
        self._session.add(signed_in)
        self._session.flush()

    def get_for_update(self, session_id: uuid.UUID) -> Session | None:
        return self._session.get(Session, session_id, with_for_update=True)

    def revoke_all(self, account_id: uuid.UUID, now: datetime, reason: str) -> int:
        result = self._session.execute(
            sa.update(Session)
            .where(Session.account_id == account_id, Session.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
        )
        return result.rowcount

    def delete_without_tokens_before(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` sessions begun before `cutoff` that have no refresh token left
        (nothing can refresh them any more); returns how many."""
        has_tokens = sa.exists().where(RefreshToken.session_id == Session.id)
        batch = (
            sa.select(Session.id)
            .where(Session.created_at < cutoff, ~has_tokens)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return _delete(self._session, Session, Session.id, batch)


class RefreshTokens:
    def __init__(self, session: orm.Session):
        self._session = session

    def add(self, token: RefreshToken) -> None:
        self._session.add(token)
        self._session.flush()

    def session_of(self, token_hash: str) -> uuid.UUID | None:
        """The session the token belongs to, read without a lock: the session is locked first,
        then its tokens (see `get_for_update`)."""
        return self._session.scalar(sa.select(RefreshToken.session_id).where(RefreshToken.token_hash == token_hash))

    def get_for_update(self, token_hash: str) -> RefreshToken | None:
        """The token row, locked. Taken only while holding its session's lock, so two requests
        presenting tokens of one session are served in turn (exactly one of two presenting the
        same token rotates it) and never each hold a row the other waits for."""
        return self._session.get(RefreshToken, token_hash, with_for_update=True, populate_existing=True)

    def successor_for_update(self, token: RefreshToken) -> RefreshToken | None:
        """The token `token`'s exchange issued: of the same session, issued at its `used_at`.
        Locked; taken under the session's lock too."""
        return self._session.scalars(
            sa.select(RefreshToken)
            .where(
                RefreshToken.session_id == token.session_id,
                RefreshToken.issued_at == token.used_at,
                RefreshToken.token_hash != token.token_hash,
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        ).first()

    def delete_expired_before(self, cutoff: datetime, limit: int) -> int:
        """Used tokens too are kept until they have expired: until then, presenting one again is
        still recognised as a theft and ends its session."""
        return self._delete_where(RefreshToken.expires_at < cutoff, limit)

    def delete_of_sessions_revoked_before(self, cutoff: datetime, limit: int) -> int:
        revoked = sa.select(Session.id).where(Session.revoked_at < cutoff)
        return self._delete_where(RefreshToken.session_id.in_(revoked), limit)

    def _delete_where(self, condition, limit: int) -> int:
        """Delete up to `limit` tokens meeting `condition`. Rows a refresh holds locked are
        skipped (the next purge takes them), so neither waits for the other."""
        batch = sa.select(RefreshToken.token_hash).where(condition).limit(limit).with_for_update(skip_locked=True)
        return _delete(self._session, RefreshToken, RefreshToken.token_hash, batch)


def _delete(session: orm.Session, model, key, batch: sa.Select) -> int:
    statement = sa.delete(model).where(key.in_(batch))
    return session.execute(statement, execution_options={"synchronize_session": False}).rowcount


class LoginThrottles:
    def __init__(self, session: orm.Session):
        self._session = session

    def blocked_until(self, keys: list[str], now: datetime) -> datetime | None:
        """The latest time any of `keys` is refused until, if it is still in the future."""
        return self._session.scalar(
            sa.select(sa.func.max(LoginThrottle.blocked_until)).where(
                LoginThrottle.key.in_(keys), LoginThrottle.blocked_until > now
            )
        )

    def reserve(self, key: str, policy: BackoffPolicy, now: datetime) -> Reservation:
        """Count one attempt (a sign-in, a registration) at `key` as a failure, unless the key is
        refused (see `throttle.reserve`). The row is created if missing and stays locked until
        the transaction ends: attempts at one key, from every worker, are counted one at a time,
        each seeing the block the one before it started."""
        row = self._locked(key, now)
        reservation = throttle.reserve(key, policy, now, row.failures, row.last_failure_at, row.blocked_until)
        if reservation.refused_until is None:
            self._counted(reservation)
        return reservation

    def count_failure(self, key: str, policy: BackoffPolicy, now: datetime) -> Reservation:
        """Count a failure at `key` that was not reserved (a password checked and proved wrong),
        even if the key was blocked meanwhile: a block already running for longer is kept."""
        row = self._locked(key, now)
        failure = throttle.count_failure(key, policy, now, row.failures, row.last_failure_at)
        self._counted(failure)
        return failure

    def _locked(self, key: str, now: datetime):
        """The key's row (created if missing), locked until the transaction ends."""
        return self._session.execute(
            insert(LoginThrottle)
            .values(key=key, failures=0, last_failure_at=now)
            .on_conflict_do_update(index_elements=[LoginThrottle.key], set_={"failures": LoginThrottle.failures})
            .returning(LoginThrottle.failures, LoginThrottle.last_failure_at, LoginThrottle.blocked_until)
        ).one()

    def _counted(self, failure: Reservation) -> None:
        values = {"failures": failure.failures, "last_failure_at": failure.at}
        if failure.blocks_until is not None:
            # PostgreSQL's greatest() skips a null: no block yet is the new one
            values["blocked_until"] = sa.func.greatest(LoginThrottle.blocked_until, failure.blocks_until)
        self._session.execute(sa.update(LoginThrottle).where(LoginThrottle.key == failure.key).values(**values))

    def give_back(self, reservation: Reservation) -> None:
        """Uncount a reserved attempt that must not count (a right password, or no hashing slot
        came free for it): one failure fewer, and the last failure's time and the block as they
        were, unless a later attempt has changed them."""
        values = {"failures": sa.func.greatest(LoginThrottle.failures - 1, 0)}
        if reservation.previous_failure_at is not None:
            values["last_failure_at"] = sa.case(
                (LoginThrottle.last_failure_at == reservation.at, reservation.previous_failure_at),
                else_=LoginThrottle.last_failure_at,
            )
        if reservation.blocks_until is not None:
            values["blocked_until"] = sa.case(
                (LoginThrottle.blocked_until == reservation.blocks_until, sa.null()), else_=LoginThrottle.blocked_until
            )
        self._session.execute(sa.update(LoginThrottle).where(LoginThrottle.key == reservation.key).values(**values))

    def clear(self, key: str) -> None:
        self._session.execute(sa.delete(LoginThrottle).where(LoginThrottle.key == key))

    def forget_stale(self, before: datetime) -> None:
        """Delete the rows of keys with no failure and no block since `before`. Rows another
        sign-in holds locked are skipped: it may be waiting for a row this one holds."""
        stale = (
            sa.select(LoginThrottle.key)
            .where(
                LoginThrottle.last_failure_at < before,
                sa.or_(LoginThrottle.blocked_until.is_(None), LoginThrottle.blocked_until < before),
            )
            .with_for_update(skip_locked=True)
        )
        _delete(self._session, LoginThrottle, LoginThrottle.key, stale)


class Invites:
    def __init__(self, session: orm.Session):
        self._session = session

    def add(self, invite: Invite) -> None:
        self._session.add(invite)
        self._session.flush()

    def by_code_for_update(self, code: str) -> Invite | None:
        """The invite, locked, so concurrent redemptions cannot exceed its uses."""
        return self._session.scalar(sa.select(Invite).where(Invite.code == code).with_for_update())

    def redeemed_by(self, invite_id: uuid.UUID, account_id: uuid.UUID) -> bool:
        return self._session.get(InviteRedemption, (invite_id, account_id)) is not None

    def add_redemption(self, redemption: InviteRedemption) -> None:
        self._session.add(redemption)
        self._session.flush()


class Addresses:
    def __init__(self, session: orm.Session):
        self._session = session

    def add(self, address: Address) -> None:
        self._session.add(address)
        self._session.flush()

    def of(self, account_id: uuid.UUID) -> list[Address]:
        return list(
            self._session.scalars(
                sa.select(Address).where(Address.account_id == account_id).order_by(Address.created_at, Address.id)
            )
        )

    def get(self, address_id: uuid.UUID) -> Address | None:
        return self._session.get(Address, address_id)

    def delete(self, address: Address) -> None:
        self._session.delete(address)
        self._session.flush()


class AccountsUnitOfWork(UnitOfWork):
    """The shared unit of work plus the accounts' repositories on its session."""

    accounts: Accounts
    signing_keys: SigningKeys
    sessions: Sessions
    refresh_tokens: RefreshTokens
    login_throttles: LoginThrottles
    invites: Invites
    addresses: Addresses

    def __enter__(self) -> "AccountsUnitOfWork":
        super().__enter__()
        self.accounts = Accounts(self.session)
        self.signing_keys = SigningKeys(self.session)
        self.sessions = Sessions(self.session)
        self.refresh_tokens = RefreshTokens(self.session)
        self.login_throttles = LoginThrottles(self.session)
        self.invites = Invites(self.session)
        self.addresses = Addresses(self.session)
        return self
