"""Notifications' typed errors; shared.errors renders them as problem+json."""
from shared.errors import ServiceUnavailable


class BrokerUnavailable(ServiceUnavailable):
    slug, title = "broker-unavailable", "The message broker is not answering"
