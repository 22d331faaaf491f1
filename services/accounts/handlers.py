"""What accounts does: register buyers, sign them in and keep them signed in, invite them, keep
their addresses, and keep the keys their tokens are signed with."""
from __future__ import annotations

import logging
import random
import re
import secrets
import uuid
from datetime import datetime, timedelta

from shared import addresses as postal
from shared.values import utc_now, uuid_or_none
from services.accounts import tokens
from services.accounts.errors import (
    AccountNotFound,
    AddressNotFound,
    EmailTaken,
    InvalidCredentials,
    InvalidRefreshToken,
    InviteNotUsable,
    RegistrationBusy,
    RegistrationThrottled,
    SignInThrottled,
    SigningUnavailable,
    TooManyAddresses,
)
from services.accounts.key_encryption import KeyEncryptionKeys, SigningKeyUnreadable
from services.accounts.models import Account, Address, Invite, InviteRedemption, RefreshToken, Session, SigningKey
from services.accounts.passwords import Passwords
from services.accounts.config import Settings
from services.accounts.throttle import (
    BackoffPolicy,
    RegistrationThrottle,
    Reservation,
    SignInThrottle,
    key_kind,
    retry_after_seconds,
)
from services.accounts.tokens import SessionTokens, TokenIssuer

log = logging.getLogger("floodgate.accounts")

# One message for a wrong email and a wrong password, so a login cannot probe who has an account.
WRONG_CREDENTIALS = "Email or password is incorrect"
_DEFAULTS = Settings()  # the settings' defaults, for callers that pass none (tests, tools)
DEFAULT_THROTTLE = SignInThrottle.from_settings(_DEFAULTS)
DEFAULT_REFRESH_TTL = timedelta(seconds=_DEFAULTS.refresh_token_ttl_seconds)
DEFAULT_REFRESH_REUSE_GRACE = timedelta(seconds=_DEFAULTS.refresh_token_reuse_grace_seconds)
# Without 0/O, 1/I: codes are read out and typed. 12 symbols of 32 = 60 random bits.
INVITE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
INVITE_CODE_LENGTH = 12



def register_account(cmd: dict, uow, passwords: Passwords, role: str = "buyer",
                     throttle: RegistrationThrottle | None = None) -> Account:
    """A new account for `cmd` (email normalised, password checked by the schema), redeeming
    `cmd["invite_code"]` in the same transaction when one is given.

    With `throttle` (a registration over HTTP) the attempt is first counted against its client
    (`cmd["client"]`), whatever comes of it but a `RegistrationBusy` (given back), and refused past
    the free ones (`RegistrationThrottled`)
    before the email is looked up or the password hashed. The password is hashed in one of the
    registrations' slots (`RegistrationBusy` when none comes free), between two transactions,
    holding no connection: a registration taking the email meanwhile is refused by the unique
    email (`EmailTaken`) all the same."""
    counted = _count_registration(uow, throttle, cmd.get("client")) if throttle is not None else None
    if uow.accounts.by_email(cmd["email"]) is not None:
        raise EmailTaken("An account cannot be registered with this email.")
    uow.rollback()
    try:
        password_hash = passwords.hash(cmd["password"], registering=True)
    except RegistrationBusy:
        # no hashing slot: nothing was done, and the buyer is told to retry; counted, the retries
        # of buyers behind one address in a sign-up rush used up its allowance for nothing
        if counted is not None:
            uow.login_throttles.give_back(counted)
            uow.commit()
        raise
    account = Account(
        id=uuid.uuid4(),
        email=cmd["email"],
        name=cmd.get("name"),
        password_hash=password_hash,
        password_version=0,
        role=role,
        tier=None,
        created_at=utc_now(),
    )
    uow.accounts.add(account)
    if cmd.get("invite_code"):
        redeem_invite(cmd["invite_code"], account, uow, field="invite_code")
    uow.publish("account.registered", {"account_id": str(account.id), "email": account.email, "name": account.name})
    return account


