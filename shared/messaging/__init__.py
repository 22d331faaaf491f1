"""Events between services: envelopes, the topology, the outbox relay and the consumer runner."""
