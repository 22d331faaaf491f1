"""The failover drill: a three-node RabbitMQ cluster loses the node every relay and consumer is
connected to in the middle of a drop, and the drop ends as if nothing happened.

The cluster is three private nodes on this machine (devtools.broker.LocalCluster), beside the
system broker; the stack gets every node's address in AMQP_URL. If the nodes cannot start, the
drill fails and says why: a drill that does not run proves nothing.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from devtools.broker import ClusterError, LocalCluster
from devtools.client import Floodgate, poll
from devtools.stack import SERVICES
from shared.messaging import topology
from tests.integration.database import scalar

UNITS, BUYERS = 30, 60
FIRST_WAVE = 20  # buyers who order before the node goes; the rest rush in while it goes
RELAYS = {f"{service}-relay" for service in SERVICES}
BACKGROUND = RELAYS | {f"{service}-consumer" for service in topology.SUBSCRIPTIONS}


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(size=3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster_stack(cluster, stack_on):
    with stack_on(cluster.amqp_url) as stack:
        yield stack


@pytest.fixture(scope="module")
def admin(cluster_stack) -> str:
    return Floodgate(cluster_stack).create_admin(f"admin-{uuid.uuid4().hex[:6]}@floodgate.test",
                                                 "admin password for tests")


def connections_of_background(cluster, asking=None, timeout: float = 120) -> dict[str, str]:
    """Relay or consumer name -> the node it is connected to, for those connected now."""
    return {c["name"]: c["node"] for c in cluster.connections(asking, timeout=timeout) if c["name"] in BACKGROUND}


def where_connected(cluster, asking=None) -> dict[str, str] | None:
    """Relay or consumer name -> the node it is connected to, once every one of them is connected."""
    connected = connections_of_background(cluster, asking)
    return connected if set(connected) == BACKGROUND else None


RECONNECT_SECONDS = 60  # after the node is gone; a graceful stop itself may take a while on a busy box


def log_tail(stack, process: str, lines: int = 15) -> str:
    path = stack.log_path(process)
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def moved_off(cluster, stack, doomed, gone: Future) -> float:
    """Seconds until every relay and consumer is connected to another node than `doomed`; fails
    if that has not happened RECONNECT_SECONDS after the node finished going."""
    started, witness = time.monotonic(), next(node for node in cluster.nodes if node is not doomed)
    gone_at: float | None = None
    last: dict[str, str] | str = "no answer yet"
    while True:
        try:
            # A short timeout: while the doomed node goes, the witness may hang asking it.
            last = connected = connections_of_background(cluster, witness, timeout=10)
        except ClusterError as error:  # the witness may be busy noticing the loss: ask again
            last, connected = str(error), {}
        if set(connected) == BACKGROUND and doomed.name not in connected.values():
            return time.monotonic() - started
        if gone_at is None and gone.done():
            gone_at = time.monotonic()
        if gone_at is not None and time.monotonic() - gone_at > RECONNECT_SECONDS:
            missing = sorted(BACKGROUND - set(last)) if isinstance(last, dict) else sorted(BACKGROUND)
            logs = "\n".join(f"--- {name} ---\n{log_tail(stack, name)}" for name in missing)
            raise AssertionError(
                f"{RECONNECT_SECONDS} s after {doomed.name} went ({gone_at - started:.1f} s to go), not every relay "
                f"and consumer is on another node; missing: {missing}; last view: {last}\n{logs}")
        time.sleep(0.2)


def settled(cluster, stack) -> bool:
    """Every committed event published, every work queue and returned lane empty, nothing parked."""
    pending = sum(scalar(stack, service, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
                  for service in SERVICES)
    queues = cluster.queues()
    waiting = sum(queues[queue]["messages"] if queue in queues else 0 for service in topology.SUBSCRIPTIONS
                  for queue in (*topology.waiting_queues(service), topology.dead_letter_queue(service)))
    return pending == 0 and waiting == 0


@pytest.mark.parametrize("fault", ["stop", "kill"])
def test_the_node_every_relay_and_consumer_uses_goes_mid_drop_and_nothing_is_lost_doubled_or_oversold(
    cluster, cluster_stack, admin, fault
):
    floodgate = Floodgate(cluster_stack)
    for node in cluster.nodes:  # the node an earlier drill took down comes back first
        if not node.running():
            cluster.start_node(node)

    # Every queue is a quorum queue with a replica on each node.
    nodes = sorted(node.name for node in cluster.nodes)
    queues = cluster.queues()
    assert topology.work_queue("notifications") in queues
    assert {name: (q["type"], sorted(q["members"])) for name, q in queues.items()} == {
        name: ("quorum", nodes) for name in queues
    }
    # Every relay and consumer on the same node (the first address each tries): that one goes.
    connected = poll(lambda: where_connected(cluster), what="every relay and consumer to connect")
    if len(set(connected.values())) > 1:
        # an earlier drill's reconnects spread them over the nodes: fresh processes start together
        for name in sorted(BACKGROUND):
            cluster_stack.stop(name)
            cluster_stack.start(name)
        connected = poll(lambda: (lambda c: c if c and len(set(c.values())) == 1 else None)(where_connected(cluster)),
                         what="every relay and consumer to connect to the first node")
    [doomed] = [node for node in cluster.nodes if node.name in set(connected.values())]

    drop = floodgate.create_drop(admin, quantity=UNITS)
    with ThreadPoolExecutor(8) as pool:
        buyers = list(pool.map(lambda _: floodgate.register(), range(BUYERS)))
    answers: list[int | None] = []  # every status of checkout and of the payment webhook, retries included

    def buy(token: str) -> tuple[str, dict] | None:
        """Order until a definitive answer, with one Idempotency-Key: (token, order), or None if sold out."""
        key, deadline = str(uuid.uuid4()), time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = floodgate.place_order(token, drop["id"], key=key)
            answers.append(answer.status_code)
            if answer.status_code == 201:
                return token, answer.json()
            if answer.status_code == 409:
                return None
            assert answer.status_code in (429, 503) and answer.headers.get("Retry-After"), answer.text
            time.sleep(min(1.0, float(answer.headers["Retry-After"])))  # as the answer asks
        raise AssertionError("no definitive answer within 60 s")

    def pay(order: dict) -> None:
        paid = floodgate.pay(order)
        answers.append(paid.json().get("webhook_status") if paid.status_code == 200 else paid.status_code)

    tokens = [token for _, token in buyers]
    take_down = cluster.stop_node if fault == "stop" else cluster.kill_node
    with ThreadPoolExecutor(BUYERS - FIRST_WAVE) as crowd, ThreadPoolExecutor(2) as operator:
        first = [bought for bought in crowd.map(buy, tokens[:FIRST_WAVE]) if bought]
        for paid, (_, order) in enumerate(first):
            if paid == len(first) // 2:
                # Half the first wave has paid and their events are on the way: the node goes,
                # and the second wave rushes in while it goes.
                gone = operator.submit(take_down, doomed)
                moved = operator.submit(moved_off, cluster, cluster_stack, doomed, gone)
                second_wave = [crowd.submit(buy, token) for token in tokens[FIRST_WAVE:]]
            pay(order)
        second = [bought for bought in (future.result() for future in second_wave) if bought]
        gone.result()
        assert not doomed.running()
        reconnected_in = moved.result()
        # These pay once the node is gone: their events can only go through the other two.
        for _, order in second:
            pay(order)
    orders = first + second

    assert [status for status in answers if status is None or status >= 500] == []
    assert len(orders) == UNITS and Counter(answers)[409] == BUYERS - UNITS

    def rows(service: str, where: str) -> int:
        return scalar(cluster_stack, service, f"SELECT count(*) FROM {where}", d=drop["id"])

    # Every paid order confirmed, each unit sold once and none twice.
    for token, order in orders:
        floodgate.wait_for_status(token, order["id"], "confirmed")
    sold = poll(lambda: (lambda n: n if n == UNITS else None)(
        rows("inventory", "reservations WHERE drop_id = :d AND status = 'sold'")),
        timeout=60, what="every confirmed order's unit to be sold")
    assert rows("inventory", "reservations WHERE drop_id = :d") == UNITS
    assert rows("checkout", "orders WHERE drop_id = :d") == UNITS
    assert floodgate.get_drop(drop["id"])["remaining"] == 0

    # Every email exactly once: each order's "confirmed", each buyer's welcome; the "pay for" at
    # most once (one handled after its order's confirmation is not sent: superseded).
    ids = [order["id"] for _, order in orders]
    poll(lambda: all(floodgate.confirmations_of(order_id) for order_id in ids), timeout=90,
         what="every confirmation email")
    poll(lambda: settled(cluster, cluster_stack), timeout=60, what="outboxes and queues to drain")
    mails = [dict(m, subject=m["subject"] or "") for m in floodgate.mails()]
    doubled = [mail for mail, count in Counter((tuple(m["to"]), m["subject"]) for m in mails).items() if count > 1]
    assert doubled == []
    confirmed = [sum(order_id in m["subject"] and "confirmed" in m["subject"] for m in mails) for order_id in ids]
    asked_to_pay = [sum(m["subject"].startswith(f"Pay for order {order_id}") for m in mails) for order_id in ids]
    welcomed = Counter(m["to"][0] for m in mails if m["subject"] == "Welcome to Floodgate")
    assert confirmed == [1] * UNITS and set(asked_to_pay) <= {0, 1}
    assert [welcomed[email] for email, _ in buyers] == [1] * BUYERS
    print(f"\nbroker node {'stopped' if fault == 'stop' else 'killed'} mid-drop ({doomed.name}, "
          f"{len(first) // 2} of {UNITS} orders paid): {len(orders)} orders, {sold} units sold of {UNITS}, "
          f"{sum(confirmed)} confirmation emails, {len(doubled)} doubled, none lost, no 5xx; "
          f"every relay and consumer on another node {reconnected_in:.1f} s after it began to go")
