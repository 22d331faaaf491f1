"""A consumer of a tests' own service whose handler takes its process down at a poison message,
as a crash in native code or the kernel's OOM killer would: nothing settled, nothing cleaned up.

    python -m tests.integration.dying_consumer AMQP_URL SERVICE HANDLED_FILE

Each message it handles is first written to HANDLED_FILE (its id, one a line). The service's
event type is `<SERVICE>.happened`; a message whose data has `"poison": true` kills the process.
"""
from __future__ import annotations

import os
import sys

from shared.config import Settings
from shared.messaging import topology
from shared.messaging.consumer import ConsumerRunner
from tests.unit.shared.fake_broker import NoTransaction

EXIT_CODE = 70


def main(amqp_url: str, service: str, handled_file: str) -> None:
    event_type = f"{service}.happened"
    topology.SUBSCRIPTIONS = {service: (event_type,)}  # the topology this process declares: its service only
    settings = Settings(service_name=service, amqp_url=amqp_url, retry_delays_ms=(200,), max_attempts=3,
                        consumer_threads=1)

    def handle(envelope, uow) -> None:
        with open(handled_file, "a") as handled:
            handled.write(envelope.id + "\n")
        if envelope.data.get("poison"):
            os._exit(EXIT_CODE)

    runner = ConsumerRunner(settings, {event_type: handle}, NoTransaction, "tests-dying-consumer", inbox=False)
    runner.install_signal_handlers()
    runner.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
