"""PgBouncer in front of every service's database, sized from the pod counts (deploy/pooling.py):
at the drop's ceilings its server connections fit PostgreSQL's max_connections, and every
process but the migrations goes through it without preparing statements."""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys

import pytest

from deploy import policy, pooling, render, validate

SERVICES = policy.FLOODGATE_SERVICES


@pytest.mark.parametrize("target", validate.TARGETS)
def test_every_rendering_pools_within_max_connections(targets, target):
    objects = targets[target].objects
    assert pooling.check(objects) == []
    assert pooling.check_processes_use_the_pooler(objects) == []
    assert set(pooling.pooler_settings(objects)) == set(SERVICES)


def test_the_drop_at_its_ceilings_fits_the_database(drop, drop_config):
    ceilings = {a.name: a.max for a in drop_config.autoscalers}
    assert {hpa["metadata"]["name"]: hpa["spec"]["maxReplicas"]
            for hpa in policy.of_kind(drop, "HorizontalPodAutoscaler")} == ceilings
    clients = pooling.client_connections(drop)
    # issue 14: 80 checkout pods x 4 workers x 8 threads, before consumers and relays
    assert clients["checkout"] >= ceilings["checkout-api"] * 4 * 8 >= 2560
    poolers = pooling.pooler_settings(drop)
    for service, (_, ini) in poolers.items():
        assert int(ini["max_client_conn"]) >= clients[service], service
    servers = sum(pooling.replicas(d) * int(ini["max_db_connections"]) for d, ini in poolers.values())
    assert servers < clients["checkout"] / 10  # what the pooler is for
    assert pooling.server_connections(drop) <= pooling.max_connections(drop) == pooling.ASSUMED_MAX_CONNECTIONS


def test_the_pool_sizes_are_those_derived_from_the_drops_ceilings(drop):
    """pgbouncer.ini carries what `python -m deploy.pooling` computes: change drop.yaml's ceilings
    or the PgBouncer replicas, and this names the numbers to write."""
    planned = pooling.rendered_plan(drop)
    for service, (_, ini) in pooling.pooler_settings(drop).items():
        written = {key: int(ini[key]) for key in planned[service].ini()}
        assert written == planned[service].ini(), service


def test_the_line_status_edge_at_its_ceiling_is_counted_against_checkouts_pgbouncer(drop):
    """Its pods read checkout's database through checkout's PgBouncer: each may open its engine's
    ceiling (a pool of its kind's size, twice that at most), at its autoscaler's ceiling."""
    objects = copy.deepcopy(drop)
    line_status = _deployment(objects, "checkout-line-status")
    ceiling = policy.find(objects, "HorizontalPodAutoscaler", "checkout-line-status")["spec"]["maxReplicas"]
    per_pod = 2 * pooling.process_pool_size("checkout", "line-status", {})
    without = [o for o in objects if o is not line_status]
    assert pooling.client_connections(objects)["checkout"] - pooling.client_connections(without)["checkout"] \
        == ceiling * per_pod


def test_the_drops_pooler_sizes_hold_the_consumers_keda_may_add(targets, drop):
    """prod with the KEDA component shares prod's pgbouncer.ini: the drop's plan counts
    notifications' consumer at KEDA's ceiling, each consumer at its engine's ceiling (a pool of
    a connection per handler, the returned lane, the housekeeper and the heartbeat; twice that)."""
    with_keda = targets["prod+keda"].objects
    scaled = policy.find(with_keda, "ScaledObject", "notifications-consumer")["spec"]["maxReplicaCount"]
    consumer = _deployment(drop, "notifications-consumer")
    assert pooling.ceiling(drop, consumer) == scaled > pooling.replicas(consumer)
    assert pooling.client_connections(drop)["notifications"] == pooling.client_connections(with_keda)["notifications"]
    per_pod = 2 * pooling.process_pool_size("notifications", "consumer", {"CONSUMER_THREADS": "4"})
    assert per_pod == 2 * (4 + 3)
    written = dict(pooling.pooler_settings(with_keda))["notifications"][1]
    assert int(written["max_client_conn"]) >= pooling.client_connections(with_keda)["notifications"] >= scaled * per_pod


