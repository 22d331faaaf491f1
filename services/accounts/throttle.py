"""How long a sign-in or registration key waits after failures: free attempts, then a doubling
back-off.

A sign-in is counted as a failure of the account's keys when it starts, before its password is
checked (a `Reservation`), and given back if the password is right: attempts fired at one key
at once are counted one after the other, so no more of them get their password checked than the
policy allows, however many are in flight. The client's own key counts only passwords that
proved wrong (`count_failure`): many buyers behind one address sign in at once, and right
passwords in flight must not use up its free failures. A registration is counted when it starts
and given back only when no hashing slot came free for it (`registration-busy`)."""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class BackoffPolicy:
    """After `free_failures` failures within `window`, each further failure doubles the wait,
    from `base` up to `ceiling`. Failures are forgotten `window` after the last one's wait ended
    (`remembers`)."""

    free_failures: int
    base: timedelta
    ceiling: timedelta
    window: timedelta

    def wait_after(self, failures: int) -> timedelta | None:
        """How long the key is refused after its `failures`-th failure, or None."""
        if failures < self.free_failures:
            return None
        doublings = min(failures - self.free_failures, 32)
        return min(self.ceiling, self.base * (2**doublings))

    def remembers(self, failures: int) -> timedelta:
        """How long after a key's `failures`-th failure its failures are remembered: the window,
        counted from the end of the wait that failure started. Counted from the failure itself, a
        ceiling as long as the window (15 minutes for an account from one client) forgot them
        all as the wait ended: a guesser trying again then had the free failures and the
        doubling from one second anew, about 15 guesses every 32 minutes instead of one every 15."""
        return self.window + (self.wait_after(failures) or timedelta(0))


@dataclass(frozen=True)
class SignInThrottle:
    """The keys a sign-in is counted against: the account tried from the client trying (strict),
    the account from every client (loose), both when it starts; and the client trying, whatever
    the account, once its password proved wrong.

    The strict key is per account *and* client: failures from one client never lock the owner
    out from another. The account's own key brakes guessing spread over many clients, with a
    wait of at most a minute at a time: guessers with enough clients to pass its free failures,
    who keep guessing as each wait ends, keep the owner out for as long as they keep at it (the
    README's "Sign-in throttling" says what that costs, and what was left undone).

    The client comes first in the strict key (`client:<client>|account:<email>`): the email is
    whatever was typed, so with the email first, typing `<email>|client:<client>` would have made
    the guesser's loose account key the owner's strict key. A client key holds no `|`."""

    per_account_and_client: BackoffPolicy
    per_account: BackoffPolicy
    per_client: BackoffPolicy

    @classmethod
    def from_settings(cls, settings) -> "SignInThrottle":
        """The policies the `LOGIN_*` settings of `services.accounts.config.Settings` describe."""
        base, window = timedelta(seconds=settings.login_backoff_base_seconds), timedelta(seconds=settings.login_failure_window_seconds)

        def policy(free_failures: int, max_seconds: float) -> BackoffPolicy:
            return BackoffPolicy(free_failures, base, timedelta(seconds=max_seconds), window)

        return cls(
            per_account_and_client=policy(settings.login_account_free_failures, settings.login_account_backoff_max_seconds),
            per_account=policy(settings.login_account_all_clients_free_failures,
                               settings.login_account_all_clients_backoff_max_seconds),
            per_client=policy(settings.login_client_free_failures, settings.login_client_backoff_max_seconds),
        )

    def keys(self, email: str, client: str | None) -> dict[str, BackoffPolicy]:
        """The keys an attempt is counted against when it starts (see `Reservation`)."""
        return {f"account:{email}": self.per_account, self.owners_key(email, client): self.per_account_and_client}

    def clients_key(self, client: str | None) -> str | None:
        """The client's key, whatever the account (None: no client known). Refused like the
        others before any password is checked, but counted only once a password proved wrong:
        it is the key buyers behind one address (carrier NAT, a campus) share, and their right
        passwords being checked at once must not add up to its limit."""
        return f"client:{client_key(client)}" if client else None

    def owners_key(self, email: str, client: str | None) -> str:
        """The strict key, the one a right password clears: the account's failures from this client."""
        return f"client:{client_key(client)}|account:{email}"


