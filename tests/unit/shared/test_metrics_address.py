"""METRICS_BIND, as the APIs' gunicorn and checkout's line-status edge both read it."""
import pytest

from shared.config import metrics_address


def test_the_metrics_address_is_host_and_port():
    assert metrics_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert metrics_address(":9100") == ("0.0.0.0", 9100)
    assert metrics_address("[::1]:9100") == ("::1", 9100)


@pytest.mark.parametrize("bind", ["9100", "127.0.0.1:", "127.0.0.1:metrics", "127.0.0.1:0", "127.0.0.1:70000"])
def test_anything_else_is_refused_with_what_was_given(bind):
    with pytest.raises(ValueError, match=f"METRICS_BIND must be HOST:PORT, not {bind!r}"):
        metrics_address(bind)
