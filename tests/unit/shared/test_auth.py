"""Token verification against a JWKS served by a fake fetcher."""
from __future__ import annotations

import json
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from devtools.client import poll
from shared.auth import KeySet, TokenVerifier
from shared.errors import ServiceUnavailable, Unauthorized

ISSUER, AUDIENCE = "floodgate-accounts", "floodgate"


class FakeJwks:
    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = "k1"
        self.fetches = 0

    def __call__(self, url):
        self.fetches += 1
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [dict(public, kid=self.kid, alg="ES256", use="sig")]}

    def token(self, kid="k1", key=None, **claims):
        now = int(time.time())
        body = {"sub": "buyer-1", "role": "buyer", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60}
        body.update(claims)
        return jwt.encode(body, key or self.key, algorithm="ES256", headers={"kid": kid})


@pytest.fixture
def jwks():
    return FakeJwks()


@pytest.fixture
def verifier(jwks):
    return TokenVerifier(KeySet("http://accounts/jwks", min_refresh_seconds=60, fetch=jwks), ISSUER, AUDIENCE)


def test_a_good_token_gives_its_principal_and_the_keys_are_fetched_once(verifier, jwks):
    for _ in range(3):
        principal = verifier.verify(jwks.token(tier="early"))
    assert (principal.subject, principal.role, principal.tier) == ("buyer-1", "buyer", "early")
    assert jwks.fetches == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda j: jwt.encode({"sub": "x", "iss": ISSUER, "aud": AUDIENCE}, None, algorithm="none"),
        lambda j: jwt.encode({"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": 9999999999}, "an-attacker-chosen-secret-of-32-bytes", algorithm="HS256"),
        lambda j: j.token(exp=int(time.time()) - 60),
        lambda j: j.token(aud="another-audience"),
        lambda j: j.token(iss="someone-else"),
        lambda j: j.token(iat=None),
        lambda j: j.token(nbf=int(time.time()) + 600),
        lambda j: j.token(iat=int(time.time()) + 600, exp=int(time.time()) + 1200),
        lambda j: j.token(role="service"),
        lambda j: j.token(sub=12345),
        lambda j: j.token(tier={"not": "a tier"}),
        lambda j: j.token(acct="yesterday"),
        lambda j: j.token(acct=1e20),  # out of the calendar's range: an OverflowError, a 500
        lambda j: j.token(acct=-1e13),
        lambda j: j.token(key=ec.generate_private_key(ec.SECP256R1())),
        lambda j: "not-a-token",
    ],
    ids=["alg-none", "hs256", "expired", "audience", "issuer", "no-iat", "not-before-in-future", "issued-in-future",
         "service-role", "numeric-subject", "tier-not-text", "acct-not-a-time", "acct-past-the-calendar",
         "acct-before-it", "wrong-signature", "garbage"],
)
def test_bad_tokens_are_refused(verifier, jwks, make):
    with pytest.raises(Unauthorized):
        verifier.verify(make(jwks))


def test_unknown_key_ids_refetch_at_a_bounded_rate(verifier, jwks):
    for _ in range(50):
        with pytest.raises(Unauthorized):
            verifier.verify(jwks.token(kid="forged-kid"))
    assert jwks.fetches == 1


def test_a_new_key_met_while_its_fetch_fails_answers_503_and_is_fetched_again_within_seconds(jwks, monkeypatch):
    """A worker knew key k1; accounts began signing with k2 in a sign-in rush, and the fetch that
    k2's first token set off timed out. Every buyer signed in since was answered 401 ("unknown
    key") for the next 30 s, and again after each fetch that failed."""
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    verifier = TokenVerifier(KeySet("http://accounts/jwks", min_refresh_seconds=30, fetch=jwks), ISSUER, AUDIENCE)
    assert verifier.verify(jwks.token()).subject == "buyer-1"
    old_key, jwks.key, jwks.kid = jwks.key, ec.generate_private_key(ec.SECP256R1()), "k2"
    fetch, down = jwks.__call__, [True]
    verifier._keys._fetch = lambda url: (_ for _ in ()).throw(TimeoutError("accounts swamped")) if down[0] else fetch(url)
    clock.now += 31

    with pytest.raises(ServiceUnavailable) as busy:
        verifier.verify(jwks.token(kid="k2"))
    assert busy.value.status == 503 and busy.value.headers["Retry-After"] == "2"
    clock.now += 1
    with pytest.raises(ServiceUnavailable):  # not fetched again at once: forged ids cannot flood it
        verifier.verify(jwks.token(kid="k2"))
    down[0] = False
    clock.now += 1.5
    assert verifier.verify(jwks.token(kid="k2")).subject == "buyer-1"
    # fetched fine: an unknown id is refused again, and fetched no sooner than every 30 s
    fetches = jwks.fetches
    with pytest.raises(Unauthorized):
        verifier.verify(jwks.token(kid="forged", key=old_key))
    clock.now += 5
    with pytest.raises(Unauthorized):
        verifier.verify(jwks.token(kid="forged", key=old_key))
    assert jwks.fetches == fetches


