"""Who may talk to whom, evaluated from the rendered NetworkPolicies (both ends' policies)."""
from __future__ import annotations

import pytest

from deploy import policy

SERVICES = policy.FLOODGATE_SERVICES
KUBE_DNS = {"k8s-app": "kube-dns"}
KUBE_SYSTEM = {"kubernetes.io/metadata.name": "kube-system"}
EDGE = {"kubernetes.io/metadata.name": "ingress", "floodgate.io/edge": "true"}
LINE_STATUS = "checkout/line-status"


def pod(objects: list[dict], kind: str, name: str) -> dict:
    """The pod labels of one workload."""
    workload = policy.find(objects, kind, name)
    assert workload is not None, f"{kind}/{name} is not rendered"
    return policy.pod_labels(workload)


def every_pod(objects):
    """Labels of every pod the overlay runs, Floodgate's and the infrastructure's."""
    return [policy.pod_labels(o) for o in policy.of_kind(objects, *policy.WORKLOADS)]


def describe(labels):
    return f"{labels.get('app.kubernetes.io/name')}/{labels.get('app.kubernetes.io/component', '-')}"


@pytest.mark.parametrize("overlay", ["dev", "prod", "drop"])
def test_inside_the_namespace_only_checkout_api_and_its_admitter_reach_inventory_api(targets, overlay):
    objects = targets[overlay].objects
    inventory_api = pod(objects, "Deployment", "inventory-api")
    allowed = {describe(p) for p in every_pod(objects) if policy.reachable(objects, p, inventory_api, 8000)}
    assert allowed == {"checkout/api", "checkout/admitter"}


# What buyers' and admins' browsers call, by checkout-config's setting: the drop page and the
# control room get these addresses (services/checkout/page.py).
PAGES_CALL = {"PUBLIC_URL": "checkout-api", "ACCOUNTS_PUBLIC_URL": "accounts-api",
              "INVENTORY_PUBLIC_URL": "inventory-api", "LINE_STATUS_PUBLIC_URL": "checkout-line-status",
              "NOTIFICATIONS_PUBLIC_URL": "notifications-api"}


@pytest.mark.parametrize("overlay", ["dev", "prod", "drop"])
def test_the_edge_reaches_every_service_the_pages_call(targets, overlay):
    """Inventory's API was closed to the edge while every drop page reads its drop there: in prod
    the page stayed at "Loading the drop..." and its order button never enabled."""
    objects = targets[overlay].objects
    from services.checkout.config import Settings

    called = {name.upper() for name in vars(Settings()) if name.endswith("public_url")}
    assert called == set(PAGES_CALL)  # a new address the pages call needs its row here
    for setting, deployment in PAGES_CALL.items():
        assert policy.ingress_allowed(objects, {}, pod(objects, "Deployment", deployment), 8000,
                                      source_namespace_labels=EDGE), setting


def test_each_service_reaches_only_its_own_database_in_prod(prod):
    """prod: each service's database has its own address; only that service's PgBouncer and its
    migration reach it, and every other process of the service reaches its own PgBouncer only."""
    address = {}
    for service in SERVICES:
        rule = policy.find(prod, "NetworkPolicy", f"{service}-to-database")["spec"]["egress"][0]
        address[service] = rule["to"][0]["ipBlock"]["cidr"].split("/")[0]
    assert len(set(address.values())) == len(SERVICES)
    poolers = {s: pod(prod, "Deployment", f"{s}-pgbouncer") for s in SERVICES}
    for source in policy.floodgate_pods(prod) + list(poolers.values()):
        own = source["app.kubernetes.io/name"]
        direct = source["app.kubernetes.io/component"] in ("pgbouncer", "migration")
        reached = {s for s in SERVICES if policy.egress_allowed(prod, source, 5432, to_ip=address[s])}
        assert reached == ({own} if direct else set()), describe(source)
        pooled = {s for s in SERVICES if policy.reachable(prod, source, poolers[s], 6432)}
        assert pooled == (set() if direct else {own}), describe(source)


