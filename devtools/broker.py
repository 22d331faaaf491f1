"""The local RabbitMQ, driven through `rabbitmqctl`: private vhosts for isolated stacks (tests,
rehearsals) and the broker restart that failure tests and rehearsals inflict."""
from __future__ import annotations

import shutil
import subprocess
import uuid
from urllib.parse import quote


def available() -> bool:
    """True when this machine's broker can be driven with rabbitmqctl."""
    return shutil.which("rabbitmqctl") is not None


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def private_vhost(prefix: str) -> tuple[str, str]:
    """A new vhost on the local broker for the guest user: (its name, its AMQP URL)."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost, f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"


def delete_vhost(vhost: str) -> None:
    rabbitmqctl("delete_vhost", vhost)


def restart() -> None:
    """Stop and start the broker application (connections drop; quorum queues keep their messages)."""
    for command in ("stop_app", "start_app", "await_startup"):
        rabbitmqctl(command)
