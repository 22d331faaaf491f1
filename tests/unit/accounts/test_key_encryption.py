"""Signing keys at rest: encrypted with key-encryption keys (KEKs) from the settings, rotated,
and a missing or wrong KEK refused with an error that says what to do."""
from datetime import datetime, timezone

import jwt
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.accounts import handlers, key_encryption
from services.accounts.config import Settings
from services.accounts.errors import SigningUnavailable
from services.accounts.key_encryption import (
    DEV_KEY_ENCRYPTION_KEY,
    KeyEncryptionKeys,
    KeyEncryptionMisconfigured,
    SigningKeyUnreadable,
)
from services.accounts.models import SigningKey
from services.accounts.schemas import RegistrationSchema, SessionRequestSchema
from services.accounts.tokens import TokenIssuer, new_signing_key
from shared.auth import KeySet, TokenVerifier

OLD_KEK, NEW_KEK, OTHER_KEK = (Fernet.generate_key().decode() for _ in range(3))
NOW = datetime(2026, 12, 5, 18, 0, tzinfo=timezone.utc)


def issuer_with(*keks: str) -> TokenIssuer:
    return TokenIssuer("floodgate-accounts", "floodgate", 900, KeyEncryptionKeys(list(keks)))


@pytest.fixture
def sign_in(uow, passwords):
    handlers.register_account(RegistrationSchema().load({"email": "ann@example.com", "password": "correct horse battery"}), uow, passwords)
    credentials = SessionRequestSchema().load({"email": "ann@example.com", "password": "correct horse battery"})

    def sign_in(issuer: TokenIssuer) -> str:
        return handlers.open_session(credentials, uow, passwords, issuer).token

    return sign_in


def verifies(uow, issuer: TokenIssuer, token: str) -> bool:
    fetch = lambda _url: handlers.published_keys(uow, issuer.key_encryption)  # noqa: E731
    return TokenVerifier(KeySet("unused", fetch=fetch), "floodgate-accounts", "floodgate").verify(token).email == "ann@example.com"


def test_the_stored_signing_key_holds_no_private_key_in_clear_and_its_tokens_verify(uow, sign_in):
    issuer = issuer_with(NEW_KEK)
    token = sign_in(issuer)

    (stored,) = uow.signing_keys.rows
    assert stored.private_key_pem is None
    assert "PRIVATE KEY" not in stored.encrypted_private_key and "-----BEGIN" not in stored.encrypted_private_key
    assert verifies(uow, issuer, token)


def test_a_new_kek_put_first_still_opens_keys_under_the_old_one_and_reencrypting_lets_the_old_one_go(uow, sign_in):
    before = issuer_with(OLD_KEK)
    old_token = sign_in(before)
    (stored,) = uow.signing_keys.rows

    during = issuer_with(NEW_KEK, OLD_KEK)  # the new KEK encrypts, both decrypt
    assert verifies(uow, during, sign_in(during))
    assert handlers.reencrypt_signing_keys(uow, during.key_encryption) == {"encrypted": 0, "reencrypted": 1, "current": 0}

    after = issuer_with(NEW_KEK)  # the old KEK removed
    assert verifies(uow, after, sign_in(after)) and verifies(uow, after, old_token)
    assert jwt.get_unverified_header(old_token)["kid"] == stored.kid
    with pytest.raises(SigningUnavailable):
        sign_in(before)  # the old KEK alone no longer opens it
    assert handlers.reencrypt_signing_keys(uow, after.key_encryption) == {"encrypted": 0, "reencrypted": 0, "current": 1}


def test_a_wrong_kek_is_refused_with_an_error_naming_the_key_and_the_setting_never_a_value():
    key = new_signing_key(NOW, KeyEncryptionKeys([OLD_KEK]))

    with pytest.raises(SigningKeyUnreadable) as refused:
        KeyEncryptionKeys([OTHER_KEK, NEW_KEK]).private_key_pem(key)

    message = str(refused.value)
    assert key.kid in message and "SIGNING_KEY_ENCRYPTION_KEYS" in message and "2 key-encryption key(s)" in message
    assert not any(kek in message for kek in (OLD_KEK, NEW_KEK, OTHER_KEK))


def test_a_buyer_signing_in_while_the_kek_is_wrong_gets_a_503_to_retry_not_a_500(client, uow, passwords):
    handlers.register_account(RegistrationSchema().load({"email": "ann@example.com", "password": "correct horse battery"}), uow, passwords)
    uow.signing_keys.add(new_signing_key(NOW, KeyEncryptionKeys([OTHER_KEK])))  # the app has the dev KEK

    response = client.post("/sessions", json={"email": "ann@example.com", "password": "correct horse battery"})

    assert response.status_code == 503 and response.mimetype == "application/problem+json"
    assert response.get_json()["type"].endswith("/signing-unavailable")
    assert response.headers["Retry-After"] == "30"


