"""Accounts' HTTP endpoints: thin views over the handlers."""
from flask import Blueprint, jsonify

from shared.auth import current_principal, require_user
from shared.openapi import operation
from shared.web import load
from services.accounts import handlers, schemas
from services.accounts.bootstrap import dependencies
from services.accounts.repository import unit_of_work

bp = Blueprint("accounts", __name__)

JWKS_MAX_AGE_SECONDS = 300


@bp.post("/accounts")
@operation("Register a buyer", request=schemas.RegistrationSchema, response=schemas.AccountSchema, status=201, errors=(400, 409))
def register():
    cmd = load(schemas.RegistrationSchema())
    with unit_of_work() as uow:
        account = handlers.register_account(cmd, uow, dependencies().passwords)
        uow.commit()
    return schemas.AccountSchema().dump(account), 201


@bp.post("/sessions")
@operation("Sign in: exchange email and password for an access token", request=schemas.SessionRequestSchema, response=schemas.AccessTokenSchema, status=201, errors=(400, 401, 503))
def sign_in():
    cmd = load(schemas.SessionRequestSchema())
    deps = dependencies()
    with unit_of_work() as uow:
        token = handlers.open_session(cmd, uow, deps.passwords, deps.issuer)
        uow.commit()
    response = jsonify(schemas.AccessTokenSchema().dump(token))
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/.well-known/jwks.json")
@operation("The public keys that verify access tokens", response=schemas.KeySetSchema)
def jwks():
    with unit_of_work() as uow:
        key_set = handlers.published_keys(uow)
        uow.commit()
    response = jsonify(schemas.KeySetSchema().dump(key_set))
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE_SECONDS}"
    return response


@bp.get("/accounts/me")
@operation("The signed-in account", response=schemas.AccountSchema, errors=(404,), auth="bearer")
@require_user
def me():
    with unit_of_work() as uow:
        account = handlers.find_account(current_principal().subject, uow)
        # dumped inside the block: leaving it rolls back, which expires what was loaded
        return schemas.AccountSchema().dump(account)
