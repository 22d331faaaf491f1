"""Marshmallow fields the services' schemas share."""
from marshmallow import fields


class StrictBoolean(fields.Boolean):
    """true or false, not 1, 0 or "yes" (JSON Schema's boolean, which the API documents)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value
