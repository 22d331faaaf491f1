"""Invites: admins issue codes with a tier; buyers redeem them; the tier lands in the token."""
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from marshmallow import ValidationError

from services.accounts import handlers
from services.accounts.errors import InviteNotUsable
from services.accounts.schemas import InviteRequestSchema, RegistrationSchema, SessionRequestSchema


def issue(uow, **body):
    return handlers.issue_invite(InviteRequestSchema().load(body), uow, issued_by=None)


def register(uow, passwords, email, **extra):
    return handlers.register_account(RegistrationSchema().load({"email": email, "password": "correct horse battery", **extra}), uow, passwords)


def test_an_invite_for_a_person_is_announced_with_its_code_for_the_email(uow):
    expires = datetime.now(timezone.utc) + timedelta(days=2)

    invite = issue(uow, email="Ann@Example.com", tier="early-access", expires_at=expires.isoformat())

    assert len(invite.code) == 12 and invite.code.isalnum()
    assert uow.published == [("invite.issued", {
        "invite_id": str(invite.id), "code": handlers.display_code(invite.code), "email": "ann@example.com",
        "tier": "early-access", "expires_at": invite.expires_at.isoformat(),
    })]


def test_a_multi_use_invite_without_an_email_announces_nothing(uow):
    invite = issue(uow, tier="vip", max_uses=100)

    assert invite.max_uses == 100 and uow.published == []


def test_redeeming_at_registration_gives_the_tier_and_new_tokens_carry_it(uow, passwords, issuer):
    invite = issue(uow, tier="early-access", max_uses=2)

    account = register(uow, passwords, "ann@example.com", invite_code=handlers.display_code(invite.code).lower())

    assert account.tier == "early-access" and invite.uses == 1
    tokens = handlers.open_session(SessionRequestSchema().load({"email": "ann@example.com", "password": "correct horse battery"}), uow, passwords, issuer)
    assert jwt.decode(tokens.token, options={"verify_signature": False})["tier"] == "early-access"


def test_redeeming_later_sets_the_tier_and_a_refresh_brings_it_into_the_token(uow, passwords, issuer):
    account = register(uow, passwords, "ann@example.com")
    tokens = handlers.open_session(SessionRequestSchema().load({"email": "ann@example.com", "password": "correct horse battery"}), uow, passwords, issuer)
    invite = issue(uow, tier="early-access")

    handlers.redeem_invite(invite.code, account, uow)
    handlers.redeem_invite(invite.code, account, uow)  # a retry changes nothing

    assert invite.uses == 1
    refreshed = handlers.refresh_session(tokens.refresh_token, uow, issuer)
    assert jwt.decode(refreshed.token, options={"verify_signature": False})["tier"] == "early-access"


def test_used_up_expired_unknown_and_someone_elses_codes_fail_alike(uow, passwords):
    ann, bob, cy = (register(uow, passwords, f"{n}@example.com") for n in ("ann", "bob", "cy"))
    single = issue(uow, tier="early-access")
    handlers.redeem_invite(single.code, ann, uow)
    expired = issue(uow, tier="early-access", max_uses=5)
    expired.expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
    for_ann = issue(uow, tier="early-access", email="ann@example.com")

    failures = []
    for code in (single.code, expired.code, "NOPE-NOPE-NOPE", for_ann.code):
        with pytest.raises(InviteNotUsable) as refused:
            handlers.redeem_invite(code, bob, uow)
        failures.append(refused.value.to_dict())

    assert all(failure == failures[0] for failure in failures)
    assert failures[0]["status"] == 422 and failures[0]["errors"] == {"code": ["This invite code cannot be used."]}
    assert bob.tier is None and cy.tier is None


def test_a_bad_code_at_registration_refuses_the_registration_on_that_field(uow, passwords):
    with pytest.raises(InviteNotUsable) as refused:
        register(uow, passwords, "ann@example.com", invite_code="NOPE")

    assert refused.value.to_dict()["errors"] == {"invite_code": ["This invite code cannot be used."]}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"tier": "Early Access"}, "tier"),
        ({"tier": "early", "max_uses": 0}, "max_uses"),
        ({"tier": "early", "email": "ann@example.com", "max_uses": 3}, "max_uses"),
        ({"tier": "early", "expires_at": "2020-01-01T00:00:00+00:00"}, "expires_at"),
        ({"tier": "early", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
        ({"tier": "early", "expires_at": "3000-01-01T00:00:01+00:00"}, "expires_at"),
        ({"tier": "early", "email": "not-an-email"}, "email"),
    ],
)
def test_bad_invite_requests_name_the_field(body, field):
    with pytest.raises(ValidationError) as refused:
        InviteRequestSchema().load(body)

    assert field in refused.value.messages


@pytest.fixture
def bearer(app, client, uow, passwords):
    """Headers signing in as ann (a buyer) or boss (an admin), verified with the app's own keys."""
    from shared import auth
    from shared.auth import KeySet, TokenVerifier

    keks = app.extensions["floodgate"].key_encryption
    auth.init_app(app, TokenVerifier(KeySet("unused", fetch=lambda _url: handlers.published_keys(uow, keks)), "floodgate-accounts", "floodgate"), "service-key")
    register(uow, passwords, "ann@example.com")
    handlers.create_admin(RegistrationSchema().load({"email": "boss@example.com", "password": "admin password"}), uow, passwords)

    def bearer(email, password):
        token = client.post("/sessions", json={"email": email, "password": password}).get_json()["access_token"]
        return {"Authorization": f"Bearer {token}"}

    return bearer


def test_over_http_only_admins_issue_invites(client, bearer):
    buyer = client.post("/invites", headers=bearer("ann@example.com", "correct horse battery"), json={"tier": "early"})
    admin = client.post("/invites", headers=bearer("boss@example.com", "admin password"), json={"tier": "early", "email": "cy@example.com"})

    assert buyer.status_code == 403
    assert admin.status_code == 201
    assert admin.get_json()["code"].count("-") == 2 and admin.get_json()["email"] == "cy@example.com"


def test_over_http_an_invite_expiring_past_the_year_3000_is_a_422_problem_and_nothing_is_stored(client, uow, bearer):
    # Year 10000 in UTC: PostgreSQL would store it, and every redemption would fail to read it.
    response = client.post("/invites", headers=bearer("boss@example.com", "admin password"),
                           json={"tier": "early", "expires_at": "9999-12-31T23:00:00-05:00"})

    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    assert "expires_at" in response.get_json()["errors"]
    assert uow.invites.rows == {}


def test_over_http_redeeming_locks_the_account_before_the_invite_so_a_double_click_answers_the_new_tier(client, uow, bearer):
    ann_auth = bearer("ann@example.com", "correct horse battery")
    invite = issue(uow, tier="early-access")
    ann = uow.accounts.by_email("ann@example.com")
    locked_before_the_invite, signing_in = [], len(uow.accounts.locked)
    by_code = uow.invites.by_code_for_update
    uow.invites.by_code_for_update = lambda code: (
        locked_before_the_invite.append(uow.accounts.locked[signing_in:]), by_code(code))[1]

    answers = [client.post("/accounts/me/invites", headers=ann_auth, json={"code": invite.code}) for _ in range(2)]

    assert [answer.get_json()["tier"] for answer in answers] == ["early-access"] * 2
    assert locked_before_the_invite == [[ann.id], [ann.id, ann.id]]
