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


@pytest.mark.parametrize("body", [b"", b"[]", b'{"id": 1}', b'{"id":"1","type":"t","occurred_at":"x","source":"s","data":[]}'])
def test_anything_else_is_malformed(body):
    with pytest.raises(MalformedEvent):
        Envelope.from_json(body)