def _count_registration(uow, throttle: RegistrationThrottle, client: str | None) -> Reservation:
    """Count a registration from `client`, in a short transaction of its own under the key's row
    lock (registrations at once are counted one after another), or refuse it
    (`RegistrationThrottled`) while the key is blocked. Given back only when no hashing slot
    came free (`RegistrationBusy`): whatever else comes of it counts."""
    now = utc_now()
    key = throttle.key(client)
    # A read, no lock: while the client is refused, a flood of its registrations queues on no row.
    blocked_until = uow.login_throttles.blocked_until([key], now)
    if blocked_until is None:
        counted = uow.login_throttles.reserve(key, throttle.per_client, now)
        uow.commit()
        blocked_until = counted.refused_until
        if counted.blocks_until is not None:
            log.warning("registrations throttled", extra={"throttle": key_kind(key), "failures": counted.failures,
                                                          "wait_seconds": (counted.blocks_until - now).total_seconds()})
    if blocked_until is not None:
        raise RegistrationThrottled(retry_after_seconds(blocked_until, now))
    return counted


def open_session(
    cmd: dict,
    uow,
    passwords: Passwords,
    issuer: TokenIssuer,
    throttle: SignInThrottle = DEFAULT_THROTTLE,
    refresh_ttl: timedelta = DEFAULT_REFRESH_TTL,
) -> SessionTokens:
    """Tokens for the account whose email and password match, else `InvalidCredentials`.

    Failures are counted per account and client (`cmd["client"]`), per account from every
    client and per client (`SignInThrottle`); past the free ones each key is refused for a
    doubling time (`SignInThrottled`, 429) before any password is checked, so a throttled key
    costs no hashing and slows nobody else. Failures from one client never lock the account's
    owner out from another for more than the loose per-account wait. Unknown emails are counted
    like known ones, so throttling reveals nothing either.

    Each attempt is counted as a failure of the account's two keys before its password is
    checked, under their row locks, and given back when the password is right or gets no
    verdict (`SignInBusy`): attempts at one account fired at once are counted one after the
    other, so they get no more password checks than the policy allows. The client's key counts
    only a password that proved wrong, after the check: buyers behind one address signing in
    at once must not be refused for the right passwords still being checked. A right password
    is never refused for failures counted while it was being checked.

    The password is checked between two transactions, holding no connection: a sign-in waiting
    for a hashing slot keeps none from requests that need no hashing.
    """
    now = utc_now()
    keys = throttle.keys(cmd["email"], cmd.get("client"))
    clients_key = throttle.clients_key(cmd.get("client"))
    # A read, no lock: while a key is refused, a flood of attempts at it queues on no row.
    checked = list(keys) if clients_key is None else [*keys, clients_key]
    blocked_until = uow.login_throttles.blocked_until(checked, now)
    if blocked_until is not None:
        raise SignInThrottled(retry_after_seconds(blocked_until, now))
    account = uow.accounts.by_email(cmd["email"])
    account_id, password_hash, version = (
        (account.id, account.password_hash, account.password_version) if account else (None, None, None))
    reservations = _reserve_attempt(uow, keys, now)
    uow.commit()  # counted as a failure until the password proves right
    try:
        matched = passwords.verify(password_hash, cmd["password"])
        rehashed = passwords.hash(cmd["password"]) if matched and passwords.needs_rehash(password_hash) else None
    except Exception:  # no verdict (no hashing slot free: SignInBusy), so no failure either
        for reservation in reservations:
            uow.login_throttles.give_back(reservation)
        uow.commit()
        raise
    if not matched:  # counted already for the account; now for the client too
        if clients_key is not None:
            _count_client_failure(uow, clients_key, throttle.per_client)
            uow.commit()
        raise InvalidCredentials(WRONG_CREDENTIALS)
    owners_key = throttle.owners_key(cmd["email"], cmd.get("client"))
    for reservation in reservations:
        if reservation.key == owners_key:
            uow.login_throttles.clear(reservation.key)  # a right password forgets this client's failures
        else:
            # The account's failures from every client stay: the owner signing in must not hand
            # guessers spread over many clients a fresh allowance.
            uow.login_throttles.give_back(reservation)
    uow.commit()  # not a failure, even if no token can be issued now
    account = _with_password_unchanged(uow, account_id, version)  # held until the session is in
    if account is None:  # the account deleted or reset meanwhile
        raise InvalidCredentials(WRONG_CREDENTIALS)
    if rehashed:
        account.password_hash = rehashed  # of the same password as any concurrent sign-in's
    return _start_session(account, uow, issuer, refresh_ttl, now)


