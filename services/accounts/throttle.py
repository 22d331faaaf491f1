"""How long a sign-in key waits after failures: free attempts, then a doubling back-off."""
from __future__ import annotations

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
    """The two keys a sign-in is counted against: the account tried and the client trying."""

    per_account: BackoffPolicy
    per_client: BackoffPolicy

    def keys(self, email: str, client: str | None) -> dict[str, BackoffPolicy]:
        keys = {f"account:{email}": self.per_account}
        if client:
            keys[f"client:{client}"] = self.per_client
        return keys


def retry_after_seconds(blocked_until: datetime, now: datetime) -> int:
    return max(1, math.ceil((blocked_until - now).total_seconds()))
