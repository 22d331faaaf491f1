"""Accounts' HTTP endpoints: thin views over the handlers."""
from flask import Blueprint, Response, jsonify, request

from shared import addresses
from shared.auth import current_principal, require_admin, require_service, require_user
from shared.openapi import operation
from shared.web import load, root, unit_of_work
from services.accounts import handlers, schemas

bp = Blueprint("accounts", __name__)

INVITE_RULE = ("is an invite still open to this account: not unknown, expired, used up or issued to someone else "
               "(one answer for all of them, `invite-not-usable`)")


def _no_store(body: dict, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/accounts")
@operation("Register a buyer (optionally redeeming an invite code); registrations are limited per client address",
           request=schemas.RegistrationSchema, response=schemas.AccountSchema, status=201, errors=(409, 429, 503),
           rules=(f"`invite_code`, when given, {INVITE_RULE}",
                  f"`email` {schemas.REGISTRATION_EMAIL_RULE}"))
def register():
    cmd = load(schemas.RegistrationSchema())
    cmd["client"] = request.remote_addr
    deps = root()
    with unit_of_work() as uow:
        account = handlers.register_account(cmd, uow, deps.passwords, throttle=deps.registration_throttle)
        uow.commit()
    return schemas.AccountSchema().dump(account), 201


@bp.post("/sessions")
@operation("Sign in: exchange email and password for an access token and a refresh token", request=schemas.SessionRequestSchema, response=schemas.SessionTokensSchema, status=201, errors=(400, 401, 429, 503))
def sign_in():
    cmd = load(schemas.SessionRequestSchema())
    cmd["client"] = request.remote_addr
    deps = root()
    with unit_of_work() as uow:
        tokens = handlers.open_session(cmd, uow, deps.passwords, deps.issuer, deps.throttle, deps.refresh_ttl)
        uow.commit()
    return _no_store(schemas.SessionTokensSchema().dump(tokens), 201)


@bp.post("/sessions/refresh")
@operation("Exchange a refresh token (once; a retry within 30 s of a lost answer is answered again) for new tokens; a reused one ends its whole session", request=schemas.RefreshTokenSchema, response=schemas.SessionTokensSchema, status=201, errors=(400, 401, 503))
def refresh():
    cmd = load(schemas.RefreshTokenSchema())
    deps = root()
    with unit_of_work() as uow:
        tokens = handlers.refresh_session(cmd["refresh_token"], uow, deps.issuer, deps.refresh_ttl, deps.refresh_reuse_grace)
        uow.commit()
    return _no_store(schemas.SessionTokensSchema().dump(tokens), 201)


@bp.post("/sessions/logout")
@operation("Log out: end the session this refresh token belongs to", request=schemas.RefreshTokenSchema, status=204, errors=(400,))
def logout():
    cmd = load(schemas.RefreshTokenSchema())
    with unit_of_work() as uow:
        handlers.end_session(cmd["refresh_token"], uow)
        uow.commit()
    return "", 204


@bp.delete("/accounts/me/sessions")
@operation("Log out everywhere: end every session of the signed-in account", status=204, errors=(404,), auth="bearer")
@require_user
def logout_everywhere():
    with unit_of_work() as uow:
        handlers.end_all_sessions(current_principal().subject, uow)
        uow.commit()
    return "", 204


@bp.get("/.well-known/jwks.json")
@operation("The public keys that verify access tokens", response=schemas.KeySetSchema)
def jwks():
    with unit_of_work() as uow:
        key_set = handlers.published_keys(uow, root().key_encryption)
        uow.commit()
    response = jsonify(schemas.KeySetSchema().dump(key_set))
    # No HTTP cache may keep a key set past a new key's wait before it signs (nor past the time
    # verifiers keep theirs): a verifier fetching through one must find the key by then.
    settings = root().settings
    max_age = min(settings.jwks_max_age_seconds, settings.signing_key_publish_seconds)
    response.headers["Cache-Control"] = f"public, max-age={int(max_age)}"
    return response


@bp.get("/accounts/me")
@operation("The signed-in account", response=schemas.AccountSchema, errors=(404,), auth="bearer")
@require_user
def me():
    with unit_of_work() as uow:
        account = handlers.find_account(current_principal().subject, uow)
        return schemas.AccountSchema().dump(account)


@bp.post("/invites")
@operation("Issue an invite code (admin); one for a person is emailed to them", request=schemas.InviteRequestSchema, response=schemas.InviteSchema, status=201, auth="admin",
           rules=("`expires_at`, when given, is in the future", "an invite for one `email` has `max_uses` 1"))
@require_admin
def issue_invite():
    cmd = load(schemas.InviteRequestSchema())
    with unit_of_work() as uow:
        invite = handlers.issue_invite(cmd, uow, current_principal().subject)
        uow.commit()
    return schemas.InviteSchema().dump(invite), 201


@bp.post("/accounts/me/invites")
@operation("Redeem an invite code: the account gets its tier (refresh to get a token carrying it)", request=schemas.RedeemInviteSchema, response=schemas.AccountSchema, errors=(404,), auth="bearer",
           rules=(f"`code` {INVITE_RULE}",))
@require_user
def redeem_invite():
    cmd = load(schemas.RedeemInviteSchema())
    with unit_of_work() as uow:
        account = handlers.redeem_invite_for(current_principal().subject, cmd["code"], uow)
        uow.commit()
    return schemas.AccountSchema().dump(account)


@bp.get("/accounts/me/addresses")
@operation("The signed-in buyer's saved shipping addresses", response=schemas.AddressListSchema, errors=(404,), auth="bearer")
@require_user
def list_addresses():
    with unit_of_work() as uow:
        return schemas.AddressListSchema().dump({"items": handlers.addresses_of(current_principal().subject, uow)})


@bp.post("/accounts/me/addresses")
@operation("Save a shipping address, validated and normalised for its country", request=schemas.AddressRequestSchema, response=schemas.AddressSchema, status=201, errors=(404, 409), auth="bearer",
           rules=(addresses.RULE,))
@require_user
def save_address():
    cmd = load(schemas.AddressRequestSchema())
    with unit_of_work() as uow:
        address = handlers.save_address(current_principal().subject, cmd, uow, root().settings.max_addresses_per_account)
        uow.commit()
    return schemas.AddressSchema().dump(address), 201


@bp.get("/accounts/me/addresses/<address_id>")
@operation("One of the signed-in buyer's addresses", response=schemas.AddressSchema, errors=(404,), auth="bearer")
@require_user
def get_address(address_id: str):
    with unit_of_work() as uow:
        return schemas.AddressSchema().dump(handlers.find_address(current_principal().subject, address_id, uow))


@bp.delete("/accounts/me/addresses/<address_id>")
@operation("Delete one of the signed-in buyer's addresses", status=204, errors=(404,), auth="bearer")
@require_user
def delete_address(address_id: str):
    with unit_of_work() as uow:
        handlers.delete_address(current_principal().subject, address_id, uow)
        uow.commit()
    return "", 204


@bp.get("/internal/addresses/<address_id>")
@operation("Any buyer's saved address, for Floodgate services and support tools", response=schemas.ServiceAddressSchema, errors=(404,), auth="service")
@require_service
def address_for_service(address_id: str):
    with unit_of_work() as uow:
        return schemas.ServiceAddressSchema().dump(handlers.find_address(None, address_id, uow))
