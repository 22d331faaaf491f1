import json

import pika
import pytest

from shared.messaging.envelope import Envelope, MalformedEvent


def test_an_envelope_round_trips_and_its_message_id_is_its_id():
    envelope = Envelope(type="order.confirmed", data={"order_id": "o-1"}, source="checkout", correlation_id="req-1")
    assert Envelope.from_json(envelope.to_json()) == envelope
    properties = envelope.properties(request_id="req-1")
    assert properties.message_id == envelope.id
    assert properties.delivery_mode == pika.DeliveryMode.Persistent.value
    assert properties.headers["x-request-id"] == "req-1"


def _envelope(**changes) -> bytes:
    raw = {"id": "1", "type": "order.confirmed", "occurred_at": "x", "source": "s", "data": {}}
    return json.dumps({**raw, **changes}).encode()


@pytest.mark.parametrize("body", [b"", b"[]", b'{"id": 1}', _envelope(data=[]),
                                  # what the inbox's and the delivery log's columns refuse: parked at once,
                                  # not failed at the database for days
                                  _envelope(id="x" * 129), _envelope(id=""), _envelope(id="a\x00b"),
                                  _envelope(type="t" * 101)])
def test_anything_else_is_malformed(body):
    with pytest.raises(MalformedEvent):
        Envelope.from_json(body)


def test_an_envelope_is_published_stamped_with_when_its_event_occurred():
    envelope = Envelope(type="order.placed", data={}, source="checkout", occurred_at="2026-12-04T16:00:00.5+00:00")
    assert envelope.properties().timestamp == 1796400000
    naive = Envelope(type="order.placed", data={}, source="checkout", occurred_at="2026-12-04T16:00:00")
    assert naive.properties().timestamp == 1796400000  # no zone: UTC, as the outbox writes it
    assert Envelope(type="order.placed", data={}, source="checkout", occurred_at="not a time").properties().timestamp is None


def test_the_longest_id_and_type_the_columns_hold_are_events():
    envelope = Envelope.from_json(_envelope(id="x" * 128, type="t" * 100))
    assert (len(envelope.id), len(envelope.type)) == (128, 100)
