"""The whole Floodgate stack as local processes: `make run` (python -m devtools.stack).

`Stack` is also what the integration tests start, with their own databases, vhost and ports, so
a test run never collides with a running `make run` stack.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import requests

from devtools import ports
from shared.config import DEV_SERVICE_KEY
from shared.db import create_database_if_missing
from shared.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("accounts", "inventory", "checkout", "notifications")
CONSUMERS = ("inventory", "checkout", "notifications")
RELAYS = ("accounts", "inventory", "checkout", "notifications")
DEFAULT_PORTS = {
    "accounts": 8001,
    "inventory": 8002,
    "checkout": 8003,
    "notifications": 8004,
    "line-status": 8005,  # checkout's public status edge for the waiting room
    "payments": 8010,
    "smtp": 1025,
    "smtp-control": 8025,
}


def free_ports() -> dict[str, int]:
    """A free local port for each of the stack's listeners, for a stack beside `make run`'s."""
    return dict(zip(DEFAULT_PORTS, ports.free_ports(len(DEFAULT_PORTS))))


@dataclass
class Infra:
    """Where PostgreSQL and RabbitMQ are, and the names this stack uses on them."""

    postgres_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    database_prefix: str = "floodgate"
    # a transaction pooler (PgBouncer) in front of the same server: the services' processes go
    # through it, migrations and tests' own queries straight to PostgreSQL, as in Kubernetes
    pooler_url: str = ""

    def database_url(self, service: str) -> str:
        """Straight to PostgreSQL: migrations, and whoever looks at the data."""
        return f"{self.postgres_url.rstrip('/')}/{self.database_prefix}_{service}"

    def service_database_url(self, service: str) -> str:
        """What the service's own processes are given: through the pooler, if there is one."""
        if not self.pooler_url:
            return self.database_url(service)
        return f"{self.pooler_url.rstrip('/')}/{self.database_prefix}_{service}"


