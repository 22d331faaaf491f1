"""Notifications' typed errors; shared.errors renders them as problem+json."""
from shared.errors import ServiceUnavailable


class BrokerUnavailable(ServiceUnavailable):
    slug, title = "broker-unavailable", "The message broker is not answering"


class ReplayNotRecorded(ServiceUnavailable):
    """The dead letters went back to their queue, but the database was away as the replay was to
    be recorded (and the delivery log to show them `retrying`): answered so, with how many went
    back (`replayed`), since a bare `database-unavailable` says nothing was done, and the admin
    would replay again."""

    slug, title = "replay-not-recorded", "Replayed, but not recorded"

    def __init__(self, replayed: int):
        super().__init__(f"{replayed} event(s) went back to their queue; the database did not answer as the "
                         "replay was to be recorded, so it is not among the admin actions. Do not replay them "
                         "again: they are being handled.", replayed=replayed)
