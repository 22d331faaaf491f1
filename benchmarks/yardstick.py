"""A yardstick of the machine's speed for `make bench` (benchmarks/cost.py), in a module of its own
so that the unit tests, which run without the benchmarks' requirements, can import it."""


def speed_yardstick(figures: dict) -> dict:
    """This machine's speed during a placement phase, to compare runs of a VM whose speed moves
    (by up to half, minute to minute, on the 2-core machines these figures come from): the local
    SMTP server's CPU per message. It runs the same code in every run (devtools/smtp_server.py)
    and receives one `order.placed` email per order placed, so its CPU per placed order is its
    CPU per message; and the stack's CPU per order divided by it, which stays put when only the
    machine's speed moves. A heuristic, not a calibration: it moves if that server's code does."""
    smtp = figures["cpu_ms_per_order"].get("smtp")
    if not smtp:
        return {"smtp_cpu_ms_per_message": None, "stack_cpu_per_yardstick": None}
    return {"smtp_cpu_ms_per_message": smtp,
            "stack_cpu_per_yardstick": round(figures["stack_cpu_ms_per_order"] / smtp, 2)}