@dataclass
class Stack:
    infra: Infra
    var_dir: Path
    ports: dict = field(default_factory=lambda: dict(DEFAULT_PORTS))
    extra_env: dict = field(default_factory=dict)
    # one process relays every outbox (saves ~180 MiB); tests keep one per service to kill one
    combine_relays: bool = False
    processes: dict = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def maildir(self) -> Path:
        return self.var_dir / "mail"

    def log_path(self, name: str) -> Path:
        """Where process `name` writes its output."""
        return self.var_dir / "logs" / f"{name}.log"

    def log_entries(self, name: str) -> list[dict]:
        """The JSON log lines process `name` has written (not the lines a process writes before
        its logging is configured, nor one it is still writing)."""
        entries = []
        for line in self.log_path(name).read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def service_headers(self) -> dict:
        """What another Floodgate service sends: the stack's service key. Public answers a drop
        page gets from a worker's copy (up to a second old) are read afresh with it."""
        return {"X-Service-Key": self.env().get("SERVICE_KEY", DEV_SERVICE_KEY)}

    def env(self, service: str | None = None) -> dict:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            AMQP_URL=self.infra.amqp_url,
            JWKS_URL=f"{self.url('accounts')}/.well-known/jwks.json",
            INVENTORY_URL=self.url("inventory"),
            PAYMENT_PROVIDER_URL=self.url("payments"),
            PUBLIC_URL=self.url("checkout"),
            # the drop page and the control room, served by checkout, call the others from the browser
            ACCOUNTS_PUBLIC_URL=self.url("accounts"),
            INVENTORY_PUBLIC_URL=self.url("inventory"),
            LINE_STATUS_PUBLIC_URL=self.url("line-status"),
            NOTIFICATIONS_PUBLIC_URL=self.url("notifications"),
            CORS_ALLOWED_ORIGINS=self.url("checkout"),
            CHECKOUT_WEBHOOK_URL=f"{self.url('checkout')}/payments/webhook",
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(self.ports["smtp"]),
            # everything on one machine: consumers, relays and the sweeper yield the CPU to the APIs
            BACKGROUND_NICENESS="10",
        )
        if self.infra.pooler_url:
            env["DATABASE_PREPARED_STATEMENTS"] = "false"
        if service:
            env["DATABASE_URL"] = self.infra.service_database_url(service)
            env["JWKS_CACHE_FILE"] = str(self.var_dir / f"jwks-{service}.json")
            metrics_dir = self.var_dir / "metrics" / service
            metrics_dir.mkdir(parents=True, exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        env.update(self.extra_env)
        return env

    def migrate(self) -> None:
        for service in SERVICES:
            url = self.infra.database_url(service)
            create_database_if_missing(url)
            upgrade(importlib.import_module(f"services.{service}.bootstrap").MIGRATIONS, url)

    def commands(self) -> dict[str, tuple[list[str], str | None]]:
        """Every process of the stack: name -> (argv, service whose database it uses)."""
        py = sys.executable
        gunicorn = str(Path(py).with_name("gunicorn"))
        specs: dict[str, tuple[list[str], str | None]] = {
            "smtp": (
                [py, "-m", "devtools.smtp_server", "--port", str(self.ports["smtp"]),
                 "--control-port", str(self.ports["smtp-control"]), "--maildir", str(self.maildir)],
                None,
            ),
            "payments": ([py, "-m", "devtools.payment_simulator", "--port", str(self.ports["payments"])], None),
        }
        for service in SERVICES:
            specs[f"{service}-api"] = (
                [gunicorn, "-c", "python:shared.gunicorn_defaults", "--bind", f"127.0.0.1:{self.ports[service]}",
                 f"services.{service}.app:create_app()"],
                service,
            )
        for service in CONSUMERS:
            specs[f"{service}-consumer"] = ([py, "-m", f"services.{service}", "consumer"], service)
        if self.combine_relays:
            relays = [f"{service}={self.infra.service_database_url(service)}" for service in RELAYS]
            specs["relays"] = ([py, "-m", "devtools.relays", *relays], None)
        else:
            for service in RELAYS:
                specs[f"{service}-relay"] = ([py, "-m", f"services.{service}", "relay"], service)
        specs["inventory-sweeper"] = ([py, "-m", "services.inventory", "sweeper"], "inventory")
        specs["checkout-admitter"] = ([py, "-m", "services.checkout", "admitter"], "checkout")
        specs["checkout-line-status"] = (
            [py, "-m", "services.checkout", "line-status", "--bind", f"127.0.0.1:{self.ports['line-status']}"], "checkout")
        return specs

    def start(self, name: str, env_overrides: dict | None = None, as_name: str | None = None) -> subprocess.Popen:
        """Start process `name`; `as_name` runs another instance of it beside the first."""
        argv, service = self.commands()[name]
        name = as_name or name
        env = self.env(service)
        env.update(env_overrides or {})
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path(name), "ab")
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
        self.processes[name] = process
        return process

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        os.killpg(process.pid, sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would."""
        self.stop(name, signal.SIGKILL)

    def ensure_running(self) -> list[str]:
        """Start every process of the stack that is not running (as configured); their names."""
        missing = [name for name in self.commands()
                   if name not in self.processes or self.processes[name].poll() is not None]
        for name in missing:
            self.start(name)
        if missing:
            self.wait_until_ready()
        return missing

    def start_all(self) -> None:
        for name in self.commands():
            self.start(name)

    def stop_all(self, timeout: float = 30) -> None:
        """SIGTERM every process at once, then wait for each (SIGKILL after `timeout`)."""
        running = {name: p for name, p in self.processes.items() if p.poll() is None}
        for process in running.values():
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, process in running.items():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def wait_until_ready(self, timeout: float = 60) -> None:
        """Wait for every API to answer /readyz and the simulators to listen; raise if one died."""
        deadline = time.monotonic() + timeout
        waiting = {f"{s}-api": f"{self.url(s)}/readyz" for s in SERVICES}
        waiting["checkout-line-status"] = f"{self.url('line-status')}/readyz"
        waiting["payments"] = f"{self.url('payments')}/healthz"
        waiting["smtp"] = f"http://127.0.0.1:{self.ports['smtp-control']}/messages"
        while waiting:
            for name, url in list(waiting.items()):
                process = self.processes.get(name)
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}; see {self.log_path(name)}")
                try:
                    if requests.get(url, timeout=1).status_code == 200:
                        waiting.pop(name)
                except requests.RequestException:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout}s: {', '.join(waiting)}")
            time.sleep(0.2)


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# Containers `make run` starts when neither the servers nor their binaries are on this machine.
DOCKER_SERVERS = {
    5432: ["--name", "floodgate-postgres", "-p", "127.0.0.1:5432:5432", "-e", "POSTGRES_HOST_AUTH_METHOD=trust",
           "postgres:15"],
    5672: ["--name", "floodgate-rabbitmq", "-p", "127.0.0.1:5672:5672", "rabbitmq:3.10"],
}


def _docker_engine() -> bool:
    return bool(shutil.which("docker")) and subprocess.run(
        ["docker", "info"], capture_output=True, check=False
    ).returncode == 0


def _start_server(port: int) -> None:
    if port == 5432 and shutil.which("pg_ctlcluster") and Path("/etc/postgresql").exists():
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False)
    elif port == 5672 and shutil.which("rabbitmq-server"):
        subprocess.run(["rabbitmq-server", "-detached"], check=False)
    elif _docker_engine():
        print(f"starting {DOCKER_SERVERS[port][1]} in Docker ...", flush=True)
        subprocess.run(["docker", "run", "-d", "--rm", *DOCKER_SERVERS[port]], check=False)
    else:
        what = ("PostgreSQL 15 (apt install postgresql)" if port == 5432
                else "RabbitMQ 3.10+ (apt install rabbitmq-server)")
        variable = "POSTGRES_URL" if port == 5432 else "AMQP_URL"
        sys.exit(f"Nothing answers on 127.0.0.1:{port} and there is no Docker engine. Install {what}, "
                 f"or set {variable} to a server you have.")


def ensure_local_servers() -> None:
    """Start PostgreSQL and RabbitMQ when they do not answer: the installed servers, else Docker
    containers, else say exactly what to install."""
    for port in (5432, 5672):
        if not answers("127.0.0.1", port):
            _start_server(port)
    deadline = time.monotonic() + 90
    while not (answers("127.0.0.1", 5432) and answers("127.0.0.1", 5672)):
        if time.monotonic() > deadline:
            sys.exit("PostgreSQL or RabbitMQ did not come up within 90 s.")
        time.sleep(0.5)


class StopSignals:
    """SIGTERM and SIGINT ask the supervisor to stop; the first one counts, the rest are noted.

    `make run` forwards the signal it gets and Ctrl-C reaches make and the supervisor alike, so
    the supervisor often gets two or three at once. A signal raises KeyboardInterrupt only while
    the supervisor waits (`interruptible()`), and only the first one: while it starts or stops
    children a signal is remembered, so none cuts `stop_all()` short or orphans a child mid-start.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._interruptible = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        self.received.append(signum)
        if self._interruptible and len(self.received) == 1:
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A stretch of waiting, which the first stop signal cuts short (also one already received)."""
        self._interruptible = True
        try:
            if self.received:
                raise KeyboardInterrupt
            yield
        finally:
            self._interruptible = False


def supervise(stack: Stack, announce: Callable[[Stack], None] = lambda stack: None) -> None:
    """Start every process of `stack`, restart one that exits, and on SIGTERM or SIGINT stop each
    of them exactly once, however many signals arrive."""
    stop = StopSignals()
    try:
        stack.start_all()
        with stop.interruptible():
            stack.wait_until_ready()
        announce(stack)
        while True:
            for name, process in list(stack.processes.items()):
                if process.poll() is not None:
                    print(f"{name} exited ({process.returncode}); restarting it", flush=True)
                    stack.start(name)
            with stop.interruptible():
                time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    finally:
        stack.stop_all()


def announce(stack: Stack) -> None:
    print("\nFloodgate is up (logs in %s):" % (stack.var_dir / "logs"))
    for name in ("accounts", "inventory", "checkout", "notifications"):
        print(f"  {name:<14} {stack.url(name)}   (OpenAPI: {stack.url(name)}/openapi.json)")
    print(f"  {'line-status':<14} {stack.url('line-status')}   (the waiting room's public edge: the crowd joins and polls here)")
    print(f"  {'payments':<14} {stack.url('payments')}   (payment provider simulator)")
    print(f"  {'smtp':<14} smtp://127.0.0.1:{stack.ports['smtp']}   (mail kept in {stack.maildir}; "
          f"list: http://127.0.0.1:{stack.ports['smtp-control']}/messages)")
    print("\nIn another terminal: `make demo` sells a small drop and shows the email. Ctrl-C stops everything.",
          flush=True)


def announce_with_a_demo_drop(stack: Stack) -> None:
    from devtools.demo import demo_drop  # the demo drives the stack through its client

    announce(stack)
    try:
        demo_drop(stack)
    except Exception as error:  # the stack is up all the same; say why there is no demo drop
        print(f"\n(no demo drop: {error!r})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--var-dir", default=str(ROOT / "var" / "stack"))
    args = parser.parse_args()
    infra = Infra(
        postgres_url=os.environ.get("POSTGRES_URL", Infra.postgres_url),
        amqp_url=os.environ.get("AMQP_URL", Infra.amqp_url),
    )
    if "POSTGRES_URL" not in os.environ or "AMQP_URL" not in os.environ:
        ensure_local_servers()
    stack = Stack(infra=infra, var_dir=Path(args.var_dir), combine_relays=True)
    print("migrating databases ...", flush=True)
    stack.migrate()
    supervise(stack, announce_with_a_demo_drop)


if __name__ == "__main__":
    main()
