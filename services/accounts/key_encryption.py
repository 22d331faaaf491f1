"""Signing keys at rest: each private key is stored encrypted with a key-encryption key (KEK).

The KEKs are Fernet keys (AES-128-CBC with HMAC-SHA256, from `cryptography`) listed newest first
in `SIGNING_KEY_ENCRYPTION_KEYS`: the first encrypts, every one decrypts, so a new KEK is put in
front while the old one still opens what it encrypted until `reencrypt-signing-keys` has run.
The key's `kid` is sealed with it, so a ciphertext copied onto another key's row is refused.
"""
from __future__ import annotations

import json
import logging
from typing import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from services.accounts.models import SigningKey
from shared.config import ENVIRONMENTS

log = logging.getLogger("floodgate.accounts")

# Public, in this repository: whatever it encrypts anyone can read. It lets a development stack
# run with no setting at all; production refuses it (and refuses to start without a KEK).
DEV_KEY_ENCRYPTION_KEY = "dev-only-kek-for-signing-keys-not-a-secret0="
SETTING = "SIGNING_KEY_ENCRYPTION_KEYS"
MAKE_ONE = "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"

# kids of keys stored in clear this process has warned about: once each, not once per sign-in
_warned_in_clear: set[str] = set()


class KeyEncryptionMisconfigured(RuntimeError):
    """The KEK settings cannot be used; the service refuses to start. Never carries a key's value."""


class SigningKeyUnreadable(Exception):
    """A stored signing key none of the configured KEKs opens, or one sealed for another key."""


class KeyEncryptionKeys:
    """Fernet KEKs, newest first: `encrypt` uses the newest, `decrypt` tries every one."""

    def __init__(self, keys: Sequence[str]):
        if not keys:
            raise KeyEncryptionMisconfigured(f"{SETTING} names no key")
        self._newest = Fernet(keys[0])
        self._every = MultiFernet([Fernet(key) for key in keys])
        self.count = len(keys)

    def encrypt(self, kid: str, private_key_pem: str) -> str:
        sealed = json.dumps({"kid": kid, "private_key_pem": private_key_pem}).encode()
        return self._newest.encrypt(sealed).decode("ascii")

    def decrypt(self, kid: str, encrypted: str) -> str:
        """The PEM of key `kid`; `SigningKeyUnreadable` if no KEK opens it or it is another key's."""
        try:
            sealed = json.loads(self._every.decrypt(encrypted.encode("ascii")))
        except InvalidToken:
            raise SigningKeyUnreadable(
                f"Signing key {kid} cannot be decrypted with any of the {self.count} key-encryption key(s) in "
                f"{SETTING}: the KEK that encrypted it is not configured (a wrong Secret, or an older KEK "
                "removed before `reencrypt-signing-keys` ran). Put that KEK back in the list."
            ) from None
        if sealed.get("kid") != kid:
            raise SigningKeyUnreadable(
                f"Signing key {kid} holds the encrypted private key of another key: the row was altered."
            )
        return sealed["private_key_pem"]

    def is_current(self, encrypted: str) -> bool:
        """Encrypted with the newest KEK (nothing to re-encrypt)?"""
        try:
            self._newest.decrypt(encrypted.encode("ascii"))
        except InvalidToken:
            return False
        return True

    def private_key_pem(self, key: SigningKey) -> str:
        """`key`'s private half, decrypted; a key stored before encryption is read as it is."""
        if key.encrypted_private_key is None:
            if key.kid not in _warned_in_clear:
                _warned_in_clear.add(key.kid)
                log.warning("signing key stored in clear; run `reencrypt-signing-keys`", extra={"kid": key.kid})
            return key.private_key_pem
        return self.decrypt(key.kid, key.encrypted_private_key)


def configured(setting: str, environment: str) -> KeyEncryptionKeys:
    """The KEKs `setting` (comma-separated Fernet keys, newest first) names for `environment`.

    In development an empty setting means the public development KEK. In production the service
    refuses to start without a KEK, or with the development one.
    """
    if environment not in ENVIRONMENTS:
        raise KeyEncryptionMisconfigured(
            f"DEPLOYMENT_ENVIRONMENT is {environment!r}; it must be one of {', '.join(ENVIRONMENTS)}"
        )
    keys = [part.strip() for part in setting.split(",") if part.strip()]
    if not keys:
        if environment == "production":
            raise KeyEncryptionMisconfigured(
                f"{SETTING} is not set: in production accounts refuses to start without a key-encryption "
                f"key for its signing keys. Make one with {MAKE_ONE} and pass it from a Secret."
            )
        log.warning(f"{SETTING} is not set: signing keys are encrypted with the public development KEK")
        keys = [DEV_KEY_ENCRYPTION_KEY]
    if environment == "production" and DEV_KEY_ENCRYPTION_KEY in keys:
        raise KeyEncryptionMisconfigured(
            f"{SETTING} holds the public development KEK, which production refuses: anyone can read what it encrypts."
        )
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            raise KeyEncryptionMisconfigured(
                f"Entry {position} of {SETTING} is not a Fernet key (32 bytes, url-safe base64); make one with {MAKE_ONE}"
            ) from None
    return KeyEncryptionKeys(keys)
