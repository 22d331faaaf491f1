"""Access tokens: ES256 JWTs signed with the newest signing key, and the JWKS that verifies them."""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from services.accounts.key_encryption import KeyEncryptionKeys
from services.accounts.models import Account, SigningKey

ALGORITHM = "ES256"


def new_signing_key(now: datetime, key_encryption: KeyEncryptionKeys) -> SigningKey:
    """A fresh P-256 key pair, its private half encrypted with the newest KEK; its `kid` is the
    RFC 7638 thumbprint of the public key."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    public_jwk = json.loads(ECAlgorithm.to_jwk(private_key.public_key()))
    kid = _thumbprint(public_jwk)
    public_jwk.update(kid=kid, alg=ALGORITHM, use="sig")
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return SigningKey(
        kid=kid,
        encrypted_private_key=key_encryption.encrypt(kid, pem),
        private_key_pem=None,
        public_jwk=public_jwk,
        created_at=now,
        retired_at=None,
    )


def _thumbprint(jwk: dict) -> str:
    canonical = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def key_set(keys: list[SigningKey]) -> dict:
    """The JWKS document publishing `keys`' public halves."""
    return {"keys": [key.public_jwk for key in keys]}


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_in: int


@dataclass(frozen=True)
class SessionTokens:
    """What a sign-in or a refresh hands the client: a short access token and the refresh
    token that gets the next one."""

    access: AccessToken
    refresh_token: str
    refresh_expires_in: int

    @property
    def token(self) -> str:
        return self.access.token

    @property
    def expires_in(self) -> int:
        return self.access.expires_in


def new_refresh_token() -> tuple[str, str]:
    """An opaque refresh token (256 random bits) and the hash it is stored under."""
    token = secrets.token_urlsafe(32)
    return token, refresh_token_hash(token)


def refresh_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class TokenIssuer:
    """Mints access tokens for the audience every Floodgate service verifies, with signing keys
    it opens (and makes) with `key_encryption`."""

    issuer: str
    audience: str
    ttl_seconds: int
    key_encryption: KeyEncryptionKeys
    # A new key signs only once it has been published this long, so every verifier can have
    # fetched it first (see Settings.signing_key_publish_seconds).
    new_key_published_for: timedelta = timedelta(0)

    def issue(self, account: Account, key: SigningKey, now: datetime) -> AccessToken:
        """`SigningKeyUnreadable` when `key` cannot be decrypted with the configured KEKs."""
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(account.id),
            "role": account.role,
            "email": account.email,
            "tier": account.tier,
            # when the account was made: a drop's line may refuse accounts newer than itself
            "acct": round(account.created_at.timestamp(), 3) if account.created_at else None,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=self.ttl_seconds)).timestamp()),
            "jti": str(uuid.uuid4()),
        }
        private_key = self.key_encryption.private_key_pem(key)
        token = jwt.encode(claims, private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
        return AccessToken(token=token, expires_in=self.ttl_seconds)
