"""Operator commands.

`flask --app services.accounts.app create-admin | rotate-keys | reencrypt-signing-keys` run in
the app (they need its key-encryption keys). The scheduled job is in jobs.py.
"""
import logging
from datetime import timedelta

import click
from flask import Flask
from flask.cli import with_appcontext
from marshmallow import ValidationError

from shared.web import root, unit_of_work
from services.accounts import handlers, schemas
from services.accounts.key_encryption import SigningKeyUnreadable

log = logging.getLogger("floodgate.accounts")


@click.command("create-admin")
@click.option("--email", required=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, envvar="ADMIN_PASSWORD",
              help="At least 10 characters. Asked for when not given (or taken from ADMIN_PASSWORD), "
                   "so it stays out of shell history and the process list.")
@click.option("--name", default=None)
@with_appcontext
def create_admin(email: str, password: str, name: str | None) -> None:
    """Create an admin account, or promote an existing one (setting its password and ending
    its sessions); print its id."""
    try:
        cmd = schemas.RegistrationSchema().load({"email": email, "password": password, "name": name})
    except ValidationError as error:
        raise click.UsageError(_messages(error))
    with unit_of_work() as uow:
        account = handlers.create_admin(cmd, uow, root().passwords)
        uow.commit()
    click.echo(str(account.id))


@click.command("rotate-keys")
@click.option(
    "--retire-older-than-hours",
    type=click.FloatRange(min=0),
    default=None,
    help="Also retire keys that stopped signing at least this many hours ago: 0 (a compromised key: "
    "retire every earlier key now), or at least the access-token lifetime (ACCESS_TOKEN_TTL_SECONDS), "
    "so that no token still valid stops verifying.",
)
@with_appcontext
def rotate_keys(retire_older_than_hours: float | None) -> None:
    """Publish a new key that signs new tokens once verifiers can have fetched it (at once when
    every earlier key is retired); earlier keys stay published until retired."""
    retire_after = None if retire_older_than_hours is None else timedelta(hours=retire_older_than_hours)
    ttl_seconds = root().settings.access_token_ttl_seconds
    if retire_after is not None and timedelta(0) < retire_after < timedelta(seconds=ttl_seconds):
        # Signed-in buyers holding tokens the key signed would get 401 mid-drop.
        raise click.BadParameter(
            f"{retire_older_than_hours:g} hours would retire keys whose tokens are still valid (they live "
            f"ACCESS_TOKEN_TTL_SECONDS={ttl_seconds} s): use at least {ttl_seconds / 3600:g} hours, "
            f"or 0 to retire every earlier key now (a compromised key).",
            param_hint="'--retire-older-than-hours'")
    issuer = root().issuer
    with unit_of_work() as uow:
        key, retired = handlers.rotate_keys(uow, issuer.key_encryption, retire_after, issuer.new_key_published_for)
        signs_now = handlers.signing_key(uow, key.created_at, issuer.key_encryption, issuer.new_key_published_for) is key
        uow.commit()
    for old in retired:
        click.echo(f"retired {old.kid}")
    signs_from = "now" if signs_now else (key.created_at + issuer.new_key_published_for).isoformat(timespec="seconds")
    click.echo(f"published {key.kid}; it signs new tokens from {signs_from}")


@click.command("reencrypt-signing-keys")
@with_appcontext
def reencrypt_signing_keys() -> None:
    """Encrypt every stored signing key with the first SIGNING_KEY_ENCRYPTION_KEYS entry: keys
    stored in clear before encryption, and keys under older KEKs (which can then be removed)."""
    with unit_of_work() as uow:
        try:
            counts = handlers.reencrypt_signing_keys(uow, root().key_encryption)
        except SigningKeyUnreadable as error:
            raise click.ClickException(f"{error} Nothing was changed.")
        uow.commit()
    click.echo(
        f"encrypted {counts['encrypted']} key(s) stored in clear, re-encrypted {counts['reencrypted']} "
        f"under the newest KEK; {counts['current']} already were"
    )


def _messages(error: ValidationError) -> str:
    return "; ".join(f"{field}: {' '.join(map(str, problems))}" for field, problems in error.messages.items())


def init_app(app: Flask) -> None:
    app.cli.add_command(create_admin)
    app.cli.add_command(rotate_keys)
    app.cli.add_command(reencrypt_signing_keys)