def _with_password_unchanged(uow, account_id: uuid.UUID, version: int) -> Account | None:
    """The account, locked until the transaction ends and read as it is now, if its password is
    still the one checked (`password_version`: a rehash of the same password by a concurrent
    sign-in keeps it). A reset (`create_admin`, which takes the same lock) ends the account's
    sessions: a sign-in that checked the old password meanwhile must neither start one after
    that nor write the old password's rehash over the new one."""
    account = uow.accounts.get_for_update(account_id)
    return account if account is not None and account.password_version == version else None


def _count_client_failure(uow, key: str, policy: BackoffPolicy) -> None:
    """Count a wrong password against the client's key, in a transaction locking that row
    alone (so it waits for no other key's lock): counted even if attempts checked at the same
    time blocked the key meanwhile, so the client waits as long as all its failures call for."""
    failure = uow.login_throttles.count_failure(key, policy, utc_now())
    if failure.blocks_until is not None:
        log.warning("sign-in throttled", extra={"throttle": key_kind(key), "failures": failure.failures,
                                                "wait_seconds": (failure.blocks_until - failure.at).total_seconds()})


def _reserve_attempt(uow, keys: dict[str, BackoffPolicy], now: datetime) -> list[Reservation]:
    """Count the attempt as a failure of every key, or of none (`SignInThrottled`) if one is
    refused. Keys are locked in one order (sorted: the account's, then the account and
    client's), so two attempts never each hold a row the other waits for."""
    reservations = []
    for key, policy in sorted(keys.items()):
        reservation = uow.login_throttles.reserve(key, policy, now)
        if reservation.refused_until is not None:
            for counted in reservations:
                uow.login_throttles.give_back(counted)
            uow.commit()
            raise SignInThrottled(retry_after_seconds(reservation.refused_until, now))
        reservations.append(reservation)
    for reservation in reservations:
        if reservation.blocks_until is not None:
            log.warning("sign-in throttled", extra={"throttle": key_kind(reservation.key), "failures": reservation.failures,
                                                    "wait_seconds": (reservation.blocks_until - now).total_seconds()})
    if random.random() < 0.01:  # now and then, drop rows nobody has failed on for a while
        uow.login_throttles.forget_stale(now - max(policy.window for policy in keys.values()))
    return reservations


def _start_session(account: Account, uow, issuer: TokenIssuer, refresh_ttl: timedelta, now: datetime) -> SessionTokens:
    signed_in = Session(id=uuid.uuid4(), account_id=account.id, created_at=now, revoked_at=None, revoked_reason=None)
    uow.sessions.add(signed_in)
    return _tokens_for(account, signed_in, uow, issuer, refresh_ttl, now)


def _tokens_for(account: Account, signed_in: Session, uow, issuer: TokenIssuer, refresh_ttl: timedelta, now: datetime) -> SessionTokens:
    refresh, refresh_hash = tokens.new_refresh_token()
    uow.refresh_tokens.add(
        RefreshToken(token_hash=refresh_hash, session_id=signed_in.id, issued_at=now, expires_at=now + refresh_ttl, used_at=None)
    )
    try:
        access = issuer.issue(account, signing_key(uow, now, issuer.key_encryption, issuer.new_key_published_for), now)
    except SigningKeyUnreadable as error:
        log.error("cannot sign access tokens", extra={"error": str(error)})
        raise SigningUnavailable("Tokens cannot be issued right now; try again later.", retry_after=30) from None
    return SessionTokens(access=access, refresh_token=refresh, refresh_expires_in=int(refresh_ttl.total_seconds()))


