"""Refresh tokens: opaque, stored hashed, rotated on use; a reuse ends the whole session, a
retry of a lost answer does not."""
from datetime import timedelta

import jwt
import pytest

from services.accounts import handlers
from services.accounts.errors import InvalidRefreshToken
from services.accounts.schemas import RegistrationSchema, SessionRequestSchema
from services.accounts.tokens import refresh_token_hash


GRACE = timedelta(seconds=30)  # the default, as the README gives it


@pytest.fixture
def ann(uow, passwords):
    return handlers.register_account(RegistrationSchema().load({"email": "ann@example.com", "password": "correct horse battery"}), uow, passwords)


@pytest.fixture
def signed_in(uow, passwords, issuer, ann):
    def sign_in():
        cmd = SessionRequestSchema().load({"email": "ann@example.com", "password": "correct horse battery"})
        return handlers.open_session(cmd, uow, passwords, issuer)

    return sign_in


def test_the_refresh_token_is_stored_only_as_a_hash(uow, signed_in):
    tokens = signed_in()

    assert len(uow.refresh_tokens.rows) == 1
    (stored,) = uow.refresh_tokens.rows
    assert tokens.refresh_token not in stored and len(stored) == 64


def test_a_refresh_rotates_the_token_and_gives_a_fresh_access_token(uow, issuer, clock, signed_in, ann):
    first = signed_in()

    second = handlers.refresh_session(first.refresh_token, uow, issuer)

    assert second.refresh_token != first.refresh_token
    claims = jwt.decode(second.token, options={"verify_signature": False})
    assert claims["sub"] == str(ann.id)
    clock.now += GRACE + timedelta(seconds=1)
    with pytest.raises(InvalidRefreshToken):  # the old one worked once
        handlers.refresh_session(first.refresh_token, uow, issuer)


def test_reusing_a_rotated_token_revokes_every_token_of_that_sign_in_but_not_other_sign_ins(uow, issuer, clock, signed_in):
    stolen = signed_in()
    other_device = signed_in()
    rotated = handlers.refresh_session(stolen.refresh_token, uow, issuer)
    clock.now += GRACE + timedelta(seconds=1)

    with pytest.raises(InvalidRefreshToken):
        handlers.refresh_session(stolen.refresh_token, uow, issuer)  # the thief (or the owner) replays it

    assert uow.committed  # the revocation is kept although the request fails
    with pytest.raises(InvalidRefreshToken):
        handlers.refresh_session(rotated.refresh_token, uow, issuer)  # the whole family is gone
    assert handlers.refresh_session(other_device.refresh_token, uow, issuer).token
    reasons = sorted(str(s.revoked_reason) for s in uow.sessions.rows.values())
    assert reasons == ["None", "refresh-token-reuse"]


def test_a_refresh_retried_after_its_answer_was_lost_gets_new_tokens_and_the_session_stays(uow, issuer, clock, signed_in):
    signed = signed_in()
    lost = handlers.refresh_session(signed.refresh_token, uow, issuer)  # the answer never arrives
    clock.now += GRACE - timedelta(seconds=1)

    retried = handlers.refresh_session(signed.refresh_token, uow, issuer)  # as the README tells clients to

    assert retried.refresh_token not in (signed.refresh_token, lost.refresh_token)
    assert [s.revoked_at for s in uow.sessions.rows.values()] == [None]
    assert row(uow, lost).used_at == clock.now  # the lost answer's token is spent by the retry
    clock.now += timedelta(minutes=10)
    assert handlers.refresh_session(retried.refresh_token, uow, issuer).token  # the session goes on


def test_a_token_presented_again_after_the_grace_ends_its_session(uow, issuer, clock, signed_in):
    signed = signed_in()
    rotated = handlers.refresh_session(signed.refresh_token, uow, issuer)
    clock.now += GRACE + timedelta(seconds=1)

    with pytest.raises(InvalidRefreshToken):
        handlers.refresh_session(signed.refresh_token, uow, issuer)

    assert [s.revoked_reason for s in uow.sessions.rows.values()] == ["refresh-token-reuse"]
    with pytest.raises(InvalidRefreshToken):
        handlers.refresh_session(rotated.refresh_token, uow, issuer)


@pytest.mark.parametrize("successor_spent_by", ["its holder", "a retry"])
def test_a_token_presented_again_after_its_successor_was_used_ends_its_session_even_within_the_grace(uow, issuer, clock, signed_in, successor_spent_by):
    signed = signed_in()
    rotated = handlers.refresh_session(signed.refresh_token, uow, issuer)
    clock.now += timedelta(seconds=1)
    if successor_spent_by == "its holder":
        latest = handlers.refresh_session(rotated.refresh_token, uow, issuer)
    else:
        latest = handlers.refresh_session(signed.refresh_token, uow, issuer)
    clock.now += timedelta(seconds=1)

    with pytest.raises(InvalidRefreshToken):  # a thief's copy, or the owner's
        handlers.refresh_session(signed.refresh_token, uow, issuer)

    assert uow.committed and [s.revoked_reason for s in uow.sessions.rows.values()] == ["refresh-token-reuse"]
    with pytest.raises(InvalidRefreshToken):
        handlers.refresh_session(latest.refresh_token, uow, issuer)


