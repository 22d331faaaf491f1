"""PgBouncer sizing, from the pod counts: `python -m deploy.pooling` prints it for the drop.

Every service's processes reach its database through that service's PgBouncer (transaction
pooling; deploy/k8s/README.md, "PgBouncer"). Two numbers matter:

- client connections, on PgBouncer's side: what the service's pods may open at the most, with
  every autoscaler at its ceiling. An API pod opens up to WEB_CONCURRENCY x (its engine's pool
  ceiling, capped by GUNICORN_THREADS: a request thread holds one connection at a time); a
  consumer, relay, sweeper or job up to its engine's ceiling (pool_size + max_overflow).
  PgBouncer's `max_client_conn` must hold them all (times CLIENT_HEADROOM), on one pod: the
  Service balances connections, not load, so one PgBouncer pod may get most of them.
- server connections, on PostgreSQL's side: each PgBouncer pod opens at most
  `max_db_connections`. A transaction takes one for its length, which is a few milliseconds
  everywhere but in two consumers: notifications' keeps its transaction open while SMTP takes
  the message, checkout's while the payment provider takes a refund (`TRANSACTION_ACROSS_A_SEND`).
  Each PgBouncer pod of theirs gives every such thread of every consumer at the ceiling a server
  connection at once, and MIN_SERVER_CONNECTIONS more: one pod may hold them all, as for
  `max_client_conn` (a consumer keeps its connections, and those of a PgBouncer pod being
  replaced all open again on the other). Summed over every PgBouncer pod of every service, plus
  one per migration Job (they go straight to PostgreSQL) and RESERVED_CONNECTIONS, they must fit
  the server's `max_connections`. The four databases may share one server (dev's does), so the
  sum is over all four: it then fits four servers as well.

A PgBouncer pod being replaced still holds its server connections for a while: a rollout starts
the new pod first (maxSurge), a pod draining keeps its clients until they let go, and a pod on a
lost node keeps its backends at PostgreSQL until the server's TCP keepalive gives up. So every
service's PgBouncer is counted with SURGE_PODS more pods than its replicas, all four at once (a
node holding one pod of each drained).

`plan()` shares the server's connections out: per PgBouncer pod MIN_SERVER_CONNECTIONS, and
the transactions held across a send, first; the rest in proportion to each service's
client connections, i.e. to the pods it may run.
`check()` holds a rendering to it (make k8s-validate, tests/k8s/test_pooling.py).
"""
from __future__ import annotations

import configparser
import functools
import importlib
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from deploy import policy, render
from shared import service as service_root
from shared.config import api_process_shape

# A managed PostgreSQL's max_connections, where the rendering runs no PostgreSQL of its own
# (prod, the drop): a small instance's (2 vCPU / 8 GB gives 200 or more on the usual clouds).
# Set yours here; an overlay that runs PostgreSQL (dev) is held to its `-c max_connections=`.
ASSUMED_MAX_CONNECTIONS = 200
# superuser_reserved_connections (3), and operators, monitoring and backups (7)
RESERVED_CONNECTIONS = 10
# each migration Job opens one connection (shared/migrate.py: NullPool), straight to PostgreSQL
MIGRATION_CONNECTIONS = 1
MIN_SERVER_CONNECTIONS = 5
# the drop runbook's ceiling raised on the spot (80 -> 120 checkout pods) still gets connected
CLIENT_HEADROOM = 1.5
# a PgBouncer pod more than its Deployment's replicas, for a while (the one a rollout or a drain
# is replacing, still terminating; one on a lost node): their rollouts surge by none
SURGE_PODS = 1
# A client gone mid-transaction (its node lost, no FIN) keeps the transaction's row locks until
# PgBouncer's idle_transaction_timeout rolls it back; without one, until TCP keepalive gives up
# (about two hours). Every PgBouncer sets one, at most this (seconds).
MAX_IDLE_TRANSACTION_SECONDS = 300

POOLER = "pgbouncer"