def test_a_token_not_valid_yet_says_so(verifier, jwks):
    with pytest.raises(Unauthorized) as refused:
        verifier.verify(jwks.token(nbf=int(time.time()) + 600))

    assert refused.value.status == 401 and "not valid yet" in refused.value.detail


def test_a_token_whose_not_before_has_passed_is_accepted(verifier, jwks):
    assert verifier.verify(jwks.token(nbf=int(time.time()) - 1)).subject == "buyer-1"


def test_warm_up_retries_until_the_keys_arrive_then_stops(monkeypatch, jwks):
    monkeypatch.setattr(time, "sleep", lambda _seconds: None)
    answers = iter([ConnectionError("accounts is down"), ConnectionError("still down")])

    def flaky(url):
        error = next(answers, None)
        if error:
            raise error
        return jwks(url)

    keys = KeySet("http://accounts/jwks", min_refresh_seconds=60, fetch=flaky)
    keys.warm_up()

    assert keys.loaded and jwks.fetches == 1
    # Once warm, a token is verified without another fetch, even with accounts gone.
    verifier = TokenVerifier(keys, ISSUER, AUDIENCE)
    assert verifier.verify(jwks.token()).subject == "buyer-1"
    assert jwks.fetches == 1


def test_a_worker_started_while_accounts_is_down_uses_the_keys_its_siblings_cached(jwks, tmp_path):
    cache = tmp_path / "jwks.json"
    first = TokenVerifier(KeySet("http://accounts/jwks", 60, fetch=jwks, cache_file=str(cache)), ISSUER, AUDIENCE)
    first.verify(jwks.token())

    def accounts_down(url):
        raise ConnectionError("accounts is down")

    later = TokenVerifier(KeySet("http://accounts/jwks", 60, fetch=accounts_down, cache_file=str(cache)), ISSUER, AUDIENCE)
    assert later.verify(jwks.token()).subject == "buyer-1"
    # a process with no keys at all cannot judge the token: 503 and come back, not 401 and sign in
    stranger = TokenVerifier(KeySet("http://accounts/jwks", 60, fetch=accounts_down), ISSUER, AUDIENCE)
    with pytest.raises(ServiceUnavailable) as unavailable:
        stranger.verify(jwks.token())
    assert unavailable.value.status == 503 and unavailable.value.headers["Retry-After"] == "2"


def test_a_key_accounts_retires_stops_verifying_within_the_max_age_without_a_new_key_id(jwks):
    keys = KeySet("http://accounts/jwks", min_refresh_seconds=60, fetch=jwks, max_age_seconds=0.01)
    verifier = TokenVerifier(keys, ISSUER, AUDIENCE)
    compromised = jwks.token(role="admin")
    assert verifier.verify(compromised).is_admin
    stop = threading.Event()
    refresher = threading.Thread(target=keys.keep_fresh, args=(stop,), daemon=True)
    refresher.start()
    poll(lambda: jwks.fetches >= 2, timeout=5, what="the refresher's warm-up")

    jwks.key, jwks.kid = ec.generate_private_key(ec.SECP256R1()), "k2"  # k1 retired: only k2 published
    retired_at = jwks.fetches
    try:  # a fetch begun after the retirement: the periodic refresh, not the warm-up
        poll(lambda: jwks.fetches >= retired_at + 1, timeout=5, what="a refresh within the max age")
    finally:
        stop.set()
        refresher.join(5)

    with pytest.raises(Unauthorized):
        verifier.verify(compromised)
    assert verifier.verify(jwks.token(kid="k2")).subject == "buyer-1"


def test_a_refresh_that_brings_the_same_keys_keeps_the_tokens_already_verified(jwks, monkeypatch):
    keys = KeySet("http://accounts/jwks", min_refresh_seconds=60, fetch=jwks)
    verifier = TokenVerifier(keys, ISSUER, AUDIENCE)
    token = jwks.token()
    verifier.verify(token)
    with keys._lock:
        assert keys._refresh()  # what keep_fresh does every JWKS_MAX_AGE_SECONDS
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: pytest.fail("verified again after a refresh"))

    assert verifier.verify(token).subject == "buyer-1"


