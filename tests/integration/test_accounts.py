"""Accounts on drop day: tokens checkout refuses, throttled sign-ins, sessions, addresses, an outage."""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import jwt
import pytest
import requests
import sqlalchemy as sa
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from requests.adapters import HTTPAdapter

from devtools.client import poll
from services.accounts import key_encryption
from services.accounts.config import Settings as AccountsSettings
from services.accounts.key_encryption import KeyEncryptionKeys, SigningKeyUnreadable
from services.accounts.passwords import OWASP_ARGON2ID
from services.accounts.tokens import refresh_token_hash

PASSWORD = "correct horse battery"
ADDRESSES = {
    "CA": ({"street_address": "24 Sussex Drive", "city": "ottawa", "postal_code": "k1a0b1", "country_area": "Ontario"},
           {"city": "OTTAWA", "postal_code": "K1A 0B1", "country_area": "ON"}),
    "US": ({"street_address": "1600 Amphitheatre Pkwy", "city": "Mountain View", "postal_code": "940431351", "country_area": "California"},
           {"city": "MOUNTAIN VIEW", "postal_code": "94043-1351", "country_area": "CA"}),
    "GB": ({"street_address": "10 Downing Street", "city": "London", "postal_code": "sw1a1aa"},
           {"city": "LONDON", "postal_code": "SW1A 1AA", "country_area": ""}),
    "DE": ({"street_address": "Platz der Republik 1", "city": "Berlin", "postal_code": "11011"},
           {"city": "BERLIN", "postal_code": "11011", "country_area": ""}),
    "IN": ({"street_address": "1 Mahatma Gandhi Road", "city": "Mumbai", "postal_code": "400 001", "country_area": "Maharashtra"},
           {"city": "MUMBAI", "postal_code": "400001", "country_area": "Maharashtra"}),
    "JP": ({"street_address": "1-1 Chiyoda", "city": "Chiyoda-ku", "postal_code": "1008111", "country_area": "Tokyo"},
           {"street_address": "1-1 Chiyoda\nChiyoda-ku", "city": "", "postal_code": "100-8111", "country_area": "東京都"}),
}


def accounts(stack, path: str) -> str:
    return stack.url("accounts") + path


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def sign_in(stack, email: str, password: str = PASSWORD, http=requests) -> requests.Response:
    return http.post(accounts(stack, "/sessions"), json={"email": email, "password": password}, timeout=10)


class FromAddress(HTTPAdapter):
    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, source_address=(self.address, 0), **kwargs)


def other_client() -> tuple[requests.Session, str]:
    """An HTTP session connecting from an address of its own in 127.0.0.0/8 (all of it reaches
    the stack), so accounts sees another client than the tests' 127.0.0.1; and that address."""
    address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    http = requests.Session()
    http.mount("http://", FromAddress(address))
    return http, address


def refresh(stack, tokens: dict) -> requests.Response:
    return requests.post(accounts(stack, "/sessions/refresh"), json={"refresh_token": tokens["refresh_token"]}, timeout=10)


def signing_key(stack) -> tuple[str, str]:
    """The accounts service's current signing key, read from its database and decrypted as an
    insider holding the key-encryption key would."""
    row = accounts_rows(stack, "SELECT * FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1")[0]
    return row.kid, stack_keks(stack).decrypt(row.kid, row.encrypted_private_key)


def stack_keks(stack) -> KeyEncryptionKeys:
    """The KEKs the stack's accounts service runs with (none set: the development one)."""
    return key_encryption.configured(stack.env("accounts").get("SIGNING_KEY_ENCRYPTION_KEYS", ""), "development")