def test_a_keda_ceiling_past_what_notifications_pgbouncer_holds_is_refused_without_the_component_too(tmp_path, prod):
    """prod's rendering has no ScaledObject, but its pgbouncer.ini is the one prod+keda runs with:
    the component's ceiling, in the tree being checked (`--k8s-dir`), counts there too."""
    copy = tmp_path / "k8s"
    shutil.copytree(render.K8S_DIR, copy)
    scaled = copy / "components" / "keda" / "scaledobject.yaml"
    scaled.write_text(scaled.read_text().replace("maxReplicaCount: 3", "maxReplicaCount: 40"))
    assert pooling.check(prod) == []
    assert any(p.startswith("Deployment/notifications-pgbouncer (pgbouncer.ini): max_client_conn 100 <")
               for p in pooling.check(prod, copy))


@pytest.mark.parametrize("target", ["prod", "prod+keda", "dev+keda"])
def test_each_notifications_pgbouncer_pod_gives_every_email_in_flight_at_the_keda_ceiling_a_server_connection(
        tmp_path, targets, target):
    """A consumer's handlers and its lane keep their transactions open while SMTP takes a message:
    at KEDA's ceiling, with a consumer more being replaced, one PgBouncer pod (the other being
    replaced) gives them all one each, and its other processes some. It once gave 6 a pod to ten
    consumers' fifty: past about two consumers the rest waited at PgBouncer, and paused as for a
    database outage past its query_wait_timeout."""
    objects = targets[target].objects
    ceiling = pooling.ceiling(objects, _deployment(objects, "notifications-consumer"))
    in_flight = (ceiling + 1) * (4 + 1)
    ini = dict(pooling.pooler_settings(objects))["notifications"][1]
    assert pooling.held_across_a_send(objects)["notifications"] == in_flight
    assert int(ini["max_db_connections"]) == int(ini["default_pool_size"]) >= in_flight + pooling.MIN_SERVER_CONNECTIONS

    # one consumer more: in the rendering's ScaledObject, and in the component prod's ini is for
    objects = copy.deepcopy(objects)
    for scaled in policy.of_kind(objects, "ScaledObject"):
        scaled["spec"]["maxReplicaCount"] += 1
    tree = tmp_path / "k8s"
    shutil.copytree(render.K8S_DIR, tree)
    component = tree / "components" / "keda" / "scaledobject.yaml"
    component.write_text(component.read_text().replace(f"maxReplicaCount: {ceiling}", f"maxReplicaCount: {ceiling + 1}"))
    problems = [p for p in pooling.check(objects, tree) if "keep open across a send" in p]
    assert problems == [f"Deployment/notifications-pgbouncer (pgbouncer.ini): a pool of {ini['max_db_connections']} "
                        f"server connections < the {in_flight + 5} transactions notifications's consumers at their "
                        f"ceiling keep open across a send (SMTP, a refund) + 5 for its other processes: the "
                        f"consumers past them would wait at PgBouncer, not send (python -m deploy.pooling)"]


def test_a_pool_smaller_than_its_max_db_connections_is_what_the_sends_get(prod):
    """PgBouncer gives one database and role `default_pool_size` server connections, however high
    `max_db_connections` is."""
    objects = copy.deepcopy(prod)
    config = next(c for c in policy.of_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("notifications-pgbouncer"))
    config["data"]["pgbouncer.ini"] = re.sub(r"default_pool_size = \d+", "default_pool_size = 6", config["data"]["pgbouncer.ini"])
    assert any("a pool of 6 server connections" in p for p in pooling.check(objects))
    assert not any("keep open across a send" in p for p in pooling.check(prod))


def test_a_pool_under_the_floor_of_a_service_that_holds_nothing_across_a_send_is_reported(dev):
    objects = copy.deepcopy(dev)
    config = next(c for c in policy.of_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("accounts-pgbouncer"))
    config["data"]["pgbouncer.ini"] = re.sub(r"default_pool_size = \d+", "default_pool_size = 4", config["data"]["pgbouncer.ini"])
    assert any(p.startswith("Deployment/accounts-pgbouncer") and "a pool of 4 server connections < the 0 transactions" in p
               for p in pooling.check(objects))


def test_a_consumer_at_a_higher_ceiling_is_counted_with_its_rollouts_surge(targets):
    """maxSurge 25% of 8 consumers starts 2 more beside them during a rollout."""
    objects = copy.deepcopy(targets["prod+keda"].objects)
    policy.find(objects, "ScaledObject", "notifications-consumer")["spec"]["maxReplicaCount"] = 8
    assert pooling.held_across_a_send(objects)["notifications"] == (8 + 2) * (4 + 1)


def test_checkouts_refunds_are_counted_as_held_across_a_send(drop):
    """Its consumer locks the order while the payment provider takes a refund."""
    consumer = _deployment(drop, "checkout-consumer")
    assert pooling.held_across_a_send(drop)["checkout"] == (pooling.ceiling(drop, consumer) + 1) * (1 + 1)