@dataclass(frozen=True)
class RegistrationThrottle:
    """How many registrations a client may start: every attempt counts, when it starts, whatever
    its answer but one (no hashing slot came free: `registration-busy`, given back). An `email-taken` answer counts too, so a client
    cannot quickly probe which emails have accounts. Refused past `per_client`'s free attempts,
    before the email is looked up or the password hashed: a bot signing up in bulk before a drop
    costs no hashing, which buyers' sign-ins need."""

    per_client: BackoffPolicy

    @classmethod
    def from_settings(cls, settings) -> "RegistrationThrottle":
        """`REGISTRATION_CLIENT_FREE_ATTEMPTS` within the sign-ins' `LOGIN_FAILURE_WINDOW_SECONDS`,
        then a wait doubling from `LOGIN_BACKOFF_BASE_SECONDS` up to
        `REGISTRATION_CLIENT_BACKOFF_MAX_SECONDS`."""
        return cls(BackoffPolicy(settings.registration_client_free_attempts,
                                 timedelta(seconds=settings.login_backoff_base_seconds),
                                 timedelta(seconds=settings.registration_client_backoff_max_seconds),
                                 timedelta(seconds=settings.login_failure_window_seconds)))

    def key(self, client: str | None) -> str:
        return f"register:{client_key(client)}"


# The longest a client is kept as (an IPv6 /64: "ffff:ffff:ffff:ffff::/64"), so that every key
# of an email of 254 characters fits the 300 of its column.
CLIENT_KEY_MAX_LENGTH = 24


def client_key(client: str | None) -> str:
    """The client as the throttle counts it: an IPv4 address as it is, an IPv6 address by its
    /64 (one subscriber's network, whose addresses they can rotate through at will), an IPv4
    address written as IPv6 as the IPv4 one. What is not an address is kept, cut short and
    without `|` (see `SignInThrottle`)."""
    if not client:
        return "unknown"
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client[:CLIENT_KEY_MAX_LENGTH].replace("|", "_")
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def key_kind(key: str) -> str:
    """What a key counts, for the logs (never the email or the address)."""
    if key.startswith("account:"):
        return "account"
    if key.startswith("register:"):
        return "registrations"
    return "account-and-client" if "|account:" in key else "client"


def retry_after_seconds(blocked_until: datetime, now: datetime) -> int:
    return max(1, math.ceil((blocked_until - now).total_seconds()))


@dataclass(frozen=True)
class Reservation:
    """One sign-in attempt at `key`, counted at `at` as a failure until its password proves right.

    `refused_until` is set when the key was refused: nothing was counted, no password may be
    checked. Otherwise `failures` is the key's count with this attempt, `previous_failure_at` the
    key's last failure before it (None: none counted) and `blocks_until` the wait this attempt
    started, if it was the one that used up the free failures."""

    key: str
    at: datetime
    refused_until: datetime | None = None
    failures: int = 0
    previous_failure_at: datetime | None = None
    blocks_until: datetime | None = None


def reserve(
    key: str,
    policy: BackoffPolicy,
    now: datetime,
    failures: int,
    last_failure_at: datetime | None,
    blocked_until: datetime | None,
) -> Reservation:
    """An attempt at `key`, whose row (read under its lock) holds `failures`, `last_failure_at`
    and `blocked_until` (0, None, None: no row yet): refused while blocked, else counted, failures
    older than the policy's window forgotten, and blocked if that was one failure too many."""
    if blocked_until is not None and blocked_until > now:
        return Reservation(key, now, refused_until=blocked_until)
    return count_failure(key, policy, now, failures, last_failure_at)


def count_failure(key: str, policy: BackoffPolicy, now: datetime, failures: int, last_failure_at: datetime | None) -> Reservation:
    """A failure at `key`, whose row holds `failures` and `last_failure_at` (0, None: no row
    yet), counted whether or not the key is blocked: failures older than the policy's window
    forgotten, and a block started if that was one failure too many (a block already running
    for longer is kept by the caller)."""
    remembered = failures if failures and last_failure_at is not None and last_failure_at + policy.remembers(failures) >= now else 0
    wait = policy.wait_after(remembered + 1)
    return Reservation(
        key,
        now,
        failures=remembered + 1,
        previous_failure_at=last_failure_at if failures else None,
        blocks_until=now + wait if wait is not None else None,
    )
