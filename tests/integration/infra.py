"""Where the integration tests find PostgreSQL and RabbitMQ.

With a Docker engine, testcontainers starts private PostgreSQL and RabbitMQ containers. Without
one, the servers named by TEST_POSTGRES_URL and TEST_AMQP_URL are used (default: the local
ones), each test session in its own databases and its own RabbitMQ vhost, so runs never collide
with each other or with a `make run` stack. TEST_BROKER=private gives the session its own
broker node instead (devtools.broker.LocalCluster), so the test that restarts the broker
restarts nobody else's.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from urllib.parse import quote
from typing import Callable

from sqlalchemy.engine import make_url

from devtools import broker, database


@dataclass
class TestInfra:
    postgres_url: str
    amqp_url: str
    restart_broker: Callable[[], None]
    restart_database: Callable[[], None]
    cleanup: Callable[[], None]
    # A vhost of its own on the same broker, for a second stack whose consumers must not share
    # the session stack's queues: (its AMQP URL, what deletes it).
    new_vhost: Callable[[], tuple[str, Callable[[], None]]]


def _vhost_name() -> str:
    return f"floodgate-test-{uuid.uuid4().hex[:8]}"


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def from_containers() -> TestInfra:
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer

    postgres = PostgresContainer("postgres:15", driver="psycopg").start()
    rabbit = RabbitMqContainer("rabbitmq:3.10").start()
    url = make_url(postgres.get_connection_url()).set(database=None)
    params = rabbit.get_connection_params()

    def restart_broker() -> None:
        for command in ("stop_app", "start_app"):
            code, output = rabbit.exec(["rabbitmqctl", command])
            assert code == 0, output

    def restart_database() -> None:
        # The server is the container's first process, so it cannot restart in place; every
        # client connection is cut instead, which is what the services see of a restart.
        database.cut_client_connections(url.render_as_string(hide_password=False))

    def cleanup() -> None:
        rabbit.stop()
        postgres.stop()

    def new_vhost() -> tuple[str, Callable[[], None]]:
        vhost = _vhost_name()
        for command in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
            code, output = rabbit.exec(["rabbitmqctl", *command])
            assert code == 0, output
        url = f"amqp://guest:guest@{params.host}:{params.port}/{quote(vhost, safe='')}"
        return url, lambda: rabbit.exec(["rabbitmqctl", "delete_vhost", vhost])

    return TestInfra(
        postgres_url=url.render_as_string(hide_password=False),
        amqp_url=f"amqp://guest:guest@{params.host}:{params.port}/%2F",
        restart_broker=restart_broker,
        restart_database=restart_database,
        cleanup=cleanup,
        new_vhost=new_vhost,
    )


def from_environment() -> TestInfra:
    postgres_url = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
    if os.environ.get("TEST_BROKER") == "private":
        return with_private_broker(postgres_url)
    given_amqp = os.environ.get("TEST_AMQP_URL")
    if given_amqp:
        amqp_url, cleanup = given_amqp, (lambda: None)
    else:
        if not broker.available():
            raise RuntimeError("set TEST_AMQP_URL, or install rabbitmqctl so tests can create their vhost")
        vhost, amqp_url = broker.private_vhost("floodgate-test")

        def cleanup() -> None:
            broker.delete_vhost(vhost)

    def restart_broker() -> None:
        if not broker.available():
            raise RuntimeError("restarting the broker needs rabbitmqctl")
        broker.restart()

    def new_vhost() -> tuple[str, Callable[[], None]]:
        if not broker.available():
            raise RuntimeError("a second stack's vhost needs rabbitmqctl on this machine")
        vhost, url = broker.private_vhost("floodgate-test")
        return url, lambda: broker.delete_vhost(vhost)

    return TestInfra(postgres_url=postgres_url, amqp_url=amqp_url, restart_broker=restart_broker,
                     restart_database=database.restart, cleanup=cleanup, new_vhost=new_vhost)


def with_private_broker(postgres_url: str) -> TestInfra:
    """The session's own one-node broker beside the system's (TEST_BROKER=private): restarting it
    disturbs no one else on the machine."""
    node = broker.LocalCluster(size=1, prefix="floodgate-test").start()
    first = node.nodes[0]

    def new_vhost() -> tuple[str, Callable[[], None]]:
        vhost = _vhost_name()
        node.ctl(first, "add_vhost", vhost)
        node.ctl(first, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return first.url.rsplit("/", 1)[0] + "/" + quote(vhost, safe=""), lambda: node.ctl(first, "delete_vhost", vhost)

    return TestInfra(postgres_url=postgres_url, amqp_url=node.amqp_url, restart_broker=node.restart,
                     restart_database=database.restart, cleanup=node.stop, new_vhost=new_vhost)


def provision() -> TestInfra:
    return from_containers() if docker_available() else from_environment()