def test_the_plan_gives_a_pgbouncer_pod_the_transactions_held_across_a_send_first():
    clients = {"checkout": 2000, "notifications": 100}
    without = pooling.plan(clients, 200, {"checkout": 2, "notifications": 2}, migrations=2)
    held = pooling.plan(clients, 200, {"checkout": 2, "notifications": 2}, migrations=2, held={"notifications": 30})
    assert without["notifications"].max_db_connections < 30 + 5 <= held["notifications"].max_db_connections
    assert held["checkout"].max_db_connections < without["checkout"].max_db_connections
    for sizes in (without, held):  # with the pod being replaced, within the budget
        assert sum(3 * size.max_db_connections for size in sizes.values()) <= 200 - 10 - 2


def test_dev_postgresql_is_given_room_for_the_poolers(dev):
    assert pooling.max_connections(dev) == 200
    assert pooling.server_connections(dev) <= 200


def _deployment(objects, name):
    return policy.find(objects, "Deployment", name)


def test_a_ceiling_raised_past_the_pooler_is_refused(drop):
    objects = copy.deepcopy(drop)
    policy.find(objects, "HorizontalPodAutoscaler", "checkout-api")["spec"]["maxReplicas"] = 200
    assert any("max_client_conn" in p and "checkout" in p for p in pooling.check(objects))


def test_poolers_that_would_exhaust_max_connections_are_refused(drop):
    objects = copy.deepcopy(drop)
    _deployment(objects, "checkout-pgbouncer")["spec"]["replicas"] = 4
    assert any("max_connections 200 <" in p for p in pooling.check(objects))


def test_session_pooling_is_refused(dev):
    objects = copy.deepcopy(dev)
    config = next(c for c in policy.of_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("inventory-pgbouncer"))
    config["data"]["pgbouncer.ini"] = config["data"]["pgbouncer.ini"].replace("pool_mode = transaction",
                                                                              "pool_mode = session")
    assert any("pool_mode 'session'" in p for p in pooling.check(objects))


@pytest.mark.parametrize("service", SERVICES)
def test_each_pgbouncer_starts_with_its_open_file_limit_raised_to_the_hard_limit(dev, service):
    # what the container runs, with PgBouncer's binary and configuration (its args) swapped for a
    # program that prints the limit it was started with, under a soft limit of 1024
    container = policy.pod_spec(_deployment(dev, f"{service}-pgbouncer"))["containers"][0]
    assert container["args"] == ["/usr/bin/pgbouncer", "/etc/pgbouncer/pgbouncer.ini"]
    shown = "import resource; print(*resource.getrlimit(resource.RLIMIT_NOFILE))"
    ran = subprocess.run(["prlimit", "--nofile=1024:4096", "--", *container["command"], sys.executable, "-c", shown],
                         capture_output=True, text=True, timeout=10)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["4096", "4096"]


def test_a_pgbouncer_left_at_the_containers_open_file_limit_is_refused(dev):
    objects = copy.deepcopy(dev)
    container = policy.pod_spec(_deployment(objects, "checkout-pgbouncer"))["containers"][0]
    container["command"] = container.pop("args")
    assert any(p.startswith("Deployment/checkout-pgbouncer") and "open-file limit" in p
               for p in pooling.check(objects))
    assert not any("open-file limit" in p for p in pooling.check(dev))


def test_a_process_around_the_pooler_or_preparing_statements_is_refused(dev):
    objects = copy.deepcopy(dev)
    api = policy.pod_spec(_deployment(objects, "checkout-api"))["containers"][0]
    next(e for e in api["env"] if e["name"] == "DATABASE_URL")["valueFrom"]["secretKeyRef"]["key"] = "url"
    relay = policy.pod_spec(_deployment(objects, "inventory-relay"))["containers"][0]
    relay["env"].append({"name": "DATABASE_PREPARED_STATEMENTS", "value": "true"})
    problems = pooling.check_processes_use_the_pooler(objects)
    assert any(p.startswith("Deployment/checkout-api") and "pooler-url" in p for p in problems), problems
    assert any(p.startswith("Deployment/inventory-relay") and "prepares statements" in p for p in problems), problems


def test_migrations_go_straight_to_postgresql(dev):
    for job in policy.of_kind(dev, "Job"):
        container = policy.pod_spec(job)["containers"][0]
        source = next(e for e in container["env"] if e["name"] == "DATABASE_URL")["valueFrom"]["secretKeyRef"]
        assert source["key"] == "url", job["metadata"]["name"]