def refresh_session(refresh_token: str, uow, issuer: TokenIssuer, refresh_ttl: timedelta = DEFAULT_REFRESH_TTL,
                    reuse_grace: timedelta = DEFAULT_REFRESH_REUSE_GRACE) -> SessionTokens:
    """Exchange a refresh token for a new access token and a new refresh token (rotation).

    A refresh token works once. Presenting one that was already exchanged means two parties
    hold it, one of them a thief: the whole session (every token rotated from the same sign-in)
    is revoked and the caller must sign in again. Except for a retry: clients are told to retry
    a refresh whose answer they did not get (a timeout, a 5xx). A token presented again within
    `reuse_grace` of its exchange, while the token that exchange issued is still unused, spends
    that one instead and gets a new pair; the session stays. The new access token carries the
    account's current role and tier.
    """
    now = utc_now()
    token_hash = tokens.refresh_token_hash(refresh_token)
    # The session's lock first, then its tokens', as `end_session` does: a retry spending the
    # successor and the successor's own refresh are served in turn and never deadlock.
    session_id = uow.refresh_tokens.session_of(token_hash)
    signed_in = uow.sessions.get_for_update(session_id) if session_id is not None else None
    row = uow.refresh_tokens.get_for_update(token_hash) if signed_in is not None else None
    if row is None or signed_in.revoked_at is not None:
        raise InvalidRefreshToken("Sign in again.")
    spent = row
    if row.used_at is not None:
        spent = _successor_of_retried(row, uow, now, reuse_grace)
        if spent is None:
            signed_in.revoked_at, signed_in.revoked_reason = now, "refresh-token-reuse"
            uow.commit()  # the revocation stands although the request fails
            log.warning("refresh token reused; session revoked", extra={"session_id": str(signed_in.id)})
            raise InvalidRefreshToken("Sign in again.")
        log.info("refresh retried; its lost answer's token spent instead", extra={"session_id": str(signed_in.id)})
    account = uow.accounts.get(signed_in.account_id)
    if spent.expires_at <= now or account is None:
        raise InvalidRefreshToken("Sign in again.")
    spent.used_at = now
    return _tokens_for(account, signed_in, uow, issuer, refresh_ttl, now)


def _successor_of_retried(row: RefreshToken, uow, now: datetime, reuse_grace: timedelta) -> RefreshToken | None:
    """The token `row`'s exchange issued (same session, issued at `row.used_at`), if `row` is
    being retried: exchanged within `reuse_grace` and that token still unused. Else None: a
    reuse, which ends the session."""
    if now - row.used_at > reuse_grace:
        return None
    successor = uow.refresh_tokens.successor_for_update(row)
    return successor if successor is not None and successor.used_at is None else None


def end_session(refresh_token: str, uow) -> None:
    """Log out: revoke the session `refresh_token` belongs to. Unknown tokens change nothing."""
    session_id = uow.refresh_tokens.session_of(tokens.refresh_token_hash(refresh_token))
    if session_id is None:
        return
    signed_in = uow.sessions.get_for_update(session_id)
    if signed_in is not None and signed_in.revoked_at is None:
        signed_in.revoked_at, signed_in.revoked_reason = utc_now(), "logout"


def end_all_sessions(account_id: str, uow) -> int:
    """Log out everywhere: revoke every session of the account; returns how many."""
    account = find_account(account_id, uow)
    return uow.sessions.revoke_all(account.id, utc_now(), "logout-everywhere")


def signing_key(uow, now: datetime, key_encryption: KeyEncryptionKeys,
                published_for: timedelta = timedelta(0)) -> SigningKey:
    """The key that signs now: the newest non-retired one published at least `published_for`
    ago (else the oldest non-retired one: the only key, or the one left after retiring all
    others), created on first use.

    A verifier fetches the key set again only when a token names a key it does not know, and
    at most every JWKS_MIN_REFRESH_SECONDS; a key that signed the moment it was made would be
    refused by a worker that fetched just before, or whose fetches someone keeps spending with
    made-up key ids."""
    active = uow.signing_keys.active()
    if active:
        settled = [key for key in active if key.created_at <= now - published_for]
        return settled[0] if settled else active[-1]
    # Every worker may get here at once on a fresh database; the lock lets exactly one create it.
    uow.signing_keys.lock()
    active = uow.signing_keys.active()
    if active:
        return active[0]
    key = tokens.new_signing_key(now, key_encryption)
    uow.signing_keys.add(key)
    return key


def published_keys(uow, key_encryption: KeyEncryptionKeys) -> dict:
    """The JWKS: every non-retired key, so tokens signed before a rotation still verify."""
    signing_key(uow, utc_now(), key_encryption)
    return tokens.key_set(uow.signing_keys.active())


def find_account(account_id: str, uow) -> Account:
    return _existing(_get(uow.accounts.get, account_id))