def accounts_rows(stack, sql: str, **params) -> list:
    engine = sa.create_engine(stack.infra.database_url("accounts"), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()


def accounts_command(stack, *argv: str) -> subprocess.CompletedProcess:
    """Run an accounts operator command (`flask ...` or `python -m ...`) as an operator would."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", *argv], cwd=root, env=stack.env("accounts"),
                          capture_output=True, text=True, timeout=60)


def claims(**changes) -> dict:
    now = int(time.time())
    body = {"iss": "floodgate-accounts", "aud": "floodgate", "sub": str(uuid.uuid4()), "role": "buyer",
            "email": "mallory@example.com", "tier": None, "iat": now, "nbf": now, "exp": now + 600}
    body.update(changes)
    return body


def test_checkout_refuses_tokens_unsigned_unknown_expired_early_or_for_another_audience(floodgate, stack, open_drop, buyer):
    kid, pem = signing_key(stack)
    now = int(time.time())
    forged = {
        "alg-none": jwt.encode(claims(), None, algorithm="none", headers={"kid": kid}),
        "unknown-key": jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "not-a-floodgate-key"}),
        "known-kid-other-key": jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": kid}),
        "expired": jwt.encode(claims(iat=now - 1200, nbf=now - 1200, exp=now - 600), pem, algorithm="ES256", headers={"kid": kid}),
        "other-audience": jwt.encode(claims(aud="another-platform"), pem, algorithm="ES256", headers={"kid": kid}),
        "not-yet-valid": jwt.encode(claims(nbf=now + 600, exp=now + 1200), pem, algorithm="ES256", headers={"kid": kid}),
    }

    for name, token in forged.items():
        refused = floodgate.place_order(token, open_drop["id"])
        assert refused.status_code == 401, (name, refused.text)
        assert refused.headers["Content-Type"] == "application/problem+json", name
        assert refused.json()["status"] == 401 and "Traceback" not in refused.text

    # The same key and claims, valid: the refusals above were for what was wrong, not the key.
    accepted = floodgate.place_order(jwt.encode(claims(), pem, algorithm="ES256", headers={"kid": kid}), open_drop["id"])
    assert accepted.status_code == 201, accepted.text
    assert floodgate.get_drop(open_drop["id"])["remaining"] == open_drop["quantity"] - 1


def test_thirty_wrong_passwords_throttle_that_account_from_that_client_while_another_signs_in(floodgate, stack):
    victim, _ = floodgate.register()
    other, _ = floodgate.register()

    answers = [sign_in(stack, victim, f"guess number {n}") for n in range(30)]

    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {401, 429}, statuses
    assert statuses.index(429) <= 6 and statuses[-1] == 429
    for answer in answers:
        assert answer.headers["Content-Type"] == "application/problem+json"
        if answer.status_code == 429:
            assert int(answer.headers["Retry-After"]) >= 1
            assert victim not in answer.text  # generic: does not say which account or why
    assert sign_in(stack, victim).status_code == 429  # even the right password waits, from the same client
    started = time.perf_counter()
    assert sign_in(stack, other).status_code == 201
    print(f"\nother account signed in in {1000 * (time.perf_counter() - started):.0f} ms while the victim was throttled")


def test_guesses_from_one_client_never_lock_the_owner_out_from_another(floodgate, stack):
    owner, _ = floodgate.register()
    guesses = [sign_in(stack, owner, f"guess number {n}").status_code for n in range(10)]
    assert guesses[-1] == 429, guesses  # the guesser's client waits ...
    owners_client, _ = other_client()

    signed_in = sign_in(stack, owner, http=owners_client)  # ... the owner's does not

    assert signed_in.status_code == 201, signed_in.text
    assert sign_in(stack, owner, "guess number 10").status_code == 429


def test_twenty_wrong_passwords_at_once_get_only_the_free_failures_checked(floodgate, stack):
    victim, _ = floodgate.register()
    barrier = threading.Barrier(20)

    def guess(n):
        barrier.wait()
        return sign_in(stack, victim, f"concurrent guess {n}")

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = sorted(answer.status_code for answer in pool.map(guess, range(20)))

    # Five free failures (the default), whatever the concurrency; the rest refused unchecked.
    assert statuses == [401] * 5 + [429] * 15, statuses
    rows = accounts_rows(stack, "SELECT key, failures FROM login_throttle WHERE key IN (:anywhere, :here) ORDER BY key",
                         anywhere=f"account:{victim}", here=f"client:127.0.0.1|account:{victim}")
    assert [(row.key, row.failures) for row in rows] == [(f"account:{victim}", 5), (f"client:127.0.0.1|account:{victim}", 5)]
    assert sign_in(stack, victim).status_code == 429
    # A right password from the same client is counted when it starts and given back.
    client_failures = ("SELECT key, failures, last_failure_at FROM login_throttle WHERE key LIKE 'client:%' "
                       "AND key NOT LIKE '%|account:%' ORDER BY key")
    before = accounts_rows(stack, client_failures)
    assert sign_in(stack, floodgate.register()[0]).status_code == 201
    assert accounts_rows(stack, client_failures) == before


def test_guesses_at_once_from_many_clients_get_no_more_checks_than_the_accounts_loose_limit(floodgate, stack):
    victim, _ = floodgate.register()
    # 98 of its 100 free failures from every client spent already (recorded rather than guessed:
    # 98 argon2 checks would only slow the test), then 20 guesses at once from 4 clients of 5
    # each: every client is within its own limits, so the account's loose limit is what holds.
    accounts_rows(stack, "INSERT INTO login_throttle (key, failures, last_failure_at) VALUES (:key, 98, now()) "
                         "ON CONFLICT (key) DO UPDATE SET failures = 98, last_failure_at = now()", key=f"account:{victim}")
    clients = [other_client()[0] for _ in range(4)]
    barrier = threading.Barrier(20)

    def guess(n):
        barrier.wait()
        return sign_in(stack, victim, f"distributed guess {n}", http=clients[n % 4])

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = sorted(answer.status_code for answer in pool.map(guess, range(20)))

    assert statuses == [401] * 2 + [429] * 18, statuses
    [row] = accounts_rows(stack, "SELECT failures, blocked_until - now() AS wait FROM login_throttle WHERE key = :key",
                          key=f"account:{victim}")
    assert row.failures == 100 and 0 < row.wait.total_seconds() <= 60
    # The owner, from a client of their own, waits no longer than the loose ceiling (60 s).
    owner = sign_in(stack, victim, http=other_client()[0])
    assert owner.status_code == 429 and 1 <= int(owner.headers["Retry-After"]) <= 60


def from_address(address: str) -> requests.Session:
    """An HTTP session of its own connecting from `address` (in 127.0.0.0/8): one of many buyers
    behind one shared address (carrier NAT, a campus)."""
    http = requests.Session()
    http.mount("http://", FromAddress(address))
    return http


def test_sixty_right_passwords_at_once_from_one_shared_address_all_sign_in_though_it_had_typos(floodgate, stack):
    # A campus behind one address on drop day: typos earlier (the client's free failures all but
    # ten spent), then sixty buyers sign in at once. Right passwords never count towards it.
    _, address = other_client()
    settings = AccountsSettings.from_env(stack.env("accounts"))
    typos = settings.login_client_free_failures - 10
    accounts_rows(stack, "INSERT INTO login_throttle (key, failures, last_failure_at) VALUES (:key, :typos, now())",
                  key=f"client:{address}", typos=typos)
    emails = [f"campus-{n}-{uuid.uuid4().hex[:8]}@example.com" for n in range(60)]
    # made directly (sixty registrations from one address would be a flood of their own)
    accounts_rows(stack, "INSERT INTO accounts (id, email, password_hash, role) "
                         "SELECT gen_random_uuid(), email, :hash, 'buyer' FROM unnest(CAST(:emails AS text[])) AS email",
                  emails=emails, hash=OWASP_ARGON2ID.hash(PASSWORD))
    barrier = threading.Barrier(60)

    def sign_in_at_once(email):
        barrier.wait()
        return sign_in(stack, email, http=from_address(address))

    with concurrent.futures.ThreadPoolExecutor(60) as pool:
        answers = list(pool.map(sign_in_at_once, emails))

    assert [answer.status_code for answer in answers] == [201] * 60, [answer.text for answer in answers if answer.status_code != 201][:3]
    client_failures = "SELECT failures FROM login_throttle WHERE key = :key"
    assert accounts_rows(stack, client_failures, key=f"client:{address}")[0].failures == typos
    # a wrong password from there still counts, once it proves wrong
    assert sign_in(stack, emails[0], "a typo again", http=from_address(address)).status_code == 401
    assert accounts_rows(stack, client_failures, key=f"client:{address}")[0].failures == typos + 1


def test_registrations_at_once_from_one_address_get_no_more_than_its_free_attempts(floodgate, stack):
    http, address = other_client()
    free = AccountsSettings.from_env(stack.env("accounts")).registration_client_free_attempts
    # all but three of its free attempts spent already (recorded, not registered: faster)
    accounts_rows(stack, "INSERT INTO login_throttle (key, failures, last_failure_at) VALUES (:key, :spent, now())",
                  key=f"register:{address}", spent=free - 3)
    barrier = threading.Barrier(12)

    def register(n):
        barrier.wait()
        return from_address(address).post(accounts(stack, "/accounts"), timeout=30, json={
            "email": f"signup-{n}-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD})

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(register, range(12)))

    assert sorted(answer.status_code for answer in answers) == [201] * 3 + [429] * 9, [answer.text for answer in answers]
    for answer in answers:
        if answer.status_code == 429:
            assert answer.json()["type"].endswith("/too-many-registrations") and int(answer.headers["Retry-After"]) >= 1
    created = accounts_rows(stack, "SELECT count(*) FROM accounts WHERE email = ANY(:emails)",
                            emails=[answer.json()["email"] for answer in answers if answer.status_code == 201])
    assert created[0][0] == 3
    # refused attempts count nothing; another address registers as usual
    assert accounts_rows(stack, "SELECT failures FROM login_throttle WHERE key = :key", key=f"register:{address}")[0].failures == free
    assert floodgate.register()


def test_one_email_in_any_case_registers_once_and_failed_sign_ins_look_alike(floodgate, stack):
    email = f"Case.Test-{uuid.uuid4().hex[:8]}@Example.COM"
    first = requests.post(accounts(stack, "/accounts"), json={"email": email, "password": PASSWORD}, timeout=10)
    again = requests.post(accounts(stack, "/accounts"), json={"email": email.lower(), "password": "another password ok"}, timeout=10)
    assert first.status_code == 201 and first.json()["email"] == email.lower()
    assert again.status_code == 409 and again.json()["type"].endswith("/email-taken")

    wrong_password = sign_in(stack, email.upper(), "not the password")
    unknown_email = sign_in(stack, f"nobody-{uuid.uuid4().hex[:8]}@example.com", "not the password")
    assert (wrong_password.status_code, wrong_password.json()) == (unknown_email.status_code, unknown_email.json())
    assert wrong_password.status_code == 401
    assert sign_in(stack, email.upper()).status_code == 201


def test_concurrent_registrations_of_one_email_make_one_account_and_the_others_are_409(floodgate, stack):
    # Each hashes its password between its check of the email and its insert: the unique email decides.
    email = f"twice-{uuid.uuid4().hex[:8]}@example.com"
    barrier = threading.Barrier(6)

    def register(_):
        barrier.wait()
        return requests.post(accounts(stack, "/accounts"), json={"email": email, "password": PASSWORD}, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(register, range(6)))

    assert sorted(answer.status_code for answer in answers) == [201] + [409] * 5, [answer.text for answer in answers]
    assert accounts_rows(stack, "SELECT count(*) FROM accounts WHERE email = :email", email=email)[0][0] == 1


def test_a_sign_in_email_that_lower_cases_past_its_column_and_an_invite_past_year_9999_in_utc_are_422s(floodgate, stack, admin_token):
    # "İ" lower-cases to two characters: the throttle's key would not fit its column.
    too_long = sign_in(stack, "İ" * 254, "wrong password!")
    # Year 10000 in UTC: PostgreSQL would store it and psycopg could never read it back.
    far = requests.post(accounts(stack, "/invites"), headers=bearer(admin_token), timeout=10,
                        json={"tier": "far-future", "expires_at": "9999-12-31T23:00:00-05:00"})

    for answer, field in ((too_long, "email"), (far, "expires_at")):
        assert answer.status_code == 422 and answer.headers["Content-Type"] == "application/problem+json", answer.text
        assert field in answer.json()["errors"]
    assert accounts_rows(stack, "SELECT count(*) FROM invites WHERE tier = 'far-future'")[0][0] == 0


def test_addresses_from_six_countries_come_back_normalised_and_a_us_address_with_a_canadian_code_is_refused(floodgate, stack, buyer):
    _, token = buyer
    saved = {}
    for country, (given, _) in ADDRESSES.items():
        answer = requests.post(accounts(stack, "/accounts/me/addresses"), headers=bearer(token), timeout=10,
                               json={"name": "Sam Buyer", "country_code": country, **given})
        assert answer.status_code == 201, (country, answer.text)
        saved[country] = answer.json()["id"]

    refused = requests.post(accounts(stack, "/accounts/me/addresses"), headers=bearer(token), timeout=10, json={
        "name": "Sam Buyer", "street_address": "1 Main Street", "city": "Buffalo", "postal_code": "K1A 0B1",
        "country_area": "NY", "country_code": "US"})
    assert refused.status_code == 422 and refused.headers["Content-Type"] == "application/problem+json"
    assert list(refused.json()["errors"]) == ["postal_code"]

    listed = requests.get(accounts(stack, "/accounts/me/addresses"), headers=bearer(token), timeout=10).json()["items"]
    assert len(listed) == 6  # the refused one was not kept
    by_id = {address["id"]: address for address in listed}
    for country, (_, expected) in ADDRESSES.items():
        address = by_id[saved[country]]
        assert address["country_code"] == country
        assert {field: address[field] for field in expected} == expected, country


def test_a_buyer_signed_in_before_accounts_dies_orders_and_pays_with_their_saved_canadian_address(floodgate, stack, admin_token, buyer):
    _, token = buyer
    drop = floodgate.create_drop(admin_token, quantity=5)
    given, _ = ADDRESSES["CA"]
    saved = requests.post(accounts(stack, "/accounts/me/addresses"), headers=bearer(token), timeout=10,
                          json={"name": "Alex Tremblay", "country_code": "CA", **given}).json()
    # What a client does before the drop: read the saved address, keep it to send inline.
    address = {field: saved[field] for field in ("name", "street_address", "city", "postal_code", "country_area", "country_code")}

    stack.kill("accounts-api")
    try:
        try:
            requests.get(accounts(stack, "/healthz"), timeout=2)
            raise AssertionError("accounts still answers after SIGKILL")
        except requests.ConnectionError:
            pass
        placed = floodgate.place_order(token, drop["id"], address=address)
        assert placed.status_code == 201, placed.text
        order = placed.json()
        assert floodgate.pay(order).status_code == 200
        confirmed = floodgate.wait_for_status(token, order["id"], "confirmed")
        assert confirmed["shipping_address"]["country_code"] == "CA"
        assert (confirmed["shipping_address"]["postal_code"], confirmed["shipping_address"]["country_area"]) == ("K1A 0B1", "ON")
        mail = poll(lambda: floodgate.mails_about(order["id"]), what="the confirmation email")[0]
        assert "K1A 0B1" in mail["text"] and "United States" not in mail["text"]
    finally:
        stack.start("accounts-api")
        poll(lambda: _ready(stack), timeout=60, what="accounts to be ready again")


def _ready(stack) -> bool:
    try:
        return requests.get(accounts(stack, "/readyz"), timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_reusing_a_rotated_refresh_token_ends_the_whole_session_and_logout_everywhere_ends_the_rest(floodgate, stack):
    email, _ = floodgate.register()
    first = sign_in(stack, email).json()
    other_device = sign_in(stack, email).json()

    rotated = requests.post(accounts(stack, "/sessions/refresh"), json={"refresh_token": first["refresh_token"]}, timeout=10)
    assert rotated.status_code == 201
    assert rotated.json()["refresh_token"] != first["refresh_token"]
    assert floodgate.http.get(accounts(stack, "/accounts/me"), headers=bearer(rotated.json()["access_token"])).status_code == 200

    newest = refresh(stack, rotated.json())  # the holder refreshes again
    assert newest.status_code == 201

    # the first token again, after its successor was used: not a retry but a second holder
    replayed = requests.post(accounts(stack, "/sessions/refresh"), json={"refresh_token": first["refresh_token"]}, timeout=10)
    assert replayed.status_code == 401 and replayed.json()["type"].endswith("/invalid-refresh-token")
    family = refresh(stack, newest.json())
    assert family.status_code == 401  # the legitimate holder's newer token died with the family

    elsewhere = requests.post(accounts(stack, "/sessions/refresh"), json={"refresh_token": other_device["refresh_token"]}, timeout=10)
    assert elsewhere.status_code == 201  # another sign-in is another family
    out = requests.delete(accounts(stack, "/accounts/me/sessions"), headers=bearer(elsewhere.json()["access_token"]), timeout=10)
    assert out.status_code == 204
    assert requests.post(accounts(stack, "/sessions/refresh"), json={"refresh_token": elsewhere.json()["refresh_token"]},
                         timeout=10).status_code == 401


def test_an_invite_redeemed_at_registration_puts_its_tier_in_the_token_and_is_announced(floodgate, stack, admin_token):
    email = f"invited-{uuid.uuid4().hex[:8]}@example.com"
    issued = requests.post(accounts(stack, "/invites"), headers=bearer(admin_token), timeout=10,
                           json={"email": email, "tier": "early-access"})
    assert issued.status_code == 201, issued.text
    _, buyer_token = floodgate.register()
    assert requests.post(accounts(stack, "/invites"), headers=bearer(buyer_token), json={"tier": "x"}, timeout=10).status_code == 403

    registered = requests.post(accounts(stack, "/accounts"), timeout=10,
                               json={"email": email, "password": PASSWORD, "invite_code": issued.json()["code"]})
    assert registered.status_code == 201 and registered.json()["tier"] == "early-access"
    token = sign_in(stack, email).json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["tier"] == "early-access"

    engine = sa.create_engine(stack.infra.database_url("accounts"), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            codes = conn.execute(sa.text(
                "SELECT envelope->'data'->>'code' FROM outbox WHERE event_type = 'invite.issued' AND envelope->'data'->>'email' = :e"
            ), {"e": email}).scalars().all()
    finally:
        engine.dispose()
    assert codes == [issued.json()["code"]]


def session_tokens(stack, tokens: dict) -> list:
    """Every refresh token of the session `tokens` belongs to, and whether it is revoked."""
    return accounts_rows(stack, "SELECT t.token_hash, t.used_at, s.revoked_at FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id "
                                "WHERE t.session_id = (SELECT session_id FROM refresh_tokens WHERE token_hash = :hash) ORDER BY t.issued_at",
                         hash=refresh_token_hash(tokens["refresh_token"]))


def test_a_refresh_retried_after_a_lost_answer_gets_new_tokens_and_the_session_stays(floodgate, stack):
    email, _ = floodgate.register()
    signed = sign_in(stack, email).json()
    lost = refresh(stack, signed)  # as if the answer never arrived (a timeout, a 5xx)
    assert lost.status_code == 201

    retried = refresh(stack, signed)  # the client retries, as this service's README tells it to

    assert retried.status_code == 201, retried.text
    assert me(stack, retried.json()["access_token"]) == 200
    tokens = session_tokens(stack, signed)
    assert [row.token_hash for row in tokens if row.used_at is None] == [refresh_token_hash(retried.json()["refresh_token"])]
    assert {row.revoked_at for row in tokens} == {None}
    assert refresh(stack, retried.json()).status_code == 201


def test_a_refresh_token_presented_after_the_grace_ends_its_session(floodgate, stack):
    email, _ = floodgate.register()
    signed = sign_in(stack, email).json()
    rotated = refresh(stack, signed).json()
    # exchanged 31 s ago (the grace is 30 s), with the token it issued
    accounts_rows(stack, "UPDATE refresh_tokens SET issued_at = issued_at - interval '31 seconds', "
                         "used_at = used_at - interval '31 seconds' WHERE session_id = "
                         "(SELECT session_id FROM refresh_tokens WHERE token_hash = :hash)", hash=refresh_token_hash(signed["refresh_token"]))

    assert refresh(stack, signed).status_code == 401
    assert refresh(stack, rotated).status_code == 401  # the whole session ended
    assert {row.revoked_at is not None for row in session_tokens(stack, signed)} == {True}


def test_two_concurrent_refreshes_with_one_token_leave_one_live_token_and_the_session(floodgate, stack):
    # Served one after the other (the session's row lock): the first rotates the token, the
    # second is a retry within the grace and spends the token the first issued. Never two live
    # tokens in one session.
    email, _ = floodgate.register()
    signed = sign_in(stack, email).json()
    barrier = threading.Barrier(2)

    def refresh_at_once():
        barrier.wait()
        return refresh(stack, signed)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: refresh_at_once(), range(2)))

    assert [answer.status_code for answer in answers] == [201, 201], [answer.text for answer in answers]
    tokens = session_tokens(stack, signed)
    live = [row.token_hash for row in tokens if row.used_at is None]
    assert len(tokens) == 3 and len(live) == 1 and {row.revoked_at for row in tokens} == {None}
    [winner] = [answer.json() for answer in answers if refresh_token_hash(answer.json()["refresh_token"]) in live]
    assert refresh(stack, winner).status_code == 201


def test_concurrent_registrations_never_use_an_invite_more_times_than_it_allows(floodgate, stack, admin_token):
    code = requests.post(accounts(stack, "/invites"), headers=bearer(admin_token), timeout=10,
                         json={"tier": "early-access", "max_uses": 3}).json()["code"]
    barrier = threading.Barrier(8)

    def register(n):
        barrier.wait()
        return requests.post(accounts(stack, "/accounts"), timeout=30, json={
            "email": f"rush-{n}-{uuid.uuid4().hex[:6]}@example.com", "password": PASSWORD, "invite_code": code})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(register, range(8)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] * 3 + [422] * 5, [answer.text for answer in answers]
    assert all(answer.json()["tier"] == "early-access" for answer in answers if answer.status_code == 201)


@contextlib.contextmanager
def row_locked(stack, sql: str, **params) -> Iterator[Callable[[], int]]:
    """Hold the lock `sql` takes (a `SELECT ... FOR UPDATE`) from the test's own connection until
    the block ends; yields a probe counting the accounts connections waiting for a lock meanwhile."""
    engine = sa.create_engine(stack.infra.database_url("accounts"), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as holder, engine.connect() as observer:
            holder.execute(sa.text(sql), params)

            def waiting() -> int:
                count = observer.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")).scalar()
                observer.rollback()  # pg_stat_activity is read once per transaction
                return count

            try:
                yield waiting
            finally:
                holder.rollback()
    finally:
        engine.dispose()


def twice_at_once_behind(stack, lock_sql: str, request: Callable[[], requests.Response], **params) -> list[requests.Response]:
    """`request` sent twice at once while the test holds the lock `lock_sql` takes; released only
    once both wait in the database, so they are served one after the other from the same start."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with row_locked(stack, lock_sql, **params) as waiting:
            sent = [pool.submit(request) for _ in range(2)]
            poll(lambda: waiting() == 2, timeout=20, interval=0.02, what="both requests to wait for the lock")
        return [answer.result(timeout=30) for answer in sent]


def test_two_addresses_saved_at_once_never_exceed_the_limit(floodgate, stack, buyer):
    _, token = buyer
    given, _ = ADDRESSES["CA"]
    address = {"name": "Sam Buyer", "country_code": "CA", **given}
    for _ in range(AccountsSettings().max_addresses_per_account - 1):
        assert requests.post(accounts(stack, "/accounts/me/addresses"), headers=bearer(token), json=address, timeout=10).status_code == 201
    account_id = jwt.decode(token, options={"verify_signature": False})["sub"]

    answers = twice_at_once_behind(
        stack, "SELECT 1 FROM accounts WHERE id = :id FOR UPDATE",
        lambda: requests.post(accounts(stack, "/accounts/me/addresses"), headers=bearer(token), json=address, timeout=30),
        id=account_id)

    assert sorted(answer.status_code for answer in answers) == [201, 409], [answer.text for answer in answers]
    listed = requests.get(accounts(stack, "/accounts/me/addresses"), headers=bearer(token), timeout=10).json()["items"]
    assert len(listed) == AccountsSettings().max_addresses_per_account


def test_an_invite_redeemed_twice_at_once_answers_the_new_tier_both_times(floodgate, stack, admin_token, buyer):
    _, token = buyer
    code = requests.post(accounts(stack, "/invites"), headers=bearer(admin_token), timeout=10,
                         json={"tier": "double-click", "max_uses": 5}).json()["code"]

    answers = twice_at_once_behind(
        stack, "SELECT 1 FROM invites WHERE code = :code FOR UPDATE",
        lambda: requests.post(accounts(stack, "/accounts/me/invites"), headers=bearer(token), json={"code": code}, timeout=30),
        code=code.replace("-", ""))

    assert [(answer.status_code, answer.json()["tier"]) for answer in answers] == [(200, "double-click")] * 2
    assert accounts_rows(stack, "SELECT uses FROM invites WHERE code = :code", code=code.replace("-", ""))[0].uses == 1


def me(stack, token: str) -> int:
    return requests.get(accounts(stack, "/accounts/me"), headers=bearer(token), timeout=10).status_code


def keys_in_clear(stack) -> list[str]:
    return [row.kid for row in accounts_rows(
        stack, "SELECT kid FROM signing_keys WHERE private_key_pem IS NOT NULL OR encrypted_private_key LIKE '%PRIVATE KEY%'")]


def test_signing_keys_are_stored_encrypted_and_one_stored_in_clear_signs_until_the_command_encrypts_it(floodgate, stack):
    email, token = floodgate.register()
    assert me(stack, token) == 200
    assert keys_in_clear(stack) == []
    kid = jwt.get_unverified_header(token)["kid"]
    (stored,) = accounts_rows(stack, "SELECT * FROM signing_keys WHERE kid = :kid", kid=kid)
    with pytest.raises(SigningKeyUnreadable):
        KeyEncryptionKeys([Fernet.generate_key().decode()]).decrypt(kid, stored.encrypted_private_key)
    private_key = serialization.load_pem_private_key(stack_keks(stack).decrypt(kid, stored.encrypted_private_key).encode(), None)
    assert jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)["x"] == stored.public_jwk["x"]

    # a key as the version before encryption stored it, made the signing key: the newest of those
    # published long enough to sign (a key younger than SIGNING_KEY_PUBLISH_SECONDS does not yet)
    legacy_kid = f"stored-in-clear-{uuid.uuid4().hex[:8]}"
    legacy = ec.generate_private_key(ec.SECP256R1())
    public_jwk = jwt.algorithms.ECAlgorithm.to_jwk(legacy.public_key(), as_dict=True) | {"kid": legacy_kid, "alg": "ES256", "use": "sig"}
    pem = legacy.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    published = AccountsSettings().signing_key_publish_seconds + 1
    accounts_rows(stack, "INSERT INTO signing_keys (kid, private_key_pem, public_jwk, created_at) "
                         "VALUES (:kid, :pem, CAST(:jwk AS jsonb), now() - make_interval(secs => :published))",
                  kid=legacy_kid, pem=pem, jwk=json.dumps(public_jwk), published=published)
    before = sign_in(stack, email).json()["access_token"]
    assert jwt.get_unverified_header(before)["kid"] == legacy_kid
    poll(lambda: me(stack, before) == 200, timeout=10, what="a token signed with the key stored in clear to verify")
    assert keys_in_clear(stack) == [legacy_kid]

    done = accounts_command(stack, "flask", "--app", "services.accounts.app", "reencrypt-signing-keys")

    assert done.returncode == 0, done.stderr
    assert "encrypted 1 key(s) stored in clear" in done.stdout
    assert keys_in_clear(stack) == []
    after = sign_in(stack, email).json()["access_token"]
    assert jwt.get_unverified_header(after)["kid"] == legacy_kid
    assert me(stack, after) == me(stack, before) == 200


