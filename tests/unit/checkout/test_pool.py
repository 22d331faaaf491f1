"""An order holds its database connection through its call to inventory, so checkout's API opens
a pool whose ceiling (twice its size, shared/db.py) covers MAX_ORDERS_IN_FLIGHT however it is
set: no order in flight waits for a connection. PgBouncer's sizing (deploy/pooling.py) counts
the same figure (tests/k8s/test_pooling.py)."""
from __future__ import annotations

import pytest

from services.checkout import bootstrap, config

NO_DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/unused"  # engines connect lazily: never here


def pool_of(kind: str, **settings) -> int:
    root = bootstrap.bootstrap(kind, config.Settings(service_name="checkout", database_url=NO_DATABASE, **settings),
                               inventory=object(), provider=object())
    try:
        return root.engine.pool.size()
    finally:
        root.close()


def test_the_default_twenty_orders_in_flight_keep_the_pool_of_ten():
    assert config.Settings.max_orders_in_flight == 20
    assert pool_of("api") == bootstrap.POOL_SIZES["api"] == 10


@pytest.mark.parametrize("in_flight, pool", [(6, 10), (21, 11), (28, 14), (40, 20)])
def test_the_apis_pool_ceiling_covers_its_orders_in_flight(in_flight, pool):
    size = pool_of("api", max_orders_in_flight=in_flight)
    assert size == pool
    assert 2 * size >= in_flight


def test_only_the_api_takes_orders_so_other_processes_keep_their_pools():
    assert pool_of("admitter", max_orders_in_flight=40) == pool_of("admitter")
