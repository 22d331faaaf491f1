"""Free local TCP ports, for servers started beside others on this machine (stacks, broker
nodes, PgBouncer, image smoke tests)."""
from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (each held open until all are known). Another
    process may still take one before its server binds it; the server then fails to start."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]
