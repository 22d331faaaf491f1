"""Each service against its own /openapi.json with Schemathesis: every check, positive and negative
data, bounded examples. No 5xx, and no answer the document does not state.

The run is `schemathesis.toml`'s, given a buyer's and an admin's token, the service key, the webhook
secret and ids that exist in this session's stack, so generated requests reach real products,
drops and orders instead of stopping at 401 and 404.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest

from devtools.client import home_of
from devtools.stack import ROOT, SERVICES
from shared.config import DEV_SERVICE_KEY, DEV_WEBHOOK_SECRET
from shared.openapi import RULES_PREAMBLE
from tests.integration.database import execute

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
RUN_TIMEOUT_SECONDS = 300


@pytest.fixture(scope="module")
def real_data(floodgate, stack):
    """The FLOODGATE_* variables `schemathesis.toml` reads. Its own fresh tokens, made for the
    module (the admin token the tests are given is made for each test)."""
    admin = floodgate.create_admin(f"contracts-{uuid.uuid4().hex[:6]}@floodgate.test", "admin password for tests")
    _, buyer = floodgate.register()
    drop = floodgate.create_drop(admin, quantity=1000, per_buyer_limit=10)
    # generated orders go to a drop without a line (contract_hooks.py): they reach the order path
    lineless = floodgate.create_drop(admin, quantity=1000, per_buyer_limit=10)
    order = floodgate.place_order(buyer, drop["id"])
    order.raise_for_status()
    # the drop gets a line (the waiting room) with the buyer in it, so its ticket operations reach
    # a real ticket; orders on it then need a pass, which `POST /orders`' 403 documents
    floodgate.put_line(admin, drop)
    floodgate.join_line(buyer, drop["id"]).raise_for_status()
    # Listed by GET /accounts/me/addresses, whence Schemathesis reuses its id
    floodgate.http.post(stack.url("accounts") + "/accounts/me/addresses", json=home_of(buyer),
                        headers={"Authorization": f"Bearer {buyer}"}).raise_for_status()
    env = stack.env()
    yield {
        "FLOODGATE_BUYER_TOKEN": buyer,
        "FLOODGATE_ADMIN_TOKEN": admin,
        "FLOODGATE_SERVICE_KEY": env.get("SERVICE_KEY", DEV_SERVICE_KEY),
        "FLOODGATE_WEBHOOK_SECRET": env.get("PAYMENT_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET),
        "FLOODGATE_PRODUCT_ID": drop["product"]["id"],
        "FLOODGATE_DROP_ID": drop["id"],
        "FLOODGATE_ORDER_DROP_ID": lineless["id"],
        "FLOODGATE_ORDER_ID": order.json()["id"],
    }
    # Schemathesis' wrong passwords count towards throttling sign-ins from 127.0.0.1, whence the
    # session's later tests sign in.
    execute(stack, "accounts", "DELETE FROM login_throttle")


# One seed by default, so a run is the same run every time (CI must not turn red on a case a
# different seed happened to draw); SCHEMATHESIS_SEED=random explores, any number replays.
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261202")


@pytest.mark.parametrize("service", SERVICES)
def test_the_service_answers_only_what_its_document_says(stack, real_data, service):
    seed = [] if SEED == "random" else ["--seed", SEED]
    run = subprocess.run(
        [str(SCHEMATHESIS), "--no-color", "--config-file", str(CONFIG), "run", *seed,
         f"{stack.url(service)}/openapi.json"],
        cwd=ROOT, env={**os.environ, **real_data, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS,
    )
    if run.returncode != 0:
        pytest.fail(report(run.stdout + run.stderr), pytrace=False)
    print(run.stdout[-600:])  # the summary, for `pytest -rP`


def test_only_operations_whose_documents_state_rules_may_refuse_valid_data(floodgate, stack):
    """`schemathesis.toml` lets an operation answer 422 to data its schema allows exactly when its
    document lists the rules the schema cannot state."""
    projects = {project["title"]: project for project in tomllib.loads(CONFIG.read_text()).get("project", [])}
    for service in SERVICES:
        document = floodgate.http.get(f"{stack.url(service)}/openapi.json").json()
        stating_rules = {
            f"{method.upper()} {path}"
            for path, operations in document["paths"].items()
            for method, operation in operations.items()
            if RULES_PREAMBLE in operation["responses"].get("422", {}).get("description", "")
        }
        allowed = set()
        for entry in projects.get(document["info"]["title"], {}).get("operations", []):
            if "422" in entry.get("checks", {}).get("positive_data_acceptance", {}).get("expected-statuses", []):
                names = entry["include-name"]
                allowed |= {names} if isinstance(names, str) else set(names)
        assert allowed == stating_rules, f"{service}: the 422s schemathesis.toml allows and the rules its document lists"


def report(output: str) -> str:
    """Schemathesis' findings and summary, without the progress above them."""
    found = re.search(r"^=+ (FAILURES|ERRORS|WARNINGS) =+$", output, re.MULTILINE)
    return output[found.start():] if found else output
