"""The envelope every domain event travels in."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import pika

ID_MAX_LENGTH = 128  # the inboxes' `message_id`, notifications' `event_id`
TYPE_MAX_LENGTH = 100  # the inboxes' and outboxes' `event_type`


class MalformedEvent(ValueError):
    """A message body that is not a valid envelope; retrying it cannot help."""


@dataclass(frozen=True)
class Envelope:
    """`id` is also the AMQP `message_id`, so consumers dedupe on it."""

    type: str
    data: dict[str, Any]
    source: str
    correlation_id: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_json(self) -> bytes:
        """The body published on the wire."""
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str).encode()

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a JSON-ready dict (what the outbox stores). Its `data` is the event's
        own dict, not a copy: `dataclasses.asdict` copied it deeply, a tenth of an order's
        placement in checkout, for a dict serialised at once."""
        return {"type": self.type, "data": self.data, "source": self.source, "correlation_id": self.correlation_id,
                "id": self.id, "occurred_at": self.occurred_at}

    @classmethod
    def from_json(cls, body: bytes) -> "Envelope":
        """Parse a body, or raise `MalformedEvent`."""
        try:
            raw = json.loads(body)
        except ValueError as error:
            raise MalformedEvent(f"not JSON: {error}") from error
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> "Envelope":
        """Build from a decoded body, or raise `MalformedEvent`."""
        try:
            envelope = cls(
                id=str(raw["id"]),
                type=str(raw["type"]),
                occurred_at=str(raw["occurred_at"]),
                source=str(raw["source"]),
                correlation_id=raw.get("correlation_id"),
                data=raw["data"],
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise MalformedEvent(f"not an event envelope: {error}") from error
        if not isinstance(envelope.data, dict):
            raise MalformedEvent("event data must be an object")
        # kept in the inboxes' and notifications' columns of 128 and 100: one the database refuses
        # failed every attempt alike, for days, instead of being parked at once
        for name, value, longest in (("id", envelope.id, ID_MAX_LENGTH), ("type", envelope.type, TYPE_MAX_LENGTH)):
            if not 0 < len(value) <= longest or "\x00" in value:
                raise MalformedEvent(f"the envelope's {name} must be 1 to {longest} characters, without NUL")
        return envelope

    def properties(self, request_id: str | None = None,
                   trace_context: Mapping[str, str] | None = None) -> pika.BasicProperties:
        """AMQP properties: persistent, `message_id` = envelope id, `timestamp` = when the event
        occurred, request id in the headers, and the W3C trace context (`traceparent`,
        `tracestate`) when there is one."""
        return pika.BasicProperties(
            message_id=self.id,
            type=self.type,
            app_id=self.source,
            correlation_id=self.correlation_id,
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            headers={"x-request-id": request_id or self.correlation_id or self.id, "x-attempt": 0,
                     **(trace_context or {})},
            timestamp=self.occurred_epoch(),
        )

    def occurred_epoch(self) -> int | None:
        """When the event occurred, in whole seconds since the epoch (AMQP's `timestamp`), or None."""
        try:
            moment = datetime.fromisoformat(self.occurred_at)
        except (TypeError, ValueError):
            return None
        return int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp())