# The processes (service, component) whose transactions stay open across a call that may take
# seconds. Notifications' consumer writes the delivery log, then hands the email to SMTP, then
# commits (services/notifications/handlers.py: `send_notification`), so that a mail once accepted
# is never lost to a failed commit; checkout's locks the order while the payment provider takes a
# refund (services/checkout/handlers.py: `on_refund_requested`). Each handler thread and the
# returned lane's thread of every such pod may hold one at once, and a pod being replaced finishes
# those in hand while its successor starts (SURGE_PODS more). Fewer server connections than that,
# and the consumers an autoscaler adds wait at PgBouncer instead of sending; one that waits past
# `query_wait_timeout` pauses as for a database outage. Other transactions last milliseconds (a
# relay's across its publish's confirms, an API's but for a rare retry's call to inventory with
# its key's claim held, a housekeeping batch): they share MIN_SERVER_CONNECTIONS more.
TRANSACTION_ACROSS_A_SEND = frozenset({("notifications", "consumer"), ("checkout", "consumer")})
LANE_THREADS = 1


def process_pool_size(service: str, kind: str, env: dict[str, str]) -> int:
    """The engine pool_size of one process of `service`'s `kind` (a pod's component) with the pod's
    environment `env`: what the process itself opens (shared/service.py's `pool_size`, its
    bootstrap's POOL_SIZES and its settings read from `env`); its ceiling is twice that."""
    bootstrap = importlib.import_module(f"services.{service}.bootstrap")
    return service_root.pool_size(kind if kind in service_root.KINDS else "job", _settings(service, env),
                                  bootstrap.POOL_SIZES)


def _settings(service: str, env: dict[str, str]):
    """`service`'s settings as a pod with the environment `env` reads them."""
    return importlib.import_module(f"services.{service}.config").Settings.from_env(env, service_name=service)


@dataclass(frozen=True)
class PoolerSize:
    service: str
    client_connections: int  # what the service's pods may open at their ceilings
    max_client_conn: int
    max_db_connections: int  # per PgBouncer pod; default_pool_size is the same

    def ini(self) -> dict[str, int]:
        return {"max_client_conn": self.max_client_conn, "default_pool_size": self.max_db_connections,
                "max_db_connections": self.max_db_connections}


def plan(client_connections: dict[str, int], max_connections: int, pooler_replicas: dict[str, int],
         migrations: int, held: dict[str, int] | None = None) -> dict[str, PoolerSize]:
    """Each service's PgBouncer sizes for `client_connections` (service -> connections its pods may
    open) on a server of `max_connections`, with `pooler_replicas` PgBouncer pods per service
    (and SURGE_PODS more of each while pods are replaced). `held`: service -> the transactions its
    processes may hold at once across a send (`held_across_a_send`), which each of its PgBouncer
    pods gives a server connection each."""
    pods = {service: count + SURGE_PODS for service, count in pooler_replicas.items()}
    floors = {service: MIN_SERVER_CONNECTIONS + (held or {}).get(service, 0) for service in client_connections}
    budget = max_connections - RESERVED_CONNECTIONS - migrations * MIGRATION_CONNECTIONS
    spare = budget - sum(floors[s] * pods[s] for s in client_connections)
    demand = sum(client_connections.values())
    if spare < 0:
        raise ValueError(f"{max_connections} connections cannot give every PgBouncer pod its floor {floors}")
    sizes = {}
    for service, clients in client_connections.items():
        share = floors[service] * pods[service] + spare * clients // demand
        sizes[service] = PoolerSize(service, clients, _round_up(clients * CLIENT_HEADROOM, 100),
                                    share // pods[service])
    return sizes


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


# --- reading a rendering ---------------------------------------------------------------------

def _config_maps(objects: list[dict]) -> dict[str, dict]:
    return {c["metadata"]["name"]: c.get("data", {}) for c in policy.of_kind(objects, "ConfigMap")}


def _environment(container: dict, config_maps: dict[str, dict]) -> dict[str, str]:
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps.get(source["configMapRef"]["name"], {}))
    env.update(policy.env_of(container))
    return env


