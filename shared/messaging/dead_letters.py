"""Every consuming service's dead letters, from the command line.

    python -m shared.messaging.dead_letters list [--service checkout]
    python -m shared.messaging.dead_letters replay --service checkout [--message-id ID]
    python -m shared.messaging.dead_letters discard --service checkout --message-id ID [--message-id ID ...]

`discard` removes parked events for good, once what they asked for was settled by hand (a
refund the provider refused and a person made, a shipped order's lost unit settled with the
buyer): replaying those would only park them again, and while any is parked the dead-letter
alert stays firing, so it cannot tell of the next one. Each one discarded is printed in full
(one JSON document a line, as `list` prints them) and logged; an id not parked fails the command.

The same operations as notifications' admin API (`GET /dead-letters`, `POST /dead-letters/replay`)
for an operator with a shell and `AMQP_URL`, but no admin token: a parked refund is money owed to
a buyer, and reaching it must not depend on one service's HTTP API being up.
"""
from __future__ import annotations

import argparse
import json
import sys

import pika

from shared.config import Settings
from shared.messaging import topology
from shared.messaging.consumer import discard_dead_letters, peek_dead_letters, replay_dead_letters

NOT_FOUND = 404


def parked(amqp_url: str, service: str | None = None) -> list[dict]:
    """The dead letters of `service`, or of every consuming service, left in place; each names
    its service. A dead-letter queue no consumer has declared yet holds nothing."""
    letters = []
    for name in [service] if service else sorted(topology.SUBSCRIPTIONS):
        try:
            letters += [dict(letter, service=name) for letter in peek_dead_letters(amqp_url, name)]
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != NOT_FOUND:
                raise
    return letters


def replay(amqp_url: str, service: str, message_id: str | None = None) -> list[str]:
    """Send `service`'s parked events (or the one with `message_id`) back to its work queue; the
    ids of those sent."""
    return _unless_undeclared(lambda: replay_dead_letters(amqp_url, service, None if message_id is None else {message_id}))


def discard(amqp_url: str, service: str, message_ids: set[str]) -> list[dict]:
    """Remove `service`'s parked events with `message_ids` for good; those removed, in full."""
    return _unless_undeclared(lambda: discard_dead_letters(amqp_url, service, message_ids))


def _unless_undeclared(operation) -> list:
    """What `operation()` returned; nothing when the dead-letter queue was never declared."""
    try:
        return operation()
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == NOT_FOUND:
            return []
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.messaging.dead_letters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="show parked events (one JSON document a line); nothing is removed")
    listing.add_argument("--service", choices=sorted(topology.SUBSCRIPTIONS), help="one service (default: all)")
    replaying = commands.add_parser("replay", help="send parked events back to their work queue")
    replaying.add_argument("--service", choices=sorted(topology.SUBSCRIPTIONS), required=True)
    replaying.add_argument("--message-id", help="only this event (default: every parked event of the service)")
    removing = commands.add_parser("discard", help="remove parked events for good, once settled by hand")
    removing.add_argument("--service", choices=sorted(topology.SUBSCRIPTIONS), required=True)
    removing.add_argument("--message-id", action="append", required=True, help="an event to remove (repeat for more)")
    args = parser.parse_args(argv)
    amqp_url = Settings.from_env().amqp_url
    if args.command == "list":
        for letter in parked(amqp_url, args.service):
            print(json.dumps(letter))
    elif args.command == "replay":
        replayed = len(replay(amqp_url, args.service, args.message_id))
        print(f"{replayed} event(s) of {args.service} sent back to {topology.work_queue(args.service)}", file=sys.stderr)
    else:
        removed = discard(amqp_url, args.service, set(args.message_id))
        for letter in removed:
            print(json.dumps(dict(letter, service=args.service)))
        print(f"{len(removed)} event(s) of {args.service} discarded", file=sys.stderr)
        missing = set(args.message_id) - {letter["message_id"] for letter in removed}
        if missing:  # mistyped, or replayed meanwhile
            sys.exit(f"not parked in {topology.dead_letter_queue(args.service)}: {' '.join(sorted(missing))}")


if __name__ == "__main__":
    main()
