"""Password hashing: argon2id at OWASP's parameters, bounded per process."""
from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cached_property
from typing import Iterator

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from services.accounts.errors import RegistrationBusy, SignInBusy

MIN_LENGTH = 10
# Long enough for any passphrase; short enough that a request cannot make hashing expensive.
MAX_LENGTH = 1024

# OWASP Password Storage Cheat Sheet: argon2id, 19 MiB, 2 iterations, 1 degree of parallelism.
OWASP_ARGON2ID = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16, type=Type.ID)


class Passwords:
    """Hashes and checks passwords, at most `concurrency` at a time in this process, each on one
    of `concurrency` threads of its own.

    Each hash or check allocates argon2's 19 MiB. glibc gives every thread that allocates its
    own arena and keeps what was freed there for that arena's next use: when any of a worker's
    24 request threads hashed in turn, a sign-up storm left the accounts worker holding about
    that much for each of them (90 MiB at rest, 280 MiB after 200 sign-ups in `make bench`, a
    quarter of the whole stack's memory). On its own threads, argon2 keeps at most
    `concurrency` x 19 MiB.

    Registrations hash in at most half the slots (at least one): a sign-up flood before a drop
    must never take every slot and turn buyers signing in away (`SignInBusy`)."""

    def __init__(self, hasher: PasswordHasher = OWASP_ARGON2ID, concurrency: int = 2, wait_seconds: float = 5.0):
        self._hasher = hasher
        concurrency = max(1, concurrency)
        self._slots = threading.BoundedSemaphore(concurrency)
        self._registration_slots = threading.BoundedSemaphore(max(1, concurrency // 2))
        # its threads start at the first hash, in the worker (never in gunicorn's master)
        self._hashing = ThreadPoolExecutor(concurrency, thread_name_prefix="argon2")
        self._wait = wait_seconds

    def hash(self, password: str, registering: bool = False) -> str:
        """The password's hash. `registering` (a new account) takes one of the registrations'
        slots, then a shared one, both within the one wait (`RegistrationBusy` if either comes
        too late); otherwise a shared slot (`SignInBusy`)."""
        deadline = time.monotonic() + self._wait
        if registering:
            with self._slot(self._registration_slots, deadline, RegistrationBusy), self._slot(self._slots, deadline, RegistrationBusy):
                return self._hashing.submit(self._hasher.hash, password).result()
        with self._slot(self._slots, deadline):
            return self._hashing.submit(self._hasher.hash, password).result()

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True when `password` matches. With no hash (an unknown email) a dummy hash is checked
        all the same, so a wrong email costs as long as a wrong password."""
        with self._slot(self._slots, time.monotonic() + self._wait):
            matched = self._hashing.submit(self._check, password_hash or self._dummy_hash, password).result()
        return matched and password_hash is not None

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)

    @cached_property
    def _dummy_hash(self) -> str:
        return self._hashing.submit(self._hasher.hash, secrets.token_urlsafe(16)).result()

    @contextmanager
    def _slot(self, slots: threading.BoundedSemaphore, deadline: float,
              busy: type[SignInBusy | RegistrationBusy] = SignInBusy) -> Iterator[None]:
        """One of `slots`, held for the block, if one comes free by `deadline`; else `busy`."""
        if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise busy()
        try:
            yield
        finally:
            slots.release()