def test_a_worker_that_read_keys_from_the_cache_fetches_once_all_the_same(jwks, tmp_path):
    cache = tmp_path / "jwks.json"
    first = TokenVerifier(KeySet("http://accounts/jwks", 60, fetch=jwks, cache_file=str(cache)), ISSUER, AUDIENCE)
    retired_token = jwks.token()
    first.verify(retired_token)
    jwks.key, jwks.kid = ec.generate_private_key(ec.SECP256R1()), "k2"

    restarted = KeySet("http://accounts/jwks", 60, fetch=jwks, cache_file=str(cache))
    restarted.warm_up()

    with pytest.raises(Unauthorized):
        TokenVerifier(restarted, ISSUER, AUDIENCE).verify(retired_token)


def test_a_worker_that_read_keys_from_the_cache_keeps_them_when_accounts_is_down(jwks, tmp_path, monkeypatch):
    cache = tmp_path / "jwks.json"
    TokenVerifier(KeySet("http://accounts/jwks", 60, fetch=jwks, cache_file=str(cache)), ISSUER, AUDIENCE).verify(jwks.token())
    monkeypatch.setattr(time, "sleep", lambda _seconds: pytest.fail("warm-up waited although it had cached keys"))

    def accounts_down(url):
        raise ConnectionError("accounts is down")

    restarted = KeySet("http://accounts/jwks", 60, fetch=accounts_down, cache_file=str(cache))
    restarted.warm_up()

    assert TokenVerifier(restarted, ISSUER, AUDIENCE).verify(jwks.token()).subject == "buyer-1"


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def test_a_token_verified_before_still_expires_on_time():
    jwks, clock = FakeJwks(), Clock()
    verifier = TokenVerifier(KeySet("http://accounts/jwks", min_refresh_seconds=0, fetch=jwks), ISSUER, AUDIENCE,
                             clock=clock)
    token = jwks.token()
    assert verifier.verify(token).subject == "buyer-1"
    clock.now += 30
    assert verifier.verify(token).subject == "buyer-1"  # remembered
    clock.now += 60
    with pytest.raises(Unauthorized):
        verifier.verify(token)


def test_a_remembered_token_is_refused_once_its_key_is_gone_from_the_set():
    jwks = FakeJwks()
    verifier = TokenVerifier(KeySet("http://accounts/jwks", min_refresh_seconds=0, fetch=jwks), ISSUER, AUDIENCE)
    old_token = jwks.token()
    verifier.verify(old_token)
    jwks.key = ec.generate_private_key(ec.SECP256R1())
    jwks.kid = "k2"  # accounts rotated its signing key and dropped k1 from the set
    verifier.verify(jwks.token(kid="k2"))  # an unknown kid makes the set refresh
    assert jwks.fetches == 2
    with pytest.raises(Unauthorized):
        verifier.verify(old_token)


def test_a_changed_token_is_verified_afresh(verifier, jwks):
    token = jwks.token()
    verifier.verify(token)
    header, body, signature = token.split(".")
    forged = ".".join([header, jwt.utils.base64url_encode(json.dumps(
        {"sub": "admin", "role": "admin", "iss": ISSUER, "aud": AUDIENCE, "iat": int(time.time()),
         "exp": int(time.time()) + 60}).encode()).decode(), signature])
    with pytest.raises(Unauthorized):
        verifier.verify(forged)


@pytest.mark.parametrize("answer", [{"keys": []}, [], {"keys": None}, {"nothing": 1},
                                    {"keys": [{"kid": "k9", "alg": "ES256", "kty": "EC", "crv": "P-256",
                                               "x": "not base64!", "y": "!"}]}],
                         ids=["empty", "a-list", "null", "no-keys", "bad-base64"])
def test_a_jwks_answer_with_no_usable_key_keeps_the_keys_already_held(answer):
    jwks = FakeJwks()
    good = {"answer": None}

    def fetch(url):
        return jwks(url) if good["answer"] is None else good["answer"]

    verifier = TokenVerifier(KeySet("http://accounts/jwks", min_refresh_seconds=0, fetch=fetch), ISSUER, AUDIENCE)
    assert verifier.verify(jwks.token()).subject == "buyer-1"
    good["answer"] = answer
    # an unknown kid refreshes the set: no 500, no keys lost; and no 401 for what may be a new key
    # the set could not bring
    with pytest.raises(ServiceUnavailable):
        verifier.verify(jwks.token(kid="k9"))
    assert verifier.verify(jwks.token(sub="buyer-2")).subject == "buyer-2"  # verified in full, by k1