def test_more_orders_in_flight_than_the_pool_held_are_counted_against_checkouts_pgbouncer(dev):
    """An order holds its connection through its call to inventory, so checkout's API opens a
    pool whose ceiling covers MAX_ORDERS_IN_FLIGHT (shared/service.py's `pool_size`): raised past
    the pool's ceiling of 20, every pod may open that many more, and the pooler is sized for them."""
    objects = copy.deepcopy(dev)
    api = _deployment(objects, "checkout-api")
    env = pooling._environment(policy.pod_spec(api)["containers"][0], pooling._config_maps(objects))
    workers, threads = pooling.api_process_shape(env)
    assert threads >= 24 and int(env.get("MAX_ORDERS_IN_FLIGHT", 20)) <= 20  # the base shape: one worker of 24
    before = pooling.client_connections(objects)["checkout"]
    policy.pod_spec(api)["containers"][0].setdefault("env", []).append({"name": "MAX_ORDERS_IN_FLIGHT", "value": "24"})
    raised = pooling.process_pool_size("checkout", "api", {"MAX_ORDERS_IN_FLIGHT": "24"})
    assert raised == 12
    after = pooling.client_connections(objects)["checkout"]
    assert after - before == pooling.ceiling(objects, api) * workers * (min(threads, 2 * raised) - 20)
    assert pooling.process_pool_size("inventory", "api", {"MAX_ORDERS_IN_FLIGHT": "24"}) == \
        pooling.process_pool_size("inventory", "api", {})  # inventory holds no connection through a call


def test_replacing_any_pgbouncer_pod_still_fits_the_database(drop):
    """A rollout starts the new PgBouncer before the old one goes, and a pod on a lost node keeps
    its backends until PostgreSQL's keepalive gives up: one pod more of every service at once
    still fits max_connections. (Counting the replicas only, checkout's third pod at the drop's
    sizes asked for 250 connections of 200.)"""
    for service, (deployment, _) in pooling.pooler_settings(drop).items():
        # a terminating pod is not counted against maxSurge: a surge pod would make it two more
        assert pooling.surge(deployment) == 0, service
    objects = copy.deepcopy(drop)
    for service in SERVICES:
        _deployment(objects, f"{service}-pgbouncer")["spec"]["replicas"] += 1
    raw = pooling.RESERVED_CONNECTIONS + sum(pooling.replicas(d) * int(ini["max_db_connections"])
                         for d, ini in pooling.pooler_settings(objects).values())
    raw += len([j for j in policy.of_kind(objects, "Job") if pooling.component(j) == "migration"])
    assert raw <= pooling.max_connections(drop)


@pytest.mark.parametrize("surge", [1, "25%"])
def test_a_pgbouncer_rollout_that_surges_is_refused(drop, surge):
    objects = copy.deepcopy(drop)
    _deployment(objects, "inventory-pgbouncer")["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = surge
    assert any("inventory-pgbouncer" in p and "rollout" in p for p in pooling.check(objects))


@pytest.mark.parametrize("timeout", [None, "0", "7200"])
def test_a_pgbouncer_that_keeps_a_lost_clients_transaction_open_is_refused(drop, timeout):
    """A client gone mid-transaction (its node lost) would keep its row locks, a stock shard's
    say, about two hours without PgBouncer's idle_transaction_timeout."""
    objects = copy.deepcopy(drop)
    config = policy.find(objects, "ConfigMap", "checkout-pgbouncer")
    lines = [line for line in config["data"]["pgbouncer.ini"].splitlines()
             if not line.startswith("idle_transaction_timeout")]
    if timeout is not None:
        lines.insert(1, f"idle_transaction_timeout = {timeout}")
    config["data"]["pgbouncer.ini"] = "\n".join(lines)
    assert any("checkout-pgbouncer" in p and "idle_transaction_timeout" in p for p in pooling.check(objects))


def test_a_pgbouncer_whose_queue_nobody_could_read_is_refused(drop):
    """The runbook sends the operator to PgBouncer's waiting clients (SHOW POOLS): its console
    admits only the users stats_users names."""
    for service, (_, ini) in pooling.pooler_settings(drop).items():
        assert ini["stats_users"] == service
    objects = copy.deepcopy(drop)
    config = policy.find(objects, "ConfigMap", "inventory-pgbouncer")
    config["data"]["pgbouncer.ini"] = "\n".join(line for line in config["data"]["pgbouncer.ini"].splitlines()
                                                if not line.startswith("stats_users"))
    assert any("inventory-pgbouncer" in p and "stats_users" in p for p in pooling.check(objects))
