import pika

from shared.messaging import connection as amqp

NODES = [f"amqp://guest:guest@rabbit-{n}:5672/%2F" for n in range(3)]


def test_one_url_is_one_address_and_a_comma_list_is_a_cluster():
    assert amqp.addresses("amqp://guest:guest@127.0.0.1:5672/%2F") == ["amqp://guest:guest@127.0.0.1:5672/%2F"]
    assert amqp.addresses(", ".join(NODES)) == NODES
    # a comma inside one URL's options does not split it
    assert amqp.addresses("amqps://u:p@h:5671/v?ssl_options=a,b") == ["amqps://u:p@h:5671/v?ssl_options=a,b"]


def test_each_connection_tries_every_node_starting_one_further_along(monkeypatch):
    tried = []
    monkeypatch.setattr(pika, "BlockingConnection", lambda params: tried.append([p.host for p in params]))
    for _ in range(4):
        amqp.connect(",".join(NODES), "relay")
    hosts = [f"rabbit-{n}" for n in range(3)]
    first = hosts.index(tried[0][0])
    for n, order in enumerate(tried):
        start = (first + n) % 3
        assert order == hosts[start:] + hosts[:start]


def test_a_single_url_connects_as_before(monkeypatch):
    tried = []
    monkeypatch.setattr(pika, "BlockingConnection", lambda params: tried.append(params))
    amqp.connect("amqp://guest:guest@127.0.0.1:5672/%2F", "consumer", heartbeat=15)
    [[params]] = tried
    assert (params.host, params.port, params.heartbeat, params.connection_attempts) == ("127.0.0.1", 5672, 15, 1)
    assert params.client_properties == {"connection_name": "consumer"}
