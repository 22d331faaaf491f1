"""Operator commands.

`flask --app services.accounts.app create-admin | rotate-keys | reencrypt-signing-keys` run in
the app (they need its key-encryption keys). `python -m services.accounts purge-refresh-tokens`,
the scheduled job, needs only the database: it loads no app, so the job is given neither the
KEKs nor the broker.
"""
import argparse
import logging
from datetime import timedelta

import click
from flask import Flask
from flask.cli import with_appcontext
from marshmallow import ValidationError

from shared.processes import Process
from shared.web import root, unit_of_work
from services.accounts import handlers, schemas
from services.accounts.key_encryption import SigningKeyUnreadable

log = logging.getLogger("floodgate.accounts")


@click.command("create-admin")
@click.option("--email", required=True)
@click.option("--password", required=True, help="At least 10 characters.")
@click.option("--name", default=None)
@with_appcontext
def create_admin(email: str, password: str, name: str | None) -> None:
    """Create an admin account, or promote an existing one (setting its password); print its id."""
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
    help="Also retire keys that stopped signing at least this many hours ago "
    "(keep it above the token lifetime, or their tokens stop verifying).",
)
@with_appcontext
def rotate_keys(retire_older_than_hours: float | None) -> None:
    """Sign new tokens with a new key; earlier keys stay published until retired."""
    retire_after = None if retire_older_than_hours is None else timedelta(hours=retire_older_than_hours)
    with unit_of_work() as uow:
        key, retired = handlers.rotate_keys(uow, root().key_encryption, retire_after)
        uow.commit()
    click.echo(f"signing with {key.kid}")
    for old in retired:
        click.echo(f"retired {old.kid}")


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


def purge_refresh_tokens(root, args) -> None:
    """Delete refresh tokens spent (used, expired, or of a revoked session) longer than
    SPENT_REFRESH_TOKEN_RETENTION_SECONDS ago, and the sessions left without tokens."""
    retention = timedelta(seconds=root.settings.spent_refresh_token_retention_seconds)
    with root.unit_of_work() as uow:
        deleted = handlers.purge_spent_refresh_tokens(uow, retention, args.batch_size)
    log.info("spent refresh tokens purged", extra={"retention_seconds": retention.total_seconds(), **deleted})
    print(
        f"deleted {deleted['used']} used, {deleted['expired']} expired and {deleted['revoked']} revoked "
        f"refresh token(s) and {deleted['sessions']} session(s) left without tokens"
    )


def _batch_size(parser) -> None:
    parser.add_argument("--batch-size", type=_positive, default=1000, help="rows deleted per transaction (1000)")


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


# the scheduled job: `python -m services.accounts purge-refresh-tokens [--batch-size N]`
PURGE_REFRESH_TOKENS = Process("purge spent refresh tokens (nightly)", purge_refresh_tokens, _batch_size)


def _messages(error: ValidationError) -> str:
    return "; ".join(f"{field}: {' '.join(map(str, problems))}" for field, problems in error.messages.items())


def init_app(app: Flask) -> None:
    app.cli.add_command(create_admin)
    app.cli.add_command(rotate_keys)
    app.cli.add_command(reencrypt_signing_keys)