def ceiling(objects: list[dict], workload: dict, k8s_dir: Path = render.K8S_DIR) -> int:
    """The most pods of `workload` there may be: its autoscaler's ceiling, else its replica count
    or an optional component's autoscaler's ceiling, the higher."""
    name = workload["metadata"]["name"]
    for hpa in policy.of_kind(objects, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            return hpa["spec"]["maxReplicas"]
    for scaled in policy.of_kind(objects, "ScaledObject"):
        if scaled["spec"]["scaleTargetRef"]["name"] == name:
            return scaled["spec"].get("maxReplicaCount", 100)
    if workload["kind"] in ("Job", "CronJob"):
        return 1
    optional = [s["spec"].get("maxReplicaCount", 100) for s in optional_autoscalers(k8s_dir)
                if s["spec"]["scaleTargetRef"]["name"] == name]
    return max([replicas(workload), *optional])


@functools.cache
def optional_autoscalers(k8s_dir: Path = render.K8S_DIR) -> tuple[dict, ...]:
    """The ScaledObjects an optional component (`k8s_dir`/components: KEDA) adds. A rendering
    without the component has the same pgbouncer.ini as one with it, so its workloads are counted
    at the component's ceiling too: prod's PgBouncer holds prod+keda's consumers."""
    found = []
    for path in sorted((k8s_dir / "components").glob("*/*.yaml")):
        found += [o for o in yaml.safe_load_all(path.read_text()) if o and o.get("kind") == "ScaledObject"]
    return tuple(found)


def replicas(deployment: dict) -> int:
    """Its replica count (a count of the wrong type is the schema check's to report: 1 here)."""
    count = deployment["spec"].get("replicas", 1)
    return count if isinstance(count, int) else 1


def surge(deployment: dict, pods: int | None = None) -> int:
    """How many pods more than its replicas (or `pods`, an autoscaler's count) a Deployment's
    rolling update may start (Kubernetes rounds a percentage up; its default is 25%)."""
    strategy = deployment["spec"].get("strategy", {})
    if strategy.get("type") == "Recreate":
        return 0
    value = strategy.get("rollingUpdate", {}).get("maxSurge", "25%")
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        return math.ceil((replicas(deployment) if pods is None else pods) * int(value[:-1]) / 100)
    return value if isinstance(value, int) else 1


def component(workload: dict) -> str:
    if workload["kind"] == "CronJob":
        return policy.pod_spec(workload)["containers"][0].get("command", [""])[-1]
    return policy.pod_labels(workload).get("app.kubernetes.io/component", "")


def client_connections(objects: list[dict], k8s_dir: Path = render.K8S_DIR) -> dict[str, int]:
    """service -> connections its processes (not its migrations) may open, at their ceilings."""
    config_maps = _config_maps(objects)
    totals: dict[str, int] = {}
    for workload in policy.of_kind(objects, *policy.WORKLOADS):
        service, kind = policy.pod_labels(workload).get("app.kubernetes.io/name"), component(workload)
        if service not in policy.FLOODGATE_SERVICES or kind in (POOLER, "migration"):
            continue
        env = _environment(policy.pod_spec(workload)["containers"][0], config_maps)
        ceiling_per_process = 2 * process_pool_size(service, kind, env)
        if kind == "api":
            workers, threads = api_process_shape(env)
            per_pod = workers * min(threads, ceiling_per_process)
        else:
            per_pod = ceiling_per_process
        totals[service] = totals.get(service, 0) + ceiling(objects, workload, k8s_dir) * per_pod
    return totals


def held_across_a_send(objects: list[dict], k8s_dir: Path = render.K8S_DIR) -> dict[str, int]:
    """service -> the transactions its processes may hold open across a send at once, at their
    ceilings and while a rollout starts pods beside them (its maxSurge at the ceiling, at least
    SURGE_PODS: a terminating pod finishing its sends is not counted against maxSurge): each
    `TRANSACTION_ACROSS_A_SEND` pod's handler threads (CONSUMER_THREADS) and its returned lane's."""
    config_maps = _config_maps(objects)
    totals: dict[str, int] = {}
    for workload in policy.of_kind(objects, *policy.WORKLOADS):
        service, kind = policy.pod_labels(workload).get("app.kubernetes.io/name"), component(workload)
        if (service, kind) not in TRANSACTION_ACROSS_A_SEND:
            continue
        env = _environment(policy.pod_spec(workload)["containers"][0], config_maps)
        threads = _settings(service, env).consumer_threads
        most = ceiling(objects, workload, k8s_dir)
        pods = most + max(SURGE_PODS, surge(workload, most))
        totals[service] = totals.get(service, 0) + pods * (threads + LANE_THREADS)
    return totals


def pooler_settings(objects: list[dict]) -> dict[str, tuple[dict, dict[str, str]]]:
    """service -> (its PgBouncer Deployment, the [pgbouncer] section of its pgbouncer.ini)."""
    config_maps = _config_maps(objects)
    found = {}
    for deployment in policy.of_kind(objects, "Deployment"):
        labels = policy.pod_labels(deployment)
        if labels.get("app.kubernetes.io/component") != POOLER:
            continue
        volumes = policy.pod_spec(deployment).get("volumes", [])
        names = [v["configMap"]["name"] for v in volumes if "configMap" in v]
        text = next((config_maps[n]["pgbouncer.ini"] for n in names if "pgbouncer.ini" in config_maps.get(n, {})), "")
        parser = configparser.ConfigParser(comment_prefixes=(";", "#", "%"), interpolation=None)
        parser.read_string(text)
        section = dict(parser["pgbouncer"]) if parser.has_section("pgbouncer") else {}
        found[labels["app.kubernetes.io/name"]] = (deployment, section)
    return found


def max_connections(objects: list[dict]) -> int:
    """The rendered PostgreSQL's `-c max_connections=N`, else ASSUMED_MAX_CONNECTIONS."""
    for server in policy.of_kind(objects, "StatefulSet"):
        for container in policy.pod_spec(server)["containers"]:
            if container.get("image", "").split("/")[-1].startswith("postgres"):
                arguments = " ".join(container.get("args", []))
                match = re.search(r"max_connections=(\d+)", arguments)
                return int(match.group(1)) if match else 100  # PostgreSQL's default
    return ASSUMED_MAX_CONNECTIONS


def rendered_plan(objects: list[dict]) -> dict[str, PoolerSize]:
    """plan() for a rendering: its ceilings, its PgBouncer replica counts, its server."""
    poolers = pooler_settings(objects)
    migrations = len([j for j in policy.of_kind(objects, "Job") if component(j) == "migration"])
    return plan(client_connections(objects), max_connections(objects),
                {s: replicas(d) for s, (d, _) in poolers.items()}, migrations, held_across_a_send(objects))


def server_connections(objects: list[dict]) -> int:
    """What PostgreSQL may see at the most: every PgBouncer pod's max_db_connections, with
    SURGE_PODS more pods of each being replaced, every migration Job's connection, and the
    reserved ones."""
    total = RESERVED_CONNECTIONS
    for deployment, section in pooler_settings(objects).values():
        total += (replicas(deployment) + SURGE_PODS) * int(section.get("max_db_connections", 10**6))
    total += MIGRATION_CONNECTIONS * len([j for j in policy.of_kind(objects, "Job") if component(j) == "migration"])
    return total


def check(objects: list[dict], k8s_dir: Path = render.K8S_DIR) -> list[str]:
    """A rendering's PgBouncers in transaction mode, holding every client its pods may open, and
    their server connections, with the migrations' and the reserved ones, within max_connections."""
    problems = []
    poolers = pooler_settings(objects)
    clients = client_connections(objects, k8s_dir)
    held = held_across_a_send(objects, k8s_dir)
    for service in sorted(set(clients) - set(poolers)):
        problems.append(f"{service}: no PgBouncer Deployment (component {POOLER}) in front of its database")
    for service, (deployment, section) in sorted(poolers.items()):
        where = f"{policy.name_of(deployment)} (pgbouncer.ini)"
        if section.get("pool_mode") != "transaction":
            problems.append(f"{where}: pool_mode {section.get('pool_mode')!r}, not transaction")
        if "max_db_connections" not in section:
            problems.append(f"{where}: no max_db_connections: the server connections are not bounded")
            continue
        if int(section.get("max_client_conn", 100)) < clients.get(service, 0):
            problems.append(f"{where}: max_client_conn {section.get('max_client_conn', 100)} < the "
                            f"{clients[service]} connections {service}'s pods may open at their ceilings")
        # one database and role: its pool is the smaller of the two
        servers = min(int(section.get("default_pool_size", 20)), int(section["max_db_connections"]))
        if servers < MIN_SERVER_CONNECTIONS + held.get(service, 0):
            problems.append(f"{where}: a pool of {servers} server connections < the {held.get(service, 0)} transactions "
                            f"{service}'s consumers at their ceiling keep open across a send (SMTP, a refund) + "
                            f"{MIN_SERVER_CONNECTIONS} for its other processes: the consumers past them would "
                            f"wait at PgBouncer, not send (python -m deploy.pooling)")
        if int(section.get("default_pool_size", 20)) > int(section["max_db_connections"]):
            problems.append(f"{where}: default_pool_size above max_db_connections")
        if service not in section.get("stats_users", "").replace(" ", "").split(","):
            problems.append(f"{where}: stats_users does not name {service}: nobody could read its SHOW POOLS "
                            f"(clients waiting for a server connection) during a drop")
        idle = section.get("idle_transaction_timeout", "0")
        if not idle.isdigit() or not 0 < int(idle) <= MAX_IDLE_TRANSACTION_SECONDS:
            problems.append(f"{where}: idle_transaction_timeout {idle!r}, not 1-{MAX_IDLE_TRANSACTION_SECONDS}: a "
                            f"transaction whose client is gone (its node lost) would keep its row locks "
                            f"until TCP keepalive gives up, about two hours")
        if surge(deployment) > 0:
            problems.append(f"{policy.name_of(deployment)}: its rollout may start {surge(deployment)} pod(s) more "
                            f"than its replicas while the old ones still terminate (a Deployment does not count "
                            f"those), more at PostgreSQL than the {SURGE_PODS} counted: maxSurge 0, maxUnavailable 1")
        if not _raises_file_limit(deployment):
            problems.append(f"{policy.name_of(deployment)}: PgBouncer is not started with its open-file limit "
                            f"raised ({RAISE_FILE_LIMIT!r}): a container's soft limit (often 1024) would "
                            f"refuse clients long before max_client_conn")
    used, limit = server_connections(objects), max_connections(objects)
    if used > limit:
        problems.append(f"PostgreSQL max_connections {limit} < {used}: every PgBouncer pod's max_db_connections, "
                        f"the migrations' and {RESERVED_CONNECTIONS} reserved (python -m deploy.pooling)")
    return problems


# What a PgBouncer container's command runs first: PgBouncer only logs its open-file limit, and
# each client connection takes a descriptor.
RAISE_FILE_LIMIT = 'ulimit -n "$(ulimit -H -n)"'


def _raises_file_limit(deployment: dict) -> bool:
    return all(any(RAISE_FILE_LIMIT in part for part in container.get("command", []))
               for _, container, _ in policy.containers(deployment))


def check_processes_use_the_pooler(objects: list[dict]) -> list[str]:
    """Every Floodgate process but the migrations takes DATABASE_URL from its Secret's `pooler-url`
    and prepares no statements (DATABASE_PREPARED_STATEMENTS=false); a migration takes `url`, the
    server's own address."""
    problems = []
    config_maps = _config_maps(objects)
    for workload in policy.of_kind(objects, *policy.WORKLOADS):
        if policy.pod_labels(workload).get("app.kubernetes.io/name") not in policy.FLOODGATE_SERVICES:
            continue
        for _, container, _ in policy.containers(workload):
            source = next((e.get("valueFrom", {}).get("secretKeyRef", {}) for e in container.get("env", [])
                           if e["name"] == "DATABASE_URL"), None)
            if source is None:
                continue
            where = f"{policy.name_of(workload)} container {container['name']}"
            if component(workload) == "migration":
                if source.get("key") != "url":
                    problems.append(f"{where}: a migration goes straight to PostgreSQL (key url), not {source.get('key')!r}")
                continue
            if source.get("key") != "pooler-url":
                problems.append(f"{where}: DATABASE_URL from key {source.get('key')!r}, not the pooler's (pooler-url)")
            if _environment(container, config_maps).get("DATABASE_PREPARED_STATEMENTS", "true").lower() != "false":
                problems.append(f"{where}: prepares statements through a transaction pooler "
                                f"(DATABASE_PREPARED_STATEMENTS is not false)")
    return problems


def main() -> None:
    """Print the PgBouncer sizes for the drop at its ceilings, as pgbouncer.ini wants them."""
    from deploy import render_drop

    _, objects = render_drop.render_drop(overlay=render_drop.OVERLAY, at=render_drop.now())
    sizes = rendered_plan(objects)
    print(f"PostgreSQL max_connections {max_connections(objects)}; reserved {RESERVED_CONNECTIONS}; "
          f"migrations {len([j for j in policy.of_kind(objects, 'Job') if component(j) == 'migration'])}")
    for service, size in sizes.items():
        settings = " ".join(f"{k} = {v};" for k, v in size.ini().items())
        print(f"{service:<14} clients at the ceilings {size.client_connections:>5}   {settings}")
    problems = check(objects)
    for problem in problems:
        print(f"  - {problem}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