def test_the_purge_deletes_long_spent_refresh_tokens_and_dead_sessions_and_keeps_live_and_recent_ones(floodgate, stack):
    email, _ = floodgate.register()

    def refresh(tokens: dict) -> requests.Response:
        return requests.post(accounts(stack, "/sessions/refresh"), json={"refresh_token": tokens["refresh_token"]}, timeout=10)

    def backdate(sql: str, tokens: dict) -> None:
        accounts_rows(stack, sql, hash=refresh_token_hash(tokens["refresh_token"]))

    live = sign_in(stack, email).json()
    used_now = sign_in(stack, email).json()
    after_used_now = refresh(used_now).json()
    used_long_ago = sign_in(stack, email).json()
    after_used_long_ago = refresh(used_long_ago).json()
    backdate("UPDATE refresh_tokens SET issued_at = issued_at - interval '22 days', used_at = used_at - interval '22 days', "
             "expires_at = expires_at - interval '22 days' WHERE token_hash = :hash", used_long_ago)  # expired 8 days ago
    used_long_ago_unexpired = sign_in(stack, email).json()
    after_used_long_ago_unexpired = refresh(used_long_ago_unexpired).json()
    backdate("UPDATE refresh_tokens SET issued_at = issued_at - interval '8 days', used_at = used_at - interval '8 days' "
             "WHERE token_hash = :hash", used_long_ago_unexpired)  # expires in 6 days
    logged_out = sign_in(stack, email).json()
    assert requests.post(accounts(stack, "/sessions/logout"), json={"refresh_token": logged_out["refresh_token"]}, timeout=10).status_code == 204
    backdate("UPDATE sessions SET created_at = created_at - interval '8 days', revoked_at = revoked_at - interval '8 days' "
             "WHERE id = (SELECT session_id FROM refresh_tokens WHERE token_hash = :hash)", logged_out)
    expired = sign_in(stack, email).json()
    backdate("UPDATE refresh_tokens SET issued_at = issued_at - interval '22 days', expires_at = expires_at - interval '22 days' "
             "WHERE token_hash = :hash", expired)
    backdate("UPDATE sessions SET created_at = created_at - interval '22 days' "
             "WHERE id = (SELECT session_id FROM refresh_tokens WHERE token_hash = :hash)", expired)
    sessions = {name: accounts_rows(stack, "SELECT session_id FROM refresh_tokens WHERE token_hash = :hash",
                                    hash=refresh_token_hash(tokens["refresh_token"]))[0].session_id
                for name, tokens in (("logged_out", logged_out), ("expired", expired), ("live", live))}

    done = accounts_command(stack, "services.accounts", "purge-refresh-tokens", "--batch-size", "1")

    assert done.returncode == 0, done.stderr
    assert "deleted 2 expired and 1 revoked refresh token(s) and 2 session(s) left without tokens" in done.stdout
    gone = [tokens for tokens in (used_long_ago, logged_out, expired)
            if not accounts_rows(stack, "SELECT 1 FROM refresh_tokens WHERE token_hash = :hash", hash=refresh_token_hash(tokens["refresh_token"]))]
    assert gone == [used_long_ago, logged_out, expired]
    left = {row.id for row in accounts_rows(stack, "SELECT id FROM sessions WHERE id = ANY(:ids)", ids=list(sessions.values()))}
    assert left == {sessions["live"]}
    # live sessions refresh as before
    assert refresh(live).status_code == 201
    assert refresh(after_used_long_ago).status_code == 201
    assert refresh(after_used_now).status_code == 201
    # a token used within the retention is kept, and so is one used before it that has not
    # expired: presenting it again still ends its session
    assert accounts_rows(stack, "SELECT 1 FROM refresh_tokens WHERE token_hash = :hash", hash=refresh_token_hash(used_now["refresh_token"]))
    assert refresh(used_long_ago_unexpired).status_code == 401
    assert refresh(after_used_long_ago_unexpired).status_code == 401
    # one purged is refused as unknown
    assert refresh(used_long_ago).status_code == 401
