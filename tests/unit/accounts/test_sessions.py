import jwt
import pytest
from argon2 import PasswordHasher

from services.accounts import handlers
from services.accounts.errors import InvalidCredentials, InvalidRefreshToken
from services.accounts.passwords import OWASP_ARGON2ID, Passwords
from services.accounts.schemas import RegistrationSchema, SessionRequestSchema
from shared import auth
from shared.auth import KeySet, TokenVerifier


class CountingHasher(PasswordHasher):
    def __init__(self):
        super().__init__(**{name: getattr(OWASP_ARGON2ID, name) for name in ("time_cost", "memory_cost", "parallelism", "hash_len", "salt_len", "type")})
        self.verifications = 0

    def verify(self, hash, password):
        self.verifications += 1
        return super().verify(hash, password)


@pytest.fixture
def ann(uow, passwords):
    cmd = RegistrationSchema().load({"email": "ann@example.com", "password": "correct horse battery", "name": "Ann"})
    return handlers.register_account(cmd, uow, passwords)


def sign_in(uow, passwords, issuer, email, password):
    return handlers.open_session(SessionRequestSchema().load({"email": email, "password": password}), uow, passwords, issuer)


def verifier_for(uow, issuer):
    return TokenVerifier(KeySet("unused", fetch=lambda _url: handlers.published_keys(uow, issuer.key_encryption)), "floodgate-accounts", "floodgate")


def test_the_access_token_carries_who_the_buyer_is_and_names_its_key(uow, passwords, issuer, ann):
    token = sign_in(uow, passwords, issuer, "Ann@Example.com ", "correct horse battery")

    header = jwt.get_unverified_header(token.token)
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert header["alg"] == "ES256"
    assert header["kid"] == uow.signing_keys.active()[0].kid
    assert claims["iss"] == "floodgate-accounts" and claims["aud"] == "floodgate"
    assert (claims["sub"], claims["role"], claims["email"], claims["tier"]) == (str(ann.id), "buyer", "ann@example.com", None)
    assert claims["exp"] - claims["iat"] == 3600 == token.expires_in


def test_other_services_accept_the_token_from_the_published_keys(uow, passwords, issuer, ann):
    token = sign_in(uow, passwords, issuer, "ann@example.com", "correct horse battery")

    principal = verifier_for(uow, issuer).verify(token.token)

    assert (principal.subject, principal.role, principal.email) == (str(ann.id), "buyer", "ann@example.com")


def test_a_wrong_email_and_a_wrong_password_fail_alike_and_both_check_a_hash(uow, issuer, ann):
    hasher = CountingHasher()
    passwords = Passwords(hasher)

    failures = []
    for email, password in [("ann@example.com", "wrong password!"), ("nobody@example.com", "correct horse battery")]:
        with pytest.raises(InvalidCredentials) as failed:
            sign_in(uow, passwords, issuer, email, password)
        failures.append(failed.value.to_dict())

    assert failures[0] == failures[1]
    assert failures[0]["status"] == 401 and failures[0]["detail"] == "Email or password is incorrect"
    assert hasher.verifications == 2  # the unknown email was checked against a dummy hash too


def test_an_unknown_email_never_signs_in_even_with_the_dummy_hashs_password(uow, passwords, issuer):
    with pytest.raises(InvalidCredentials):
        sign_in(uow, passwords, issuer, "nobody@example.com", "")


def test_a_hash_made_with_older_parameters_is_upgraded_at_sign_in(uow, passwords, issuer, ann):
    ann.password_hash = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("correct horse battery")

    sign_in(uow, passwords, issuer, "ann@example.com", "correct horse battery")

    assert ann.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify(ann.password_hash, "correct horse battery")


def test_the_first_sign_in_creates_the_signing_key_under_the_lock_and_later_ones_reuse_it(uow, passwords, issuer, ann):
    first = sign_in(uow, passwords, issuer, "ann@example.com", "correct horse battery")
    second = sign_in(uow, passwords, issuer, "ann@example.com", "correct horse battery")

    assert uow.signing_keys.locked
    assert len(uow.signing_keys.rows) == 1
    assert jwt.get_unverified_header(first.token)["kid"] == jwt.get_unverified_header(second.token)["kid"]


def test_admins_get_the_admin_role_in_their_token(uow, passwords, issuer):
    cmd = RegistrationSchema().load({"email": "boss@example.com", "password": "admin password"})
    handlers.create_admin(cmd, uow, passwords)

    token = sign_in(uow, passwords, issuer, "boss@example.com", "admin password")

    assert verifier_for(uow, issuer).verify(token.token).is_admin


def test_create_admin_promotes_an_existing_buyer_and_sets_the_given_password(uow, passwords, ann):
    cmd = RegistrationSchema().load({"email": "ANN@example.com", "password": "a new admin password"})

    promoted = handlers.create_admin(cmd, uow, passwords)

    assert promoted is ann and ann.role == "admin"
    assert passwords.verify(ann.password_hash, "a new admin password")
    assert len(uow.accounts.rows) == 1


