"""How long a sign-in key waits after failures: free attempts, then a doubling back-off.

An attempt is counted as a failure when it starts, before its password is checked (a
`Reservation`), and given back if the password is right: attempts fired at one key at once are
counted one after the other, so no more of them get their password checked than the policy
allows, however many are in flight."""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class BackoffPolicy:
    """After `free_failures` failures within `window`, each further failure doubles the wait,
    from `base` up to `ceiling`. Failures older than `window` are forgotten."""

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


@dataclass(frozen=True)
class SignInThrottle:
    """The keys a sign-in is counted against: the account tried from the client trying (strict),
    the account from every client (loose), and the client trying, whatever the account.

    The strict key is per account *and* client: failures from one client never lock the owner
    out from another. The account's own key brakes guessing spread over many clients, with a
    wait of at most a minute: guessers with enough clients to pass its free failures can keep an
    owner waiting that long at a time (the README's "Sign-in throttling" says what that costs),
    never locked out for the whole drop.

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
        keys = {f"account:{email}": self.per_account, self.owners_key(email, client): self.per_account_and_client}
        if client:
            keys[f"client:{client_key(client)}"] = self.per_client
        return keys

    def owners_key(self, email: str, client: str | None) -> str:
        """The strict key, the one a right password clears: the account's failures from this client."""
        return f"client:{client_key(client)}|account:{email}"


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
    remembered = failures if failures and last_failure_at is not None and last_failure_at >= now - policy.window else 0
    wait = policy.wait_after(remembered + 1)
    return Reservation(
        key,
        now,
        failures=remembered + 1,
        previous_failure_at=last_failure_at if failures else None,
        blocks_until=now + wait if wait is not None else None,
    )
