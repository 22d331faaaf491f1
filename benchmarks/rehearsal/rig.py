"""The stack a rehearsal runs against: its own isolated one (the default) or a running one.

An isolated stack gets its own databases (`fgreh_<id>_<service>`), its own RabbitMQ vhost on the
local broker (made with rabbitmqctl) and free ports, like the integration tests' stack, so a
rehearsal never disturbs `make run` or a test session, and is removed afterwards.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from devtools import broker
from devtools.stack import DEFAULT_PORTS, SERVICES, Infra, Stack, ensure_local_servers, free_ports
from shared.db import drop_database

@dataclass
class Rig:
    stack: Stack
    owned: bool  # we started the processes (and may stop, kill and restart them)
    vhost: str | None = None  # our own vhost on the local broker, deleted afterwards
    scratch_databases: list[str] = field(default_factory=list)

    @property
    def amqp_url(self) -> str:
        return self.stack.infra.amqp_url

    @property
    def broker_is_local_and_ours(self) -> bool:
        return self.owned and self.vhost is not None and broker.available()

    def scratch_database(self, name: str) -> str:
        url = f"{self.stack.infra.postgres_url.rstrip('/')}/{self.stack.infra.database_prefix}_{name}"
        self.scratch_databases.append(url)
        return url

    def teardown(self, keep: bool = False) -> None:
        if self.owned:
            self.stack.stop_all()
        # PostgreSQL is shared (a test session may be restarting it): a database it refuses to
        # drop now is said, and the others are still dropped
        doomed = list(self.scratch_databases)
        if self.owned and not keep:
            doomed += [self.stack.infra.database_url(service) for service in SERVICES]
        for url in doomed:
            for attempt in range(10):
                try:
                    drop_database(url)
                    break
                except sa.exc.OperationalError as error:
                    if attempt == 9:
                        print(f"  could not drop {url.rsplit('/', 1)[-1]}: {error.orig or error}", flush=True)
                    time.sleep(1)
        if self.owned and not keep:
            if self.vhost:
                try:
                    broker.delete_vhost(self.vhost)
                except (subprocess.SubprocessError, OSError):
                    pass


# Every simulated buyer registers and joins the line from 127.0.0.1: the per-client limits that
# brake a bot at one address (registrations: 50 per 15 minutes; joins: 30 a minute per edge
# process) would turn the crowd away, so a stack of our own lifts them.
ONE_ADDRESS_CROWD = {"REGISTRATION_CLIENT_FREE_ATTEMPTS": str(10**9), "LINE_JOINS_PER_CLIENT_PER_MINUTE": str(10**9)}


def isolated(var_dir: Path, env: dict, combine_relays: bool = False) -> Rig:
    """Start a whole stack of our own: databases, vhost, ports; migrated and ready. Its
    processes get `env` over `ONE_ADDRESS_CROWD`.

    `combine_relays` relays every outbox from one process, as `make run` does."""
    run_id = uuid.uuid4().hex[:8]
    postgres_url = os.environ.get("POSTGRES_URL", Infra.postgres_url)
    vhost = None
    if "AMQP_URL" in os.environ:
        amqp_url = os.environ["AMQP_URL"]
    else:
        ensure_local_servers()
        if not broker.available():
            raise SystemExit("an isolated rehearsal needs rabbitmqctl (to create its vhost) or AMQP_URL")
        vhost, amqp_url = broker.private_vhost("floodgate-rehearsal")
    stack = Stack(
        infra=Infra(postgres_url=postgres_url, amqp_url=amqp_url, database_prefix=f"fgreh_{run_id}"),
        var_dir=var_dir,
        ports=free_ports(),
        extra_env={**ONE_ADDRESS_CROWD, **env},
        combine_relays=combine_relays,
    )
    rig = Rig(stack=stack, owned=True, vhost=vhost)
    try:
        stack.migrate()
        stack.start_all()
        stack.wait_until_ready(timeout=120)
    except BaseException:
        rig.teardown()
        raise
    return rig


def running(var_dir: Path) -> Rig:
    """The stack `make run` started (default ports, or POSTGRES_URL / AMQP_URL)."""
    stack = Stack(
        infra=Infra(
            postgres_url=os.environ.get("POSTGRES_URL", Infra.postgres_url),
            amqp_url=os.environ.get("AMQP_URL", Infra.amqp_url),
        ),
        var_dir=var_dir,
        ports=dict(DEFAULT_PORTS),
    )
    stack.wait_until_ready(timeout=10)
    return Rig(stack=stack, owned=False)