def test_making_an_existing_account_admin_ends_its_sessions_so_none_refreshes_to_an_admin_token(uow, passwords, issuer, ann):
    signed_in_before = sign_in(uow, passwords, issuer, "ann@example.com", "correct horse battery")

    handlers.create_admin(RegistrationSchema().load({"email": "ann@example.com", "password": "a new admin password"}), uow, passwords)

    with pytest.raises(InvalidRefreshToken):
        handlers.refresh_session(signed_in_before.refresh_token, uow, issuer)
    assert verifier_for(uow, issuer).verify(sign_in(uow, passwords, issuer, "ann@example.com", "a new admin password").token).is_admin


class ResetDuring(Passwords):
    """Passwords whose next check sees the account reset by `create-admin` while it hashes."""
    def __init__(self, uow, passwords, email):
        super().__init__()
        self.reset = lambda: handlers.create_admin(
            RegistrationSchema().load({"email": email, "password": "a new admin password"}), uow, passwords)

    def verify(self, password_hash, password):
        matched = super().verify(password_hash, password)
        self.reset()
        return matched


def test_a_sign_in_checking_the_old_password_while_an_admin_resets_it_starts_no_session(uow, passwords, issuer, ann):
    with pytest.raises(InvalidCredentials):
        sign_in(uow, ResetDuring(uow, passwords, "ann@example.com"), issuer, "ann@example.com", "correct horse battery")

    assert uow.sessions.rows == {}
    assert passwords.verify(ann.password_hash, "a new admin password")  # no rehash of the old one over it


class RehashedDuring(Passwords):
    """Passwords whose next check sees a concurrent sign-in store a new hash of the same password
    (argon2's settings changed since it was hashed)."""
    def __init__(self, account):
        super().__init__()
        self.account = account

    def verify(self, password_hash, password):
        matched = super().verify(password_hash, password)
        self.account.password_hash = self.hash(password)
        return matched


def test_two_sign_ins_rehashing_the_same_password_at_once_both_sign_in(uow, issuer, ann):
    tokens = sign_in(uow, RehashedDuring(ann), issuer, "ann@example.com", "correct horse battery")

    assert verifier_for(uow, issuer).verify(tokens.token).subject == str(ann.id)


def test_a_reset_committed_between_a_sign_in_s_check_and_its_session_starts_no_session(uow, passwords, issuer, ann, monkeypatch):
    commits = []

    def commit():
        commits.append(True)
        if len(commits) == 2:  # the sign-in's verdict is in; its session is not
            handlers.create_admin(RegistrationSchema().load({"email": "ann@example.com", "password": "a new admin password"}),
                                  uow, passwords)
    monkeypatch.setattr(uow, "commit", commit)

    with pytest.raises(InvalidCredentials):
        sign_in(uow, passwords, issuer, "ann@example.com", "correct horse battery")

    assert uow.sessions.rows == {}


def test_over_http_a_failed_sign_in_is_one_generic_401_problem(client, uow, passwords, ann):
    bodies = [
        client.post("/sessions", json={"email": email, "password": "wrong password!"})
        for email in ("ann@example.com", "nobody@example.com")
    ]

    assert [body.status_code for body in bodies] == [401, 401]
    assert bodies[0].get_json() == bodies[1].get_json()
    assert bodies[0].get_json()["detail"] == "Email or password is incorrect"


def test_over_http_sign_in_answers_a_bearer_token_that_is_never_cached(client, uow, ann):
    response = client.post("/sessions", json={"email": "ann@example.com", "password": "correct horse battery"})

    assert response.status_code == 201
    body = response.get_json()
    # short-lived access token; the refresh token gets the next one
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 900)
    assert body["refresh_token"] and body["refresh_expires_in"] == 14 * 24 * 3600
    assert response.headers["Cache-Control"] == "no-store"


def test_over_http_the_signed_in_buyer_sees_their_account(app, client, uow, ann):
    keks = app.extensions["floodgate"].key_encryption
    verifier = TokenVerifier(KeySet("unused", fetch=lambda _url: handlers.published_keys(uow, keks)), "floodgate-accounts", "floodgate")
    auth.init_app(app, verifier, "service-key")
    token = client.post("/sessions", json={"email": "ann@example.com", "password": "correct horse battery"}).get_json()

    response = client.get("/accounts/me", headers={"Authorization": f"Bearer {token['access_token']}"})

    assert response.status_code == 200
    assert response.get_json() == {"id": str(ann.id), "email": "ann@example.com", "name": "Ann", "role": "buyer", "tier": None}


def test_create_admin_asks_for_the_password_instead_of_taking_it_on_the_command_line(app, uow, monkeypatch):
    from services.accounts import cli

    monkeypatch.setattr(cli, "unit_of_work", lambda: uow)

    result = app.test_cli_runner().invoke(args=["create-admin", "--email", "boss@example.com"],
                                          input="admin password\nadmin password\n")

    assert result.exit_code == 0, result.output
    assert "admin password" not in result.output
    admin = uow.accounts.by_email("boss@example.com")
    assert admin.role == "admin" and str(admin.id) in result.output and uow.committed
