"""What accounts does: register buyers, sign them in, keep the keys their tokens are signed with."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from services.accounts import tokens
from services.accounts.errors import AccountNotFound, EmailTaken, InvalidCredentials
from services.accounts.models import Account, SigningKey
from services.accounts.passwords import Passwords
from services.accounts.tokens import AccessToken, TokenIssuer

# One message for a wrong email and a wrong password, so a login cannot probe who has an account.
WRONG_CREDENTIALS = "Email or password is incorrect"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def register_account(cmd: dict, uow, passwords: Passwords, role: str = "buyer") -> Account:
    """A new account for `cmd` (email normalised, password checked by the schema)."""
    if uow.accounts.by_email(cmd["email"]) is not None:
        raise EmailTaken("An account cannot be registered with this email.")
    account = Account(
        id=uuid.uuid4(),
        email=cmd["email"],
        name=cmd.get("name"),
        password_hash=passwords.hash(cmd["password"]),
        role=role,
        tier=None,
        created_at=_now(),
    )
    uow.accounts.add(account)
    uow.publish("account.registered", {"account_id": str(account.id), "email": account.email})
    return account


def open_session(cmd: dict, uow, passwords: Passwords, issuer: TokenIssuer) -> AccessToken:
    """An access token for the account whose email and password match, else `InvalidCredentials`."""
    account = uow.accounts.by_email(cmd["email"])
    if not passwords.verify(account.password_hash if account else None, cmd["password"]):
        raise InvalidCredentials(WRONG_CREDENTIALS)
    if passwords.needs_rehash(account.password_hash):
        account.password_hash = passwords.hash(cmd["password"])
    now = _now()
    return issuer.issue(account, signing_key(uow, now), now)


def signing_key(uow, now: datetime) -> SigningKey:
    """The key that signs now: the newest non-retired one, created on first use."""
    active = uow.signing_keys.active()
    if active:
        return active[0]
    # Every worker may get here at once on a fresh database; the lock lets exactly one create it.
    uow.signing_keys.lock()
    active = uow.signing_keys.active()
    if active:
        return active[0]
    key = tokens.new_signing_key(now)
    uow.signing_keys.add(key)
    return key


def published_keys(uow) -> dict:
    """The JWKS: every non-retired key, so tokens signed before a rotation still verify."""
    signing_key(uow, _now())
    return tokens.key_set(uow.signing_keys.active())


def find_account(account_id: str, uow) -> Account:
    try:
        account = uow.accounts.get(uuid.UUID(account_id))
    except ValueError:
        account = None
    if account is None:
        raise AccountNotFound("This account no longer exists.")
    return account


def create_admin(cmd: dict, uow, passwords: Passwords) -> Account:
    """Make `cmd["email"]` an admin signing in with `cmd["password"]`: registered if new,
    promoted (and its password set) if it exists, so the command can be run again safely."""
    account = uow.accounts.by_email(cmd["email"])
    if account is None:
        return register_account(cmd, uow, passwords, role="admin")
    account.role = "admin"
    account.password_hash = passwords.hash(cmd["password"])
    if cmd.get("name"):
        account.name = cmd["name"]
    return account


def rotate_keys(uow, retire_superseded_for: timedelta | None = None) -> tuple[SigningKey, list[SigningKey]]:
    """Start signing with a new key. The previous keys stay published; with
    `retire_superseded_for`, those that stopped signing at least that long ago are retired
    (their tokens have expired once it exceeds the token lifetime; zero retires them all now)."""
    now = _now()
    uow.signing_keys.lock()
    previous = uow.signing_keys.active()
    key = tokens.new_signing_key(now)
    uow.signing_keys.add(key)
    retired = []
    if retire_superseded_for is not None:
        # previous is newest first: each key stopped signing when the one before it was created
        superseded_at = [now] + [older.created_at for older in previous[:-1]]
        for old, since in zip(previous, superseded_at):
            if now - since >= retire_superseded_for:
                old.retired_at = now
                retired.append(old)
    return key, retired
