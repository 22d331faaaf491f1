"""Accounts' scheduled job: `python -m services.accounts purge-refresh-tokens [--batch-size N]`.

It needs only the database: it loads no app, so the job is given neither the key-encryption keys
nor the broker (deploy/k8s/base/accounts/purge-cronjob.yaml).
"""
from __future__ import annotations

import argparse
import logging
from datetime import timedelta

from services.accounts import handlers
from shared.processes import Process

log = logging.getLogger("floodgate.accounts")


def purge_refresh_tokens(root, args) -> None:
    """Delete refresh tokens spent (expired, or of a revoked session) longer
    than SPENT_REFRESH_TOKEN_RETENTION_SECONDS ago, and the sessions left without tokens."""
    retention = timedelta(seconds=root.settings.spent_refresh_token_retention_seconds)
    with root.unit_of_work() as uow:
        deleted = handlers.purge_spent_refresh_tokens(uow, retention, args.batch_size)
    log.info("spent refresh tokens purged", extra={"retention_seconds": retention.total_seconds(), **deleted})
    print(
        f"deleted {deleted['expired']} expired and {deleted['revoked']} revoked "
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
