"""The stacks' ports: free, distinct, and never from the range outgoing connections take theirs."""
import random
import socket

import pytest

from devtools import ports


def test_ports_are_distinct_and_below_the_ephemeral_range():
    chosen = ports.free_ports(12)
    assert len(set(chosen)) == 12
    assert all(20000 <= port < ports.ephemeral_start() for port in chosen)


def test_a_port_a_server_listens_on_is_never_chosen():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        candidates = range(taken, taken + 1)
        with pytest.raises(OSError, match="found 0 free ports of the 1"):
            ports.free_ports(1, candidates=candidates)


def test_the_draw_is_random_so_two_stacks_rarely_share_a_port():
    first = ports.free_ports(8, rng=random.Random(1))
    second = ports.free_ports(8, rng=random.Random(2))
    assert first != second


def test_the_ephemeral_range_is_read_from_the_kernel_or_defaults(tmp_path):
    source = tmp_path / "ip_local_port_range"
    source.write_text("32768\t60999\n")
    assert ports.ephemeral_start(source) == 32768
    assert ports.ephemeral_start(tmp_path / "missing") == 49152
