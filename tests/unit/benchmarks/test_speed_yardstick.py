"""make bench's yardstick of the machine's speed: the SMTP server's CPU per message."""
from benchmarks.yardstick import speed_yardstick


def test_the_stacks_cpu_is_divided_by_the_smtp_servers_cpu_per_message():
    figures = {"cpu_ms_per_order": {"checkout-api": 3.6, "smtp": 1.25}, "stack_cpu_ms_per_order": 11.0}
    assert speed_yardstick(figures) == {"smtp_cpu_ms_per_message": 1.25, "stack_cpu_per_yardstick": 8.8}


def test_a_phase_without_the_smtp_servers_cpu_has_no_yardstick():
    figures = {"cpu_ms_per_order": {"checkout-api": 3.6}, "stack_cpu_ms_per_order": 11.0}
    assert speed_yardstick(figures) == {"smtp_cpu_ms_per_message": None, "stack_cpu_per_yardstick": None}
