"""The local RabbitMQ, driven through `rabbitmqctl`: private vhosts for isolated stacks (tests,
rehearsals), the broker restart that failure tests and rehearsals inflict, and `LocalCluster`,
a cluster of private broker nodes on this machine for the failover drill.

`python -m devtools.broker cluster` starts a three-node cluster and prints its AMQP_URL (Ctrl-C
stops it and deletes its files).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from devtools.ports import free_ports


def available() -> bool:
    """True when this machine's broker can be driven with rabbitmqctl."""
    return shutil.which("rabbitmqctl") is not None


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def private_vhost(prefix: str) -> tuple[str, str]:
    """A new vhost on the local broker for the guest user: (its name, its AMQP URL)."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost, f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"


def delete_vhost(vhost: str) -> None:
    rabbitmqctl("delete_vhost", vhost)


RESTART = ("stop_app", "start_app", "await_startup")


def restart() -> None:
    """Stop and start the broker application (connections drop; quorum queues keep their messages)."""
    for command in RESTART:
        rabbitmqctl(command)


class ClusterError(RuntimeError):
    """A node of a `LocalCluster` did not start, join or stop as asked; the message says why."""


@dataclass
class Node:
    """One broker node of a `LocalCluster`."""

    name: str  # Erlang node name, e.g. floodgate-1a2b3c-1@localhost
    port: int  # AMQP listener on 127.0.0.1
    dist_port: int  # Erlang distribution (clustering) listener on 127.0.0.1
    home: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def log(self) -> Path:
        return self.home / "log" / f"{self.name}.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster:
    """`size` RabbitMQ nodes on this machine, clustered, beside (and apart from) the system broker.

    Each node has its own name, AMQP and distribution ports, data and log directories and
    configuration under one temporary directory, and no plugins (so no management or Prometheus
    listener competes for the system broker's ports). The nodes share an Erlang cookie — passed
    in, or a new random one — which only they and the `rabbitmqctl` calls made here use. The
    server and CLI scripts are run directly (not Debian's wrapper that switches to the `rabbitmq`
    user), as whoever runs this.
    """

    STARTUP_SECONDS = 120

    def __init__(self, size: int = 3, cookie: str | None = None, base_dir: str | Path | None = None,
                 prefix: str = "floodgate"):
        self.bin_dir = _scripts_dir()
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="floodgate-rabbit-"))
        self._own_base = base_dir is None
        self.cookie = cookie or secrets.token_hex(20)
        run_id = uuid.uuid4().hex[:6]
        ports = free_ports(2 * size)
        self.nodes = [
            Node(name=f"{prefix}-{run_id}-{number}@localhost", port=ports.pop(), dist_port=ports.pop(),
                 home=self.base / f"node{number}")
            for number in range(1, size + 1)
        ]

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = STARTUP_SECONDS) -> "LocalCluster":
        """Start every node, join the others to the first, and wait until all of them run."""
        self._write_files()
        try:
            for node in self.nodes:
                self._launch(node)
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                self._await_startup(node, deadline)
            seed = self.nodes[0]
            for node in self.nodes[1:]:
                self.ctl(node, "stop_app")
                self.ctl(node, "join_cluster", seed.name)
                self.ctl(node, "start_app")
                self._await_startup(node, deadline)
            self._await_members(deadline)
        except BaseException:
            self.stop(keep_files=True)  # the logs say why
            raise
        return self

    def stop(self, keep_files: bool = False) -> None:
        """Stop every node that runs and delete the cluster's files (unless `keep_files`)."""
        for node in self.nodes:
            if node.running():
                self._ask_to_stop(node)
        for node in self.nodes:
            self._wait_stopped(node, timeout=60)
        if self._own_base and not keep_files:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    def stop_node(self, node: Node, timeout: float = 60) -> None:
        """Stop one node's Erlang VM, as an operator's `rabbitmqctl stop` does; returns once it exited."""
        self._ask_to_stop(node)
        self._wait_stopped(node, timeout)
        if node.process is not None and node.process.returncode not in (0, None):
            raise ClusterError(f"{node.name} exited with {node.process.returncode}; see {node.log}")

    def kill_node(self, node: Node) -> None:
        """SIGKILL one node's VM, as a crash or the OOM killer would: no goodbye to its clients or
        peers; returns once it is gone."""
        if node.running():
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait()

    def start_node(self, node: Node, timeout: float = STARTUP_SECONDS) -> None:
        """Start a stopped node again; returns once it runs in the cluster it belonged to."""
        deadline = time.monotonic() + timeout
        self._launch(node)
        self._await_startup(node, deadline)
        self._await_members(deadline)

    def restart(self, node: Node | None = None) -> None:
        """Stop and start the broker application of `node` (default: the first), as `restart()`
        does for the system broker: its connections drop, the VM and its data stay."""
        for command in RESTART:
            self.ctl(node or self.nodes[0], command)

    # -- what clients see ------------------------------------------------------------------------

    @property
    def amqp_url(self) -> str:
        """Every node's URL, comma-separated: what AMQP_URL holds for relays and consumers."""
        return ",".join(node.url for node in self.nodes)

    def node_on_port(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def running_nodes(self, asking: Node | None = None) -> list[str]:
        """The nodes the cluster counts as running, in the view of `asking` (default: any live one)."""
        status = json.loads(self.ctl(asking or self._live_node(), "cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def connections(self, asking: Node | None = None, timeout: float = 120) -> list[dict]:
        """Every client connection in the cluster: {"name": its connection_name, "node": the node
        (name) it is connected to, "user": ...}, in the view of `asking` (default: any live node).

        While a node is going, asking the others can hang on it: a short `timeout` turns that
        into a ClusterError the caller can retry."""
        rows = json.loads(self.ctl(asking or self._live_node(), "list_connections", "port", "user", "client_properties",
                                   "--formatter", "json", timeout=timeout))
        return [
            {"name": _connection_name(row.get("client_properties")), "node": self.node_on_port(int(row["port"])).name,
             "user": row.get("user")}
            for row in rows
        ]

    def queues(self) -> dict[str, dict]:
        """Every queue of the default vhost: name -> {"type", "members" (node names), "leader", "messages"}."""
        rows = json.loads(self.ctl(self._live_node(), "list_queues", "name", "type", "members", "leader", "messages",
                                   "--formatter", "json"))
        return {row["name"]: row for row in rows}

    def ctl(self, node: Node, *args: str, timeout: float = 120) -> str:
        """`rabbitmqctl -n <node> args...` with this cluster's cookie; its output (raises with the
        CLI's own message on failure)."""
        return self._cli("rabbitmqctl", "-n", node.name, *args, timeout=timeout)

    # -- internals -------------------------------------------------------------------------------

    def _cli(self, script: str, *args: str, timeout: float = 120) -> str:
        try:
            done = subprocess.run([str(self.bin_dir / script), *args], env=self._env(), capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise ClusterError(f"{script} {' '.join(args)}: no answer within {timeout}s") from error
        if done.returncode != 0:
            raise ClusterError(f"{script} {' '.join(args)} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout

    def _env(self, node: Node | None = None) -> dict:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.base / "home"),  # where Erlang finds the cookie, for the nodes and the CLI
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),  # not the system node's
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        if node is not None:
            env.update(
                RABBITMQ_NODENAME=node.name,
                RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                RABBITMQ_NODE_PORT=str(node.port),
                RABBITMQ_DIST_PORT=str(node.dist_port),
                RABBITMQ_CONFIG_FILE=str(node.home / "rabbitmq.conf"),
                RABBITMQ_CONFIG_FILES=str(node.home / "conf.d"),
                RABBITMQ_MNESIA_BASE=str(node.home / "mnesia"),
                RABBITMQ_LOG_BASE=str(node.home / "log"),
            )
        return env

    def _write_files(self) -> None:
        home = self.base / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        # Clustering traffic stays on the loopback interface, as the system node's does here.
        (self.base / "advanced.config").write_text("[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].\n")
        for node in self.nodes:
            for sub in ("mnesia", "log", "conf.d"):
                (node.home / sub).mkdir(parents=True, exist_ok=True)
            (node.home / "rabbitmq.conf").write_text(
                "log.console = false\n"
                "log.file.level = info\n"
                # a node that finds itself in a minority stops serving rather than diverging
                "cluster_partition_handling = pause_minority\n"
            )

    def _launch(self, node: Node) -> None:
        with open(node.home / "server.out", "ab") as out:
            node.process = subprocess.Popen([str(self.bin_dir / "rabbitmq-server")], env=self._env(node),
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def _await_startup(self, node: Node, deadline: float) -> None:
        while True:
            if not node.running():
                code = node.process.returncode if node.process else None
                raise ClusterError(f"{node.name} exited with {code} while starting:\n{_tail(node)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterError(f"{node.name} did not start in time:\n{_tail(node)}")
            try:
                self.ctl(node, "await_startup", "--timeout", str(max(1, min(10, int(remaining)))),
                         timeout=remaining + 5)
                return
            except ClusterError:
                # the VM is not up yet, so the CLI cannot reach it: ask again until the deadline
                time.sleep(0.5)

    def _await_members(self, deadline: float) -> None:
        """Until every node whose VM runs counts as running in the cluster."""
        expected = sorted(node.name for node in self.nodes if node.running())
        while (running := self.running_nodes()) != expected:
            if time.monotonic() > deadline:
                raise ClusterError(f"the cluster runs {running}, not {expected}")
            time.sleep(0.5)

    def _live_node(self) -> Node:
        for node in self.nodes:
            if node.running():
                return node
        raise ClusterError("no node of the cluster is running")

    def _ask_to_stop(self, node: Node) -> None:
        try:
            self.ctl(node, "stop", timeout=60)
        except ClusterError:
            if node.running():
                os.killpg(node.process.pid, signal.SIGTERM)

    @staticmethod
    def _wait_stopped(node: Node, timeout: float) -> None:
        if node.process is None:
            return
        try:
            node.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait()


def _scripts_dir() -> Path:
    """Where RabbitMQ's own scripts are: next to `rabbitmq-server`, or, on Debian, next to the
    wrapper it links to (which would switch to the `rabbitmq` user and its cookie)."""
    found = shutil.which("rabbitmq-server") or ("/usr/lib/rabbitmq/bin/rabbitmq-server"
                                                if Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() else None)
    if not found:
        raise ClusterError("a local RabbitMQ cluster needs RabbitMQ's scripts (rabbitmq-server, rabbitmqctl) on "
                           "this machine: apt install rabbitmq-server, or put them on PATH")
    directory = Path(os.path.realpath(found)).parent
    if not (directory / "rabbitmqctl").exists():
        raise ClusterError(f"no rabbitmqctl next to {found} (looked in {directory})")
    return directory




def _tail(node: Node, lines: int = 30) -> str:
    """The end of what the node wrote, and where the rest is."""
    text = []
    for path in (node.home / "server.out", node.log):
        if path.exists():
            last = path.read_text(errors="replace").splitlines()[-lines:]
            text.append("\n".join([f"--- {path} (last {lines} lines)", *last]))
    return "\n".join(text) or f"(no output in {node.home})"


def _connection_name(client_properties) -> str | None:
    # rabbitmqctl's JSON shows the properties as [name, type, value] triples
    for entry in client_properties or []:
        if isinstance(entry, list) and entry and entry[0] == "connection_name":
            return entry[-1]
    if isinstance(client_properties, dict):
        return client_properties.get("connection_name")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description="A local RabbitMQ cluster beside the system broker.")
    parser.add_argument("command", choices=["cluster"])
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    print(f"starting {args.nodes} nodes ...", flush=True)
    with LocalCluster(size=args.nodes) as cluster:
        print(f"running: {', '.join(cluster.running_nodes())}")
        print(f"AMQP_URL={cluster.amqp_url}")
        print("Ctrl-C stops the cluster and deletes its files.", flush=True)
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)


def _interrupt(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    main()
