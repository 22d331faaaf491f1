"""Every consuming service's dead letters, from the command line.

    python -m shared.messaging.dead_letters list [--service checkout]
    python -m shared.messaging.dead_letters replay --service checkout [--message-id ID]

The same operations as notifications' admin API (`GET /dead-letters`, `POST /dead-letters/replay`)
for an operator with a shell and `AMQP_URL`, but no admin token: a parked refund is money owed to
a buyer, and reaching it must not depend on one service's HTTP API being up.
"""
from __future__ import annotations

import argparse
import json
import sys

from shared.config import Settings
from shared.messaging import topology
from shared.messaging.consumer import peek_dead_letters, replay_dead_letters


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.messaging.dead_letters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="show parked events (one JSON document a line); nothing is removed")
    listing.add_argument("--service", choices=sorted(topology.SUBSCRIPTIONS), help="one service (default: all)")
    replay = commands.add_parser("replay", help="send parked events back to their work queue")
    replay.add_argument("--service", choices=sorted(topology.SUBSCRIPTIONS), required=True)
    replay.add_argument("--message-id", help="only this event (default: every parked event of the service)")
    args = parser.parse_args(argv)
    amqp_url = Settings.from_env().amqp_url
    if args.command == "list":
        for service in [args.service] if args.service else sorted(topology.SUBSCRIPTIONS):
            for letter in peek_dead_letters(amqp_url, service):
                print(json.dumps(dict(letter, service=service)))
    else:
        ids = None if args.message_id is None else {args.message_id}
        replayed = replay_dead_letters(amqp_url, args.service, ids)
        print(f"{replayed} event(s) of {args.service} sent back to {topology.work_queue(args.service)}", file=sys.stderr)


if __name__ == "__main__":
    main()
