"""A local PgBouncer in transaction mode in front of a PostgreSQL server, as Kubernetes runs one
in front of each service's database (deploy/k8s/README.md, "PgBouncer").

`LocalPgBouncer(postgres_url).start()` runs the Debian package's `pgbouncer` on a free port of
127.0.0.1 with its configuration in a temporary directory; `.url` is the PostgreSQL URL to give
the services instead of the server's, and `.admin()` queries its admin console (SHOW POOLS ...).
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from devtools.ports import free_port

INSTALL_HINT = "apt-get install -y pgbouncer (make integration installs it)"


class PgBouncerMissing(RuntimeError):
    pass


def executable() -> str:
    """The pgbouncer binary: on PATH, or where Debian puts it (/usr/sbin, often not on a user's PATH)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise PgBouncerMissing(f"pgbouncer is not installed: {INSTALL_HINT}")
    return found


class LocalPgBouncer:
    """One pgbouncer process: transaction pooling, every database of the server behind it,
    clients trusted (it listens on 127.0.0.1 only), at most `server_connections` server
    connections per database, whatever the number of clients."""

    def __init__(self, postgres_url: str, server_connections: int = 20, max_client_conn: int = 1000):
        self.server = make_url(postgres_url)
        self.server_connections = server_connections
        self.max_client_conn = max_client_conn
        self.port = free_port()
        self.directory: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server's URL with PgBouncer's address: what the services are given."""
        return self.server.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    @property
    def log(self) -> Path:
        return self.directory / "pgbouncer.log"

    def _config(self) -> str:
        user = self.server.username or "postgres"
        return f"""\
[databases]
* = host={self.server.host or "127.0.0.1"} port={self.server.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.directory / "userlist.txt"}
admin_users = {user}
pool_mode = transaction
default_pool_size = {self.server_connections}
max_db_connections = {self.server_connections}
max_client_conn = {self.max_client_conn}
query_wait_timeout = 15
ignore_startup_parameters = extra_float_digits
"""

    def start(self, timeout: float = 15) -> "LocalPgBouncer":
        binary = executable()
        self.directory = Path(tempfile.mkdtemp(prefix="floodgate-pgbouncer-"))
        user = self.server.username or "postgres"
        # clients are trusted; the password (if the server wants one) is what pgbouncer logs in with
        (self.directory / "userlist.txt").write_text(f'"{user}" "{self.server.password or ""}"\n')
        (self.directory / "pgbouncer.ini").write_text(self._config())
        argv = [binary, str(self.directory / "pgbouncer.ini")]
        if os.geteuid() == 0:
            # pgbouncer refuses to run as root; it drops to another user and must read its files
            runs_as = pwd.getpwnam("postgres" if _user_exists("postgres") else "nobody")
            argv[1:1] = ["-u", runs_as.pw_name]
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, runs_as.pw_uid, runs_as.pw_gid)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.admin("SHOW VERSION")
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pgbouncer did not answer on port {self.port} within {timeout}s")
                time.sleep(0.1)

    def admin(self, command: str) -> list[dict]:
        """A command on the admin console (`SHOW POOLS`, `SHOW STATS`, ...), as rows of dicts."""
        user = self.server.username or "postgres"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=user, dbname="pgbouncer",
                             autocommit=True, connect_timeout=2) as conn:
            cursor = conn.execute(command, prepare=False)
            names = [c.name for c in cursor.description or []]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "LocalPgBouncer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