def find_account_for_update(account_id: str, uow) -> Account:
    """The account, locked until the transaction ends and read as it is now: what changes it
    (its addresses, its tier) is done one request at a time, each seeing what the one before
    did (two requests counting addresses at once would both find room for one more)."""
    return _existing(_get(uow.accounts.get_for_update, account_id))


def _get(read, account_id: str) -> Account | None:
    try:
        return read(uuid.UUID(account_id))
    except ValueError:
        return None


def _existing(account: Account | None) -> Account:
    if account is None:
        raise AccountNotFound("This account no longer exists.")
    return account


def create_admin(cmd: dict, uow, passwords: Passwords) -> Account:
    """Make `cmd["email"]` an admin signing in with `cmd["password"]`: registered if new,
    promoted (and its password set) if it exists, so the command can be run again safely.

    An existing account's sessions are all ended: whoever signed in to it before (the person
    who registered an address an admin later takes, or the thief of a password being reset)
    must not refresh their way to an admin's token."""
    found = uow.accounts.by_email(cmd["email"])
    if found is None:
        return register_account(cmd, uow, passwords, role="admin")
    uow.rollback()
    password_hash = passwords.hash(cmd["password"])  # holding no transaction, nor the account's lock
    # Locked: a sign-in in flight starts its session before the reset, or not at all.
    account = _existing(uow.accounts.get_for_update(found.id))
    account.role = "admin"
    account.password_hash = password_hash
    account.password_version += 1
    if cmd.get("name"):
        account.name = cmd["name"]
    ended = uow.sessions.revoke_all(account.id, utc_now(), "made-admin")
    log.warning("existing account made admin; its sessions ended",
                extra={"account_id": str(account.id), "sessions_ended": ended})
    return account


def rotate_keys(
    uow, key_encryption: KeyEncryptionKeys, retire_superseded_for: timedelta | None = None,
    published_for: timedelta = timedelta(0),
) -> tuple[SigningKey, list[SigningKey]]:
    """Publish a new key, which signs once it has been published for `published_for` (at once
    if every other key is retired; see `signing_key`). The previous keys stay published; with
    `retire_superseded_for`, those that stopped signing at least that long ago are retired
    (their tokens have expired once it exceeds the token lifetime; zero retires them all now)."""
    now = utc_now()
    uow.signing_keys.lock()
    previous = uow.signing_keys.active()
    key = tokens.new_signing_key(now, key_encryption)
    uow.signing_keys.add(key)
    retired = []
    if retire_superseded_for is not None:
        # previous is newest first: each key stops signing once the one before it has been
        # published for `published_for`
        superseded_at = [now + published_for] + [older.created_at + published_for for older in previous[:-1]]
        for old, since in zip(previous, superseded_at):
            if retire_superseded_for == timedelta(0) or now - since >= retire_superseded_for:
                old.retired_at = now
                retired.append(old)
    return key, retired


def reencrypt_signing_keys(uow, key_encryption: KeyEncryptionKeys) -> dict[str, int]:
    """Encrypt every stored signing key (retired ones too) with the newest KEK: keys stored in
    clear before encryption, and keys under an older KEK, which can be removed afterwards.
    `SigningKeyUnreadable` if a KEK that encrypted one is missing (nothing is then changed)."""
    uow.signing_keys.lock()
    counts = {"encrypted": 0, "reencrypted": 0, "current": 0}
    for key in uow.signing_keys.all():
        if key.encrypted_private_key is None:
            key.encrypted_private_key = key_encryption.encrypt(key.kid, key.private_key_pem)
            key.private_key_pem = None
            counts["encrypted"] += 1
        elif key_encryption.is_current(key.encrypted_private_key):
            counts["current"] += 1
        else:
            pem = key_encryption.decrypt(key.kid, key.encrypted_private_key)
            key.encrypted_private_key = key_encryption.encrypt(key.kid, pem)
            counts["reencrypted"] += 1
    return counts