def test_dev_database_server_is_reached_by_the_pgbouncers_and_migrations_only(dev):
    """dev: one PostgreSQL holds the four databases; per-service roles keep them apart, and the
    services' other processes go through their PgBouncer."""
    postgresql = pod(dev, "StatefulSet", "postgresql")
    for source in every_pod(dev):
        expected = (source.get("app.kubernetes.io/name") in SERVICES
                    and source.get("app.kubernetes.io/component") in ("pgbouncer", "migration"))
        assert policy.reachable(dev, source, postgresql, 5432) == expected, describe(source)


def test_dev_roles_connect_to_their_own_database_only():
    from deploy import render

    script = (render.K8S_DIR / "infra" / "init-databases.sh").read_text()
    assert "REVOKE ALL ON DATABASE" in script and 'OWNER :"role"' in script
    for service in SERVICES:
        assert service in script


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_floodgate_process_reaches_the_broker_and_dns(targets, overlay):
    """Every process but checkout's line-status edge, which reads checkout's database and nothing else."""
    objects = targets[overlay].objects
    for source in policy.floodgate_pods(objects):
        broker = describe(source) != LINE_STATUS
        if overlay == "dev":
            assert policy.reachable(objects, source, pod(objects, "StatefulSet", "rabbitmq"), 5672) == broker, \
                describe(source)
        else:
            assert policy.egress_allowed(objects, source, 5672, to_ip="192.0.2.10") == broker, describe(source)
        assert policy.egress_allowed(objects, source, 53, protocol="UDP", to_labels=KUBE_DNS,
                                     to_namespace_labels=KUBE_SYSTEM), describe(source)


@pytest.mark.parametrize("overlay", ["dev", "prod", "drop"])
@pytest.mark.parametrize("resolver", ["169.254.20.10", "169.254.169.253"])
def test_every_pod_reaches_a_link_local_resolver_on_the_dns_port_only(targets, overlay, resolver):
    """NodeLocal DNSCache answers on 169.254.20.10; some clusters give pods another link-local resolver."""
    objects = targets[overlay].objects
    for source in every_pod(objects):
        for protocol in ("UDP", "TCP"):
            assert policy.egress_allowed(objects, source, 53, protocol=protocol, to_ip=resolver), describe(source)
        assert not policy.egress_allowed(objects, source, 80, to_ip="169.254.169.254"), describe(source)  # metadata


def test_the_drop_scaler_reaches_the_api_server_and_nothing_else(drop):
    scaler = pod(drop, "CronJob", "drop-raise-floor")
    rule = policy.find(drop, "NetworkPolicy", "drop-scaler-to-api-server")["spec"]["egress"][0]
    api_server = [peer["ipBlock"]["cidr"].split("/")[0] for peer in rule["to"]]
    for address in api_server:
        for port in (443, 6443):
            assert policy.egress_allowed(drop, scaler, port, to_ip=address)
    for elsewhere in ("198.51.100.7", "10.0.0.99"):
        assert not policy.egress_allowed(drop, scaler, 443, to_ip=elsewhere)
    assert not policy.egress_allowed(drop, scaler, 5672, to_labels={"app.kubernetes.io/name": "rabbitmq"})


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_only_the_monitoring_namespace_reaches_the_metrics_port(targets, overlay):
    objects = targets[overlay].objects
    monitoring = {"kubernetes.io/metadata.name": "monitoring", "floodgate.io/monitoring": "true"}
    for name in ("accounts-api", "inventory-api", "checkout-api", "notifications-api"):
        api = pod(objects, "Deployment", name)
        assert policy.ingress_allowed(objects, {}, api, 9100, source_namespace_labels=monitoring), name
        assert not policy.ingress_allowed(objects, {}, api, 9100, source_namespace_labels=EDGE), name
        assert not any(policy.reachable(objects, p, api, 9100) for p in every_pod(objects)), name


