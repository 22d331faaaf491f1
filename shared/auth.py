"""Verification of the accounts service's tokens, locally, from its cached JWKS.

Checkout and inventory never call accounts on the order path: the JWKS is fetched and kept.
A request refreshes it only when its token names a key id we do not know, at most once per
`min_refresh_seconds`, so a flood of forged key ids cannot turn into a flood of fetches.

Under gunicorn every worker fetches the keys as it starts (retrying with capped back-off until
accounts answers once), so a buyer who signed in before an accounts outage is verified by any
worker during it, not only by the workers that happened to see a token before. The same thread
then fetches them again every `max_age_seconds`, so a key accounts retires (a compromised one)
stops verifying everywhere within that, whatever tokens a worker happens to see.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import wraps
from pathlib import Path
from typing import Callable

import jwt
import requests
from flask import current_app, g, request

from shared.errors import Forbidden, ServiceUnavailable, Unauthorized

ALGORITHMS = ("ES256",)
TOKEN_ROLES = ("buyer", "admin")
WARM_UP_MAX_DELAY_SECONDS = 10.0
# After a failed fetch, an unknown key id fetches again this soon (not min_refresh_seconds): a key
# accounts has just begun signing with is learnt within seconds once accounts answers again.
FAILED_FETCH_RETRY_SECONDS = 2.0
log = logging.getLogger("floodgate.auth")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a buyer, an admin, or another service."""

    subject: str
    role: str
    email: str | None = None
    tier: str | None = None
    # when the buyer's account was made (tokens from before this claim existed carry none)
    account_created_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        """Admins may use every admin endpoint and see every buyer's orders."""
        return self.role == "admin"


class KeySet:
    """The accounts service's public keys, fetched lazily and refreshed at a bounded rate."""

    def __init__(
        self,
        jwks_url: str,
        min_refresh_seconds: float = 30.0,
        fetch: Callable[[str], dict] | None = None,
        cache_file: str = "",
        max_age_seconds: float = 300.0,
    ):
        self._url = jwks_url
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._fetch = fetch or _http_fetch
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_fetch = float("-inf")
        self._last_fetch_failed = False
        self._lock = threading.Lock()
        # The last good JWKS is kept on disk, so a worker started while accounts is down (after
        # another one crashed, say) still knows the keys its siblings verified with.
        self._cache = Path(cache_file) if cache_file else None
        if self._cache is not None and self._cache.exists():
            try:
                self._keys = _usable_keys(json.loads(self._cache.read_text()))
            except (OSError, ValueError, AttributeError, KeyError, TypeError):
                log.warning("ignoring unreadable JWKS cache", extra={"path": str(self._cache)})

    def key(self, kid: str) -> jwt.PyJWK | None:
        """The public key with id `kid`, refreshing the set once if it is unknown and allowed:
        every `min_refresh_seconds`, or every FAILED_FETCH_RETRY_SECONDS after a fetch failed."""
        found = self._keys.get(kid)
        if found is not None:
            return found
        with self._lock:
            wait = min(self._min_refresh, FAILED_FETCH_RETRY_SECONDS) if self._last_fetch_failed else self._min_refresh
            if kid not in self._keys and time.monotonic() - self._last_fetch >= wait:
                self._refresh()
        return self._keys.get(kid)

    @property
    def last_fetch_failed(self) -> bool:
        """Whether the last fetch of the set brought no usable key (accounts away, swamped, or
        answering something else): an unknown key id may be a new key not fetched yet."""
        return self._last_fetch_failed

    @property
    def loaded(self) -> bool:
        """True once a fetch has brought at least one usable key."""
        return bool(self._keys)

    def warm_up(self, max_delay: float = WARM_UP_MAX_DELAY_SECONDS) -> None:
        """Fetch the keys until one fetch succeeds, backing off up to `max_delay` seconds with
        jitter, so workers starting together do not stampede. Keys read from the disk cache are
        fetched again once all the same (one retired since must not verify here), and kept if
        accounts does not answer."""
        delay = 0.2
        while True:
            with self._lock:
                fetched = self._refresh(quiet=True)
            if fetched or self.loaded:
                return
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(max_delay, delay * 2)

    def keep_fresh(self, stop: threading.Event | None = None) -> None:
        """Warm up, then fetch the keys again every `max_age_seconds` (jittered) until `stop`
        is set: a retired key stops verifying here within that. Runs on a thread of its own."""
        stop = stop or threading.Event()
        self.warm_up()
        while not stop.wait(self._max_age * random.uniform(0.8, 1.0)):
            with self._lock:
                self._refresh(quiet=True)

    def _refresh(self, quiet: bool = False) -> bool:
        """Fetch the key set; True when it brought usable keys (they replace the ones held)."""
        self._last_fetch = time.monotonic()
        self._last_fetch_failed = True
        try:
            document = self._fetch(self._url)
            keys = _usable_keys(document)
        except Exception:  # keep serving the keys we have; the next unknown kid retries later
            log.warning("could not fetch JWKS", extra={"jwks_url": self._url}, exc_info=not quiet)
            return False
        if not keys:  # a set with no usable key (a proxy's answer, a bad deploy) is not a rotation
            log.warning("JWKS has no usable key; keeping the keys we have", extra={"jwks_url": self._url})
            return False
        self._last_fetch_failed = False
        retired = self._keys.keys() - keys.keys()
        if retired:
            log.info("JWKS keys no longer published; tokens they signed are refused",
                     extra={"kids": sorted(retired)})
        # A key published as before stays the same object: the verifier's remembered tokens are
        # tied to the key object that verified them, and would all be verified again otherwise.
        self._keys = {kid: self._keys[kid] if _same_key(self._keys.get(kid), key) else key for kid, key in keys.items()}
        if self._cache is not None:
            try:
                partial = self._cache.with_name(f"{self._cache.name}.{os.getpid()}")
                partial.write_text(json.dumps(document))
                partial.replace(self._cache)  # atomic: a reader never sees half a file
            except OSError:
                log.warning("could not write the JWKS cache", extra={"path": str(self._cache)})
        return True


