"""Accounts' processes: `python -m services.accounts relay | migrate | purge-refresh-tokens`.

The operator commands (create-admin, rotate-keys, reencrypt-signing-keys) need the API's keys and
run in its app: `flask --app services.accounts.app <command>` (services/accounts/cli.py)."""
from services.accounts import jobs
from services.accounts.bootstrap import bootstrap
from shared import processes

processes.main(bootstrap, "accounts", extra={"purge-refresh-tokens": jobs.PURGE_REFRESH_TOKENS})
