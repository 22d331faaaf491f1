"""Token verification against a JWKS served by a fake fetcher."""
from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shared.auth import KeySet, TokenVerifier
from shared.errors import Unauthorized

ISSUER, AUDIENCE = "floodgate-accounts", "floodgate"


class FakeJwks:
    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.fetches = 0

    def __call__(self, url):
        self.fetches += 1
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [dict(public, kid="k1", alg="ES256", use="sig")]}

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
        lambda j: j.token(key=ec.generate_private_key(ec.SECP256R1())),
        lambda j: "not-a-token",
    ],
    ids=["alg-none", "hs256", "expired", "audience", "issuer", "no-iat", "wrong-signature", "garbage"],
)
def test_bad_tokens_are_refused(verifier, jwks, make):
    with pytest.raises(Unauthorized):
        verifier.verify(make(jwks))


def test_unknown_key_ids_refetch_at_a_bounded_rate(verifier, jwks):
    for _ in range(50):
        with pytest.raises(Unauthorized):
            verifier.verify(jwks.token(kid="forged-kid"))
    assert jwks.fetches == 1
