"""The local payment simulator's own inputs, through Flask's test client; no webhook is sent."""
from __future__ import annotations

import pytest

from devtools.payment_simulator import DEFAULT_CONTROL, create_app


@pytest.fixture
def simulator():
    return create_app("http://127.0.0.1:1/payments/webhook", "dev-secret", redeliver_for_seconds=0).test_client()


@pytest.mark.parametrize("body", [{"duplicates": "x"}, {"delay_seconds": "x"}, {"delay_seconds": -1},
                                  {"reorder": 1}, {"duplicates": 1.5}, {"outcome": 5}])
def test_a_control_of_the_wrong_kind_is_refused_and_the_settings_stay(simulator, body):
    answer = simulator.post("/control", json=body)

    assert answer.status_code == 422 and list(body)[0] in answer.get_json()["error"]
    assert simulator.get("/control").get_json() == DEFAULT_CONTROL


def test_a_control_of_the_right_kind_is_kept(simulator):
    answer = simulator.post("/control", json={"duplicates": 1, "delay_seconds": 2, "reorder": True})

    assert answer.status_code == 200
    assert answer.get_json() == dict(DEFAULT_CONTROL, duplicates=1, delay_seconds=2, reorder=True)


def test_a_link_whose_signature_is_not_ascii_is_refused_not_a_500(simulator):
    for answer in (simulator.get("/pay/order-1?amount=100&currency=CAD&sig=%C3%A9"),
                   simulator.post("/pay/order-1/approve?amount=100&currency=CAD&sig=%C3%A9")):
        assert (answer.status_code, answer.get_json()) == (400, {"error": "invalid payment link"})