def test_apis_that_verify_tokens_reach_accounts_jwks_and_nothing_else_does(dev):
    accounts_api = pod(dev, "Deployment", "accounts-api")
    allowed = {describe(p) for p in every_pod(dev) if policy.reachable(dev, p, accounts_api, 8000)}
    assert allowed == {"inventory/api", "checkout/api", "notifications/api", "checkout/line-status"}


def test_only_mail_and_refunds_leave_the_cluster(prod):
    """notifications' consumer sends mail; checkout's consumer asks the payment provider for refunds."""
    outside = "198.51.100.7"
    for source in policy.floodgate_pods(prod):
        refunds = describe(source) == "checkout/consumer"
        mail = describe(source) == "notifications/consumer"
        assert policy.egress_allowed(prod, source, 443, to_ip=outside) == refunds, describe(source)
        assert policy.egress_allowed(prod, source, 587, to_ip=outside) == mail, describe(source)
        assert not policy.egress_allowed(prod, source, 80, to_ip=outside), describe(source)


@pytest.mark.parametrize("overlay", ["dev", "prod", "drop"])
def test_buyers_reach_the_line_status_edge_through_the_edge_and_nothing_else_does(targets, overlay):
    """Public like checkout's API (port 8000 from the edge namespace); no pod inside calls it, the
    monitoring namespace scrapes its metrics port (9100) and nothing else of it, the edge
    namespace never reaches that port, and another namespace is kept out."""
    objects = targets[overlay].objects
    line_status = pod(objects, "Deployment", "checkout-line-status")
    assert policy.ingress_allowed(objects, {}, line_status, 8000, source_namespace_labels=EDGE)
    monitoring = {"kubernetes.io/metadata.name": "monitoring", "floodgate.io/monitoring": "true"}
    assert policy.ingress_allowed(objects, {}, line_status, 9100, source_namespace_labels=monitoring)
    assert not policy.ingress_allowed(objects, {}, line_status, 8000, source_namespace_labels=monitoring)
    assert not policy.ingress_allowed(objects, {}, line_status, 9100, source_namespace_labels=EDGE)
    assert not policy.ingress_allowed(objects, {}, line_status, 8000,
                                      source_namespace_labels={"kubernetes.io/metadata.name": "default"})
    assert not any(policy.reachable(objects, p, line_status, 8000) for p in every_pod(objects))
    # its Service sends the edge's traffic to that port
    service = policy.find(objects, "Service", "checkout-line-status")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "checkout", "app.kubernetes.io/component": "line-status"}
    container = policy.pod_spec(policy.find(objects, "Deployment", "checkout-line-status"))["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert [(p["port"], ports[p["targetPort"]]) for p in service["spec"]["ports"]] == [(80, 8000)]


@pytest.mark.parametrize("overlay", ["dev", "prod", "drop"])
def test_the_line_status_edge_reaches_checkouts_pgbouncer_accounts_jwks_and_dns_only(targets, overlay):
    """It reads checkout's database through checkout's PgBouncer and accounts' JWKS (the joins'
    and the admitted buyers' tokens); no broker, inventory, database server or address outside
    the cluster."""
    objects = targets[overlay].objects
    line_status = pod(objects, "Deployment", "checkout-line-status")
    pods = every_pod(objects)
    ports = (5432, 5672, 6432, 8000, 9100, 1025, 15672)
    reached = {(describe(p), port) for p in pods for port in ports
               if policy.reachable(objects, line_status, p, port)}
    assert reached == {("checkout/pgbouncer", 6432), ("accounts/api", 8000)}
    assert policy.egress_allowed(objects, line_status, 53, protocol="UDP", to_labels=KUBE_DNS,
                                 to_namespace_labels=KUBE_SYSTEM)
    for address, port in (("192.0.2.10", 5672), ("192.0.2.23", 5432), ("198.51.100.7", 443),
                          ("198.51.100.7", 80), ("198.51.100.7", 587), ("10.96.0.1", 443)):
        assert not policy.egress_allowed(objects, line_status, port, to_ip=address), (address, port)