def purge_spent_refresh_tokens(uow, retention: timedelta, batch_size: int) -> dict[str, int]:
    """Delete refresh tokens spent more than `retention` ago (expired, or of a revoked session),
    then the sessions left without any token, `batch_size` rows per
    transaction so that sign-ins and refreshes never wait long behind it. Returns how many of
    each went.

    A used token is kept until it has expired like the others: until then a copy of it could
    still be presented, and is recognised as a theft that revokes its session. Once purged it is
    refused as unknown, without the revocation, by then as any expired token would be."""
    cutoff = utc_now() - retention
    purges = {
        "expired": uow.refresh_tokens.delete_expired_before,
        "revoked": uow.refresh_tokens.delete_of_sessions_revoked_before,
        "sessions": uow.sessions.delete_without_tokens_before,
    }
    deleted = dict.fromkeys(purges, 0)
    for what, delete in purges.items():
        while True:
            count = delete(cutoff, batch_size)
            uow.commit()
            deleted[what] += count
            if count < batch_size:
                break
    return deleted


def issue_invite(cmd: dict, uow, issued_by: str | None = None) -> Invite:
    """A new invite code for `cmd["tier"]`; `invite.issued` when it is for a person (`email`),
    so notifications can send it."""
    now = utc_now()
    invite = Invite(
        id=uuid.uuid4(),
        code="".join(secrets.choice(INVITE_ALPHABET) for _ in range(INVITE_CODE_LENGTH)),
        email=cmd.get("email"),
        tier=cmd["tier"],
        max_uses=cmd.get("max_uses", 1),
        uses=0,
        expires_at=cmd.get("expires_at"),
        created_at=now,
        created_by=uuid_or_none(issued_by),
    )
    uow.invites.add(invite)
    if invite.email:
        uow.publish(
            "invite.issued",
            {
                "invite_id": str(invite.id),
                "code": display_code(invite.code),
                "email": invite.email,
                "tier": invite.tier,
                "expires_at": invite.expires_at.isoformat() if invite.expires_at else None,
            },
        )
    return invite


def redeem_invite(code: str, account: Account, uow, field: str = "code") -> Account:
    """Give `account` the invite's tier. Redeeming the same invite again changes nothing; an
    unknown, expired, used-up or someone else's code is one `InviteNotUsable` on `field`."""
    invite = uow.invites.by_code_for_update(normalise_code(code))
    now = utc_now()
    if invite is None or (invite.email and invite.email != account.email):
        raise InviteNotUsable(field)
    if uow.invites.redeemed_by(invite.id, account.id):
        return account
    if (invite.expires_at is not None and invite.expires_at <= now) or invite.uses >= invite.max_uses:
        raise InviteNotUsable(field)
    invite.uses += 1
    uow.invites.add_redemption(InviteRedemption(invite_id=invite.id, account_id=account.id, redeemed_at=now))
    account.tier = invite.tier
    return account


def redeem_invite_for(account_id: str, code: str, uow) -> Account:
    """`redeem_invite` for an existing account, locked and read afresh first: a double click's
    second request waits for the first and answers the tier it gave, not the account as it was."""
    return redeem_invite(code, find_account_for_update(account_id, uow), uow)


def normalise_code(code: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", code.upper())


def display_code(code: str) -> str:
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def save_address(account_id: str, fields: dict, uow, max_addresses: int = 20) -> Address:
    """Validate and normalise `fields` for their country (`shared.addresses`) and save them for
    the account; `InvalidAddress` (422, per field) when the country's rules refuse them, and
    `TooManyAddresses` (409) past `max_addresses`, however many are saved at once."""
    normalised = postal.normalise(fields)  # a refusal takes no lock
    account = find_account_for_update(account_id, uow)
    if len(uow.addresses.of(account.id)) >= max_addresses:
        raise TooManyAddresses(f"Keep at most {max_addresses} addresses; delete one first.")
    address = Address(id=uuid.uuid4(), account_id=account.id, created_at=utc_now(), **normalised)
    uow.addresses.add(address)
    return address


def addresses_of(account_id: str, uow) -> list[Address]:
    return uow.addresses.of(find_account(account_id, uow).id)


def find_address(account_id: str | None, address_id: str, uow) -> Address:
    """The address, if it belongs to `account_id` (any account's for `None`, the service
    lookup); another buyer's address is as unknown as a missing one."""
    address = uow.addresses.get(uuid_or_none(address_id)) if uuid_or_none(address_id) else None
    if address is None or (account_id is not None and str(address.account_id) != account_id):
        raise AddressNotFound("No such address.")
    return address


def delete_address(account_id: str, address_id: str, uow) -> None:
    uow.addresses.delete(find_address(account_id, address_id, uow))