def test_over_http_a_refresh_retried_within_the_grace_gets_new_tokens(client, uow, ann):
    signed = client.post("/sessions", json={"email": "ann@example.com", "password": "correct horse battery"}).get_json()

    first = client.post("/sessions/refresh", json={"refresh_token": signed["refresh_token"]})
    again = client.post("/sessions/refresh", json={"refresh_token": signed["refresh_token"]})

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.get_json()["refresh_token"] != first.get_json()["refresh_token"]
    assert client.post("/sessions/refresh", json={"refresh_token": again.get_json()["refresh_token"]}).status_code == 201


def test_logout_ends_that_session_only_and_unknown_tokens_change_nothing(uow, issuer, signed_in):
    phone, laptop = signed_in(), signed_in()

    handlers.end_session(phone.refresh_token, uow)
    handlers.end_session("not-a-token", uow)

    with pytest.raises(InvalidRefreshToken):
        handlers.refresh_session(phone.refresh_token, uow, issuer)
    assert handlers.refresh_session(laptop.refresh_token, uow, issuer).token


def test_logout_everywhere_ends_every_session(uow, issuer, signed_in, ann):
    phone, laptop = signed_in(), signed_in()

    assert handlers.end_all_sessions(str(ann.id), uow) == 2

    for tokens in (phone, laptop):
        with pytest.raises(InvalidRefreshToken):
            handlers.refresh_session(tokens.refresh_token, uow, issuer)


def test_an_expired_refresh_token_is_refused(uow, issuer, signed_in):
    tokens = signed_in()
    for row in uow.refresh_tokens.rows.values():
        row.expires_at = row.issued_at

    with pytest.raises(InvalidRefreshToken):
        handlers.refresh_session(tokens.refresh_token, uow, issuer)


def test_over_http_refresh_and_logout(client, uow, ann):
    signed = client.post("/sessions", json={"email": "ann@example.com", "password": "correct horse battery"}).get_json()

    refreshed = client.post("/sessions/refresh", json={"refresh_token": signed["refresh_token"]})
    assert refreshed.status_code == 201 and refreshed.headers["Cache-Control"] == "no-store"
    assert client.post("/sessions/logout", json={"refresh_token": refreshed.get_json()["refresh_token"]}).status_code == 204

    again = client.post("/sessions/refresh", json={"refresh_token": refreshed.get_json()["refresh_token"]})
    assert again.status_code == 401 and again.mimetype == "application/problem+json"
    assert again.get_json()["type"].endswith("/invalid-refresh-token")
    assert client.post("/sessions/refresh", json={}).status_code == 422



def test_the_purge_removes_long_spent_tokens_and_dead_sessions_in_bounded_batches_and_keeps_the_rest(uow, issuer, signed_in):
    long_ago = timedelta(days=8)
    live = signed_in()
    refreshed = signed_in()
    refreshed_now = handlers.refresh_session(refreshed.refresh_token, uow, issuer)
    refreshed_long_ago = signed_in()
    handlers.refresh_session(refreshed_long_ago.refresh_token, uow, issuer)
    row(uow, refreshed_long_ago).used_at -= timedelta(days=14) + long_ago  # and expired since
    row(uow, refreshed_long_ago).expires_at -= timedelta(days=14) + long_ago
    # used as long ago but not expired yet: a copy of it could still be tried, so it is kept
    refreshed_long_ago_unexpired = signed_in()
    handlers.refresh_session(refreshed_long_ago_unexpired.refresh_token, uow, issuer)
    row(uow, refreshed_long_ago_unexpired).used_at -= long_ago
    logged_out = [signed_in() for _ in range(3)]
    for tokens in logged_out:
        handlers.end_session(tokens.refresh_token, uow)
        backdate(session_of(uow, tokens), long_ago)
    expired = signed_in()
    row(uow, expired).expires_at -= timedelta(days=14) + long_ago
    backdate(session_of(uow, expired), timedelta(days=14) + long_ago)
    dead_sessions = {session_of(uow, tokens).id for tokens in [*logged_out, expired]}
    sessions_before = set(uow.sessions.rows)

    deleted = handlers.purge_spent_refresh_tokens(uow, retention=timedelta(days=7), batch_size=2)

    assert deleted == {"expired": 2, "revoked": 3, "sessions": 4}
    assert max(uow.refresh_tokens.batches) <= 2 and uow.committed
    assert [row(uow, tokens) for tokens in [refreshed_long_ago, expired, *logged_out]] == [None] * 5
    assert set(uow.sessions.rows) == sessions_before - dead_sessions
    # spent within the retention: still known, so presenting it again is still seen as a theft
    assert row(uow, refreshed).used_at is not None
    assert handlers.refresh_session(live.refresh_token, uow, issuer).token
    assert handlers.refresh_session(refreshed_now.refresh_token, uow, issuer).token
    # used long ago but not expired: still known, so a copy presented now is still a theft
    with pytest.raises(InvalidRefreshToken):
        handlers.refresh_session(refreshed_long_ago_unexpired.refresh_token, uow, issuer)
    assert session_of(uow, refreshed_long_ago_unexpired).revoked_reason == "refresh-token-reuse"


def row(uow, tokens):
    return uow.refresh_tokens.rows.get(refresh_token_hash(tokens.refresh_token))


def session_of(uow, tokens):
    return uow.sessions.rows[row(uow, tokens).session_id]


def backdate(signed_in, by):
    signed_in.created_at -= by
    if signed_in.revoked_at is not None:
        signed_in.revoked_at -= by
