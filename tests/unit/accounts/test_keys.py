from datetime import timedelta

import jwt
import pytest

from services.accounts import handlers
from services.accounts.schemas import RegistrationSchema, SessionRequestSchema
from services.accounts.tokens import TokenIssuer
from shared.auth import KeySet, TokenVerifier
from shared.errors import Unauthorized


def published(uow, key_encryption):
    return {key["kid"]: key for key in handlers.published_keys(uow, key_encryption)["keys"]}


def verifier_for(uow, key_encryption):
    fetch = lambda _url: handlers.published_keys(uow, key_encryption)  # noqa: E731
    return TokenVerifier(KeySet("unused", fetch=fetch), "floodgate-accounts", "floodgate")


def test_the_key_set_publishes_only_public_es256_signing_keys(uow, key_encryption):
    keys = list(published(uow, key_encryption).values())

    assert len(keys) == 1
    key = keys[0]
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
    assert key["kid"] and key["x"] and key["y"]
    assert "d" not in key  # the private part never leaves


def test_after_a_rotation_new_tokens_use_the_new_key_and_old_tokens_still_verify(uow, key_encryption, ann_token):
    old_token, sign_in = ann_token
    new_key, retired = handlers.rotate_keys(uow, key_encryption)
    new_token = sign_in()

    assert retired == []
    assert jwt.get_unverified_header(new_token)["kid"] == new_key.kid
    assert set(published(uow, key_encryption)) == {new_key.kid, jwt.get_unverified_header(old_token)["kid"]}
    verifier = verifier_for(uow, key_encryption)
    assert verifier.verify(old_token).email == verifier.verify(new_token).email == "ann@example.com"


def test_a_rotated_in_key_signs_only_once_verifiers_can_have_fetched_it(uow, passwords, key_encryption, ann_token):
    _, sign_in_now = ann_token
    old_kid = jwt.get_unverified_header(sign_in_now())["kid"]
    issuer = TokenIssuer("floodgate-accounts", "floodgate", 3600, key_encryption, new_key_published_for=timedelta(seconds=60))
    credentials = SessionRequestSchema().load({"email": "ann@example.com", "password": "correct horse battery"})

    new_key, _ = handlers.rotate_keys(uow, key_encryption, published_for=issuer.new_key_published_for)

    signed_at_once = handlers.open_session(credentials, uow, passwords, issuer).token
    assert jwt.get_unverified_header(signed_at_once)["kid"] == old_kid
    assert new_key.kid in published(uow, key_encryption)
    new_key.created_at -= timedelta(seconds=61)
    assert jwt.get_unverified_header(handlers.open_session(credentials, uow, passwords, issuer).token)["kid"] == new_key.kid


def test_a_new_key_signs_at_once_when_every_earlier_key_is_retired(uow, passwords, key_encryption, ann_token):
    issuer = TokenIssuer("floodgate-accounts", "floodgate", 3600, key_encryption, new_key_published_for=timedelta(seconds=60))
    credentials = SessionRequestSchema().load({"email": "ann@example.com", "password": "correct horse battery"})

    new_key, retired = handlers.rotate_keys(uow, key_encryption, timedelta(0), published_for=issuer.new_key_published_for)

    assert len(retired) == 1
    assert jwt.get_unverified_header(handlers.open_session(credentials, uow, passwords, issuer).token)["kid"] == new_key.kid


def test_retiring_drops_only_keys_that_stopped_signing_long_enough_ago(uow, key_encryption):
    handlers.published_keys(uow, key_encryption)
    oldest = uow.signing_keys.active()[0]
    middle, _ = handlers.rotate_keys(uow, key_encryption)
    # oldest stopped signing two days ago (when middle was made); middle stops signing now
    oldest.created_at -= timedelta(days=3)
    middle.created_at -= timedelta(days=2)

    newest, retired = handlers.rotate_keys(uow, key_encryption, retire_superseded_for=timedelta(hours=1))

    assert retired == [oldest]
    assert set(published(uow, key_encryption)) == {newest.kid, middle.kid}


def test_retiring_at_zero_hours_leaves_only_the_new_key_and_refuses_older_tokens(uow, key_encryption, ann_token):
    old_token, _ = ann_token

    newest, _ = handlers.rotate_keys(uow, key_encryption, retire_superseded_for=timedelta(0))

    assert set(published(uow, key_encryption)) == {newest.kid}
    verifier = verifier_for(uow, key_encryption)
    with pytest.raises(Unauthorized):
        verifier.verify(old_token)


def test_over_http_the_key_set_may_be_cached_no_longer_than_a_new_key_waits_before_it_signs(client):
    response = client.get("/.well-known/jwks.json")

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=60"
    assert [key["alg"] for key in response.get_json()["keys"]] == ["ES256"]


@pytest.fixture
def ann_token(uow, passwords, issuer):
    handlers.register_account(RegistrationSchema().load({"email": "ann@example.com", "password": "correct horse battery"}), uow, passwords)
    credentials = SessionRequestSchema().load({"email": "ann@example.com", "password": "correct horse battery"})

    def sign_in():
        return handlers.open_session(credentials, uow, passwords, issuer).token

    return sign_in(), sign_in


@pytest.fixture
def operator(app, monkeypatch, uow):
    """The operator commands, run as `flask --app services.accounts.app ...` runs them, on the fake unit of work."""
    from services.accounts import cli

    monkeypatch.setattr(cli, "unit_of_work", lambda: uow)
    return app.test_cli_runner()


@pytest.mark.parametrize("hours", ["0.1", "0.2499", "0.0001"])
def test_rotate_keys_refuses_to_retire_keys_sooner_than_their_tokens_expire_and_changes_nothing(operator, uow, hours):
    assert operator.invoke(args=["rotate-keys"]).exit_code == 0
    published = {key.kid for key in uow.signing_keys.active()}

    refused = operator.invoke(args=["rotate-keys", "--retire-older-than-hours", hours])

    assert refused.exit_code == 2, refused.output
    # names the minimum, the setting it comes from, and the way to retire a compromised key now
    assert all(part in refused.output for part in ("0.25", "ACCESS_TOKEN_TTL_SECONDS", "compromised"))
    assert {key.kid for key in uow.signing_keys.active()} == published and len(uow.signing_keys.rows) == 1


def test_rotate_keys_still_retires_every_earlier_key_at_zero_hours_and_takes_the_token_lifetime(operator, uow):
    assert operator.invoke(args=["rotate-keys"]).exit_code == 0
    [compromised] = uow.signing_keys.active()

    at_once = operator.invoke(args=["rotate-keys", "--retire-older-than-hours", "0"])
    at_the_lifetime = operator.invoke(args=["rotate-keys", "--retire-older-than-hours", "0.25"])

    assert at_once.exit_code == 0 and f"retired {compromised.kid}" in at_once.output
    assert at_the_lifetime.exit_code == 0, at_the_lifetime.output
    assert compromised.retired_at is not None and len(uow.signing_keys.active()) == 2