def test_reencrypting_without_the_kek_that_encrypted_a_key_fails_and_changes_nothing(app, uow, monkeypatch):
    from services.accounts import cli

    monkeypatch.setattr(cli, "unit_of_work", lambda: uow)
    stored = new_signing_key(NOW, KeyEncryptionKeys([OTHER_KEK]))
    uow.signing_keys.add(stored)
    ciphertext = stored.encrypted_private_key

    result = app.test_cli_runner().invoke(args=["reencrypt-signing-keys"])

    assert result.exit_code == 1
    assert f"Signing key {stored.kid} cannot be decrypted" in result.output and "Nothing was changed." in result.output
    assert stored.encrypted_private_key == ciphertext and not uow.committed


def test_a_key_stored_in_clear_before_encryption_still_signs_and_reencrypting_encrypts_it(uow, sign_in):
    legacy = _key_stored_in_clear()
    uow.signing_keys.add(legacy)
    issuer = issuer_with(NEW_KEK)

    token = sign_in(issuer)
    assert jwt.get_unverified_header(token)["kid"] == legacy.kid and verifies(uow, issuer, token)

    assert handlers.reencrypt_signing_keys(uow, issuer.key_encryption) == {"encrypted": 1, "reencrypted": 0, "current": 0}
    assert legacy.private_key_pem is None and "PRIVATE KEY" not in legacy.encrypted_private_key
    assert verifies(uow, issuer, sign_in(issuer)) and verifies(uow, issuer, token)


def test_an_encrypted_key_copied_onto_another_keys_row_is_refused():
    keks = KeyEncryptionKeys([NEW_KEK])
    first, second = new_signing_key(NOW, keks), new_signing_key(NOW, keks)
    second.encrypted_private_key = first.encrypted_private_key

    with pytest.raises(SigningKeyUnreadable, match="the row was altered"):
        keks.private_key_pem(second)


# --- configuration: when the service starts, and with which KEKs ------------------------------


def test_production_refuses_to_start_without_a_kek():
    with pytest.raises(KeyEncryptionMisconfigured, match="SIGNING_KEY_ENCRYPTION_KEYS is not set"):
        _create_app(deployment_environment="production")


def test_production_refuses_the_public_development_kek_even_beside_a_real_one():
    with pytest.raises(KeyEncryptionMisconfigured, match="public development KEK"):
        key_encryption.configured(f"{NEW_KEK},{DEV_KEY_ENCRYPTION_KEY}", "production")


def test_production_starts_with_its_kek_and_makes_keys_with_the_first_one():
    app = _create_app(deployment_environment="production", signing_key_encryption_keys=f" {NEW_KEK} , {OLD_KEK} ")

    made = new_signing_key(NOW, app.extensions["floodgate"].key_encryption)
    assert KeyEncryptionKeys([NEW_KEK]).private_key_pem(made).startswith("-----BEGIN PRIVATE KEY-----")


def test_development_without_a_kek_runs_on_the_public_dev_only_kek():
    made = new_signing_key(NOW, key_encryption.configured("", "development"))

    assert KeyEncryptionKeys([DEV_KEY_ENCRYPTION_KEY]).private_key_pem(made).startswith("-----BEGIN PRIVATE KEY-----")
    assert DEV_KEY_ENCRYPTION_KEY.startswith("dev-only-")
    assert Settings().deployment_environment == "development"


@pytest.mark.parametrize("setting, environment, message", [
    (f"{NEW_KEK},not-a-key", "production", "Entry 2 of SIGNING_KEY_ENCRYPTION_KEYS is not a Fernet key"),
    (NEW_KEK, "prod", "DEPLOYMENT_ENVIRONMENT is 'prod'"),
])
def test_a_malformed_kek_or_an_unknown_environment_is_refused_saying_which(setting, environment, message):
    with pytest.raises(KeyEncryptionMisconfigured) as refused:
        key_encryption.configured(setting, environment)

    assert message in str(refused.value) and NEW_KEK not in str(refused.value)


def _create_app(**settings):
    from services.accounts.app import create_app

    return create_app(Settings(service_name="accounts", database_url="postgresql+psycopg://nobody@127.0.0.1:1/unused", **settings))


def _key_stored_in_clear() -> SigningKey:
    """A key as accounts stored it before encryption: its PEM in clear."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    public_jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    public_jwk.update(kid="legacy-key", alg="ES256", use="sig")
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return SigningKey(kid="legacy-key", encrypted_private_key=None, private_key_pem=pem, public_jwk=public_jwk,
                      created_at=NOW, retired_at=None)