def _usable_keys(document: dict) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document; raises for a document that is not one."""
    keys = {}
    for entry in document["keys"]:
        try:
            if entry.get("kid") and entry.get("alg") in ALGORITHMS:
                keys[entry["kid"]] = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError):  # bad base64 is a ValueError (binascii.Error)
            log.warning("ignoring unusable JWK", extra={"kid": str(entry.get("kid"))[:100]})
    return keys


def _same_key(held: jwt.PyJWK | None, fetched: jwt.PyJWK) -> bool:
    """Whether `fetched` is the very key `held` is (the same public numbers, algorithm and id)."""
    if held is None:
        return False
    return (held.key_id, held.algorithm_name, held.key.public_numbers()) == (
        fetched.key_id, fetched.algorithm_name, fetched.key.public_numbers())


def _http_fetch(url: str) -> dict:
    response = requests.get(url, timeout=3)
    response.raise_for_status()
    return response.json()


# Verified tokens a process remembers (about 1 KiB each).
VERIFIED_TOKENS_KEPT = 20_000


class TokenVerifier:
    """Checks a bearer token's signature, algorithm, key id, issuer, audience and lifetime
    (expired, and not yet valid by `nbf` or a future `iat`, are both refused)."""

    def __init__(self, keys: KeySet, issuer: str, audience: str, leeway_seconds: int = 5,
                 remembered: int = VERIFIED_TOKENS_KEPT, clock: Callable[[], float] = time.time):
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._clock = clock
        # Tokens already verified, with what they said: a buyer polling an order sends the same
        # token every second, and an ES256 verification costs more than the rest of the request.
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        self._remembered = remembered
        self._verified_lock = threading.Lock()

    @property
    def keys(self) -> KeySet:
        """The key set this verifier checks signatures against."""
        return self._keys

    def verify(self, token: str) -> Principal:
        """The token's principal, or `Unauthorized` with a generic reason.

        A token verified before is answered from memory until it expires, as long as the key that
        signed it is still in the key set; any other token is verified in full."""
        with self._verified_lock:
            known = self._verified.get(token)
            if known is not None:
                self._verified.move_to_end(token)
        if known is not None:
            if self._clock() >= known.expires + self._leeway:
                with self._verified_lock:
                    self._verified.pop(token, None)
                raise Unauthorized("The access token has expired.")
            if self._keys.key(known.kid) is known.key:
                return known.principal
        principal, verified = self._verify(token)
        with self._verified_lock:
            self._verified[token] = verified
            while len(self._verified) > self._remembered:
                self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, "_Verified"]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("The access token is malformed.")
        if header.get("alg") not in ALGORITHMS:
            raise Unauthorized("The access token's algorithm is not accepted.")
        key = self._keys.key(str(header.get("kid", "")))
        if key is None and (not self._keys.loaded or self._keys.last_fetch_failed):
            # A process that has never had the keys (a new pod while accounts is down or swamped),
            # or whose last fetch failed (likely as accounts, swamped by a sign-in rush, began
            # signing with a new key), cannot tell a good token from a bad one: the buyer's token
            # may be fine, so not 401, which would send them to sign in again, into the storm.
            raise ServiceUnavailable("The keys that verify access tokens are not here yet; retry shortly.",
                                     retry_after=2)
        if key is None:
            raise Unauthorized("The access token was signed by an unknown key.")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(ALGORITHMS),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The access token has expired.")
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The access token is not valid yet.")
        except jwt.PyJWTError:
            raise Unauthorized("The access token is not valid.")
        role, tier, email = claims.get("role", "buyer"), claims.get("tier"), claims.get("email")
        account_created = claims.get("acct")
        if (
            role not in TOKEN_ROLES
            or not isinstance(claims["sub"], str)
            or not isinstance(tier, (str, type(None)))
            or not isinstance(email, (str, type(None)))
            or not isinstance(account_created, (int, float, type(None)))
            or isinstance(account_created, bool)
        ):
            raise Unauthorized("The access token is not valid.")
        try:  # a time out of any calendar's range (an accounts writing milliseconds, say): a 401, not a 500
            created_at = None if account_created is None else datetime.fromtimestamp(account_created, timezone.utc)
        except (OverflowError, ValueError, OSError):
            raise Unauthorized("The access token is not valid.") from None
        principal = Principal(subject=claims["sub"], role=role, email=email, tier=tier, account_created_at=created_at)
        return principal, _Verified(principal, float(claims["exp"]), str(header.get("kid", "")), key)


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    expires: float
    kid: str
    key: object


def jwks_verifier(settings) -> TokenVerifier:
    """The verifier of every service but accounts: keys fetched from accounts' JWKS_URL. In a
    gunicorn worker it starts fetching them at once, and again every JWKS_MAX_AGE_SECONDS, in
    the background."""
    keys = KeySet(settings.jwks_url, settings.jwks_min_refresh_seconds, cache_file=settings.jwks_cache_file,
                  max_age_seconds=settings.jwks_max_age_seconds)
    keep_fresh_in_worker(keys)
    return TokenVerifier(keys, settings.jwt_issuer, settings.jwt_audience)


def keep_fresh_in_worker(keys: KeySet) -> None:
    """In a gunicorn worker (never its master, nor a command-line tool), start `keys.keep_fresh`
    on a thread of its own."""
    if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn"):
        threading.Thread(target=_keep_fresh_later, args=(keys,), name="jwks-refresh", daemon=True).start()


def init_app(app, verifier: TokenVerifier, service_key: str) -> None:
    """Make `verifier` and the service key available to the decorators below."""
    app.extensions["floodgate.auth"] = (verifier, service_key)


def _keep_fresh_later(keys: KeySet) -> None:
    time.sleep(random.uniform(0.1, 0.5))  # spreads workers that start together apart
    keys.keep_fresh()


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send an access token as 'Authorization: Bearer <token>'.")
    return token.strip()


def current_principal() -> Principal:
    """The verified caller of this request (verified once per request)."""
    if "principal" not in g:
        verifier, _ = current_app.extensions["floodgate.auth"]
        g.principal = verifier.verify(_bearer())
    return g.principal


def require_user(view):
    """Any signed-in buyer or admin."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        current_principal()
        return view(*args, **kwargs)

    return wrapper


def require_admin(view):
    """Admins only; buyers get 403."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if not current_principal().is_admin:
            raise Forbidden("This endpoint is for administrators.")
        return view(*args, **kwargs)

    return wrapper


def presents_service_key() -> bool:
    """Whether this request carries the shared service key (another Floodgate service, a tool)."""
    _, service_key = current_app.extensions["floodgate.auth"]
    return is_service_key(request.headers.get("X-Service-Key", ""), service_key)


def is_service_key(presented: str, service_key: str) -> bool:
    """Whether `presented` (an X-Service-Key header's value) is the shared service key, compared
    in constant time."""
    return bool(presented) and hmac.compare_digest(presented.encode(), service_key.encode())


def require_service(view):
    """Other Floodgate services only, identified by the shared service key; never a buyer token."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if not presents_service_key():
            raise Unauthorized("This endpoint is for Floodgate services.")
        g.principal = Principal(subject="service", role="service")
        return view(*args, **kwargs)

    return wrapper
