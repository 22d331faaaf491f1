"""The rehearsal's "where the CPU went": each kind of request's CPU, read off the APIs' logs
for the drop's own seconds."""
import json
from datetime import datetime

from benchmarks.rehearsal.report import cpu_markdown, request_costs


def line(service: str, method: str, route: str, status: int, cpu_ms: float, at: str = "2026-12-04 02:00:01,250") -> str:
    return json.dumps({"time": at, "message": "request", "service": service, "method": method,
                       "path": route.replace("<order_id>", "o-1"), "route": route, "status": status,
                       "duration_ms": cpu_ms * 3, "cpu_ms": cpu_ms})


def moment(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_requests_are_summed_per_service_route_and_status_dearest_first(tmp_path):
    (tmp_path / "checkout-api.log").write_text("\n".join([
        line("checkout-api", "POST", "/orders", 201, 4.0),
        line("checkout-api", "POST", "/orders", 201, 2.0),
        line("checkout-api", "GET", "/orders/<order_id>", 200, 1.0),
        line("checkout-api", "GET", "/orders/<order_id>", 200, 7.0, at="2026-12-04 01:59:59,999"),  # before
        line("checkout-api", "GET", "/orders/<order_id>", 200, 7.0, at="2026-12-04 02:00:10,001"),  # after
        json.dumps({"message": "order placed", "service": "checkout-api"}),
        '{"message": "request", "service": "checkout-api", "meth',  # cut short by a killed worker
    ]))
    (tmp_path / "inventory-api.log").write_text(line("inventory-api", "POST", "/reservations", 201, 2.5) + "\n")
    (tmp_path / "inventory-consumer.log").write_text(line("inventory-consumer", "POST", "/nowhere", 200, 99.0) + "\n")

    costs = request_costs(tmp_path, since=moment("2026-12-04 02:00:00,000"), until=moment("2026-12-04 02:00:10,000"))

    assert [(row["service"], row["request"], row["status"], row["count"], row["cpu_seconds"], row["cpu_ms_mean"])
            for row in costs] == [
        ("checkout-api", "POST /orders", 201, 2, 0.01, 3.0),
        ("inventory-api", "POST /reservations", 201, 1, 0.0, 2.5),
        ("checkout-api", "GET /orders/<order_id>", 200, 1, 0.0, 1.0),
    ]


def test_the_machine_cpu_is_shown_per_order_placed():
    cpu = {"seconds": 10.0, "machine_seconds": 15.0, "groups": {"checkout-api": 6.0, "PostgreSQL": 2.0, "idle": 0.001}}
    text = "\n".join(cpu_markdown(cpu, None, orders=300))
    assert "15.0 CPU seconds (50.0 ms per order placed)" in text
    assert "| checkout-api | 6.00 | 20.0 |" in text
    assert "idle" not in text
