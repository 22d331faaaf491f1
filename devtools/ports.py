"""Free local TCP ports, for servers started beside others on this machine (stacks, broker
nodes, PgBouncer, image smoke tests).

The ports come from below the kernel's ephemeral range. A port the kernel hands out for
`bind(0)` is one it also hands out as the local end of an outgoing connection, and a stack makes
hundreds of those (migrations, pools, the broker) between choosing its ports and binding them: a
rehearsal failed that way (`address already in use` on 46557, 2026-12-04). Below the range only
another server can take a port first.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_IANA_EPHEMERAL_START = 49152  # where the range starts elsewhere (macOS, the BSDs, Windows)
_LOWEST = 20000  # above the well-known and registered ports local servers usually take


def ephemeral_start(source: Path = _EPHEMERAL_RANGE) -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        return int(source.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _IANA_EPHEMERAL_START


def free_ports(count: int, candidates: range | None = None, rng: random.Random | None = None) -> list[int]:
    """`count` distinct ports on 127.0.0.1 that no server listens on, drawn at random from
    `candidates` (default: 20000 up to the ephemeral range), so two stacks started at once rarely
    draw the same one. Each is held open until all are known; a server started a moment later
    can still lose one to another server, and then fails to start."""
    candidates = candidates or range(_LOWEST, max(_LOWEST + 1000, ephemeral_start()))
    rng = rng or random.SystemRandom()
    held: list[socket.socket] = []
    try:
        for port in rng.sample(candidates, min(len(candidates), max(64, 8 * count))):
            if len(held) == count:
                break
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        if len(held) < count:
            raise OSError(f"found {len(held)} free ports of the {count} asked for in {candidates}")
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]
