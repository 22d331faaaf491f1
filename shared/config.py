"""Configuration read from environment variables, once, with local-development defaults.

Every default here is a development default: it points at the local PostgreSQL and RabbitMQ
and uses keys that are public in this repository. Production sets every one of them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Mapping

DEV_SERVICE_KEY = "dev-only-service-key-not-a-secret"
DEV_WEBHOOK_SECRET = "dev-only-webhook-secret-not-a-secret"
ENVIRONMENTS = ("development", "production")


class ConfigError(ValueError):
    """A setting the service cannot run with; the message names its environment variable."""


_YES, _NO = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off", ""})


def _cast(raw: str, like: Any) -> Any:
    """`raw` as a value of `like`'s kind, or ValueError: a switch is yes or no (a word it does not
    know, `SMTP_STARTTLS=required` say, was read as no), a number finite and not negative."""
    if isinstance(like, bool):
        word = raw.strip().lower()
        if word not in _YES | _NO:
            raise ValueError("not a yes or a no (true/false, 1/0, yes/no, on/off)")
        return word in _YES
    if isinstance(like, (int, float)):
        return _number(raw, type(like))
    if isinstance(like, tuple):
        # every list setting is of numbers (an empty default says nothing of its items)
        return tuple(_number(part, type(like[0]) if like else int) for part in raw.split(",") if part)
    return raw


def _number(raw: str, kind: type) -> int | float:
    number = kind(raw)
    if not math.isfinite(number) or number < 0:
        raise ValueError("not a finite number of 0 or more")
    return number


@dataclass(frozen=True)
class Settings:
    """Settings every service shares. A service subclasses it to add its own fields.

    Each field is read from the upper-cased environment variable of the same name;
    `from_env` is the only place the environment is read.
    """

    # settings that must be above 0 when set: at 0 a loop would spin (the JWKS refreshed, an
    # idle outbox polled, without a pause), nothing would be done (no handler threads, no rows
    # a batch) or everything refused. A service adds its own: `Settings.POSITIVE | {...}`.
    POSITIVE: ClassVar[frozenset[str]] = frozenset({
        "jwks_max_age_seconds", "consumer_prefetch", "consumer_threads", "max_attempts", "relay_batch_size",
        "relay_idle_seconds", "metrics_query_timeout_seconds", "migration_lock_timeout_seconds", "migration_attempts",
        "partner_down_seconds", "inbox_retention_seconds", "housekeeping_interval_seconds"})
    # settings whose default is a development secret, public here: refused in production. A
    # service adds its own: `{**Settings.DEVELOPMENT_SECRETS, ...}`.
    DEVELOPMENT_SECRETS: ClassVar[dict[str, str]] = {"service_key": DEV_SERVICE_KEY}
    # which of them each kind of process (shared.service.KINDS) uses; a kind not named uses none.
    # deploy/k8s gives each process only the Secrets it uses, so production refuses a public
    # default only where it is used, and blanks the rest: a relay or a job starts without the
    # service key, and holds no public one.
    SECRETS_USED: ClassVar[dict[str, frozenset[str]]] = {"api": frozenset({"service_key"})}

    service_name: str = "floodgate"
    # "development" or "production". Production refuses to start with a development secret
    # (`DEVELOPMENT_SECRETS`: public in this repository, anyone could sign a payment's webhook or
    # call a service-key endpoint with it) and, at accounts, without a key-encryption key. The
    # Kubernetes base sets it; the dev overlay and local runs keep the development default.
    deployment_environment: str = "development"
    database_url: str = ""
    # false when DATABASE_URL goes through a transaction pooler (PgBouncer, pool_mode=transaction):
    # each transaction may run on another server connection, where a statement psycopg prepared on
    # the last one does not exist (deploy/k8s/README.md, "PgBouncer")
    database_prepared_statements: bool = True
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    log_level: str = "INFO"
    # token verification (the accounts service's JWKS)
    jwks_url: str = "http://127.0.0.1:8001/.well-known/jwks.json"
    jwt_issuer: str = "floodgate-accounts"
    jwt_audience: str = "floodgate"
    jwks_min_refresh_seconds: float = 30.0
    # every process fetches the JWKS again this often: a key accounts retires stops verifying
    # everywhere within it (accounts serves the JWKS with a max-age no longer)
    jwks_max_age_seconds: float = 300.0
    # where the last good JWKS is kept for workers that start while accounts is down ("" = nowhere)
    jwks_cache_file: str = ""
    # service-to-service calls carry this key (development default)
    service_key: str = DEV_SERVICE_KEY
    # consumers
    amqp_heartbeat_seconds: int = 30
    consumer_prefetch: int = 20
    # messages handled at once per consumer process, each on its own thread and database
    # connection (handlers that wait on SMTP or HTTP gain from more than one)
    consumer_threads: int = 1
    # a consumer whose work may come late (notifications' email) holds each message while the
    # machine's other processes use at least `busy_cpu_share` of its CPU, until the message is
    # this many seconds old: on a box shared with the APIs the rush wins and the mail drains
    # after (shared/messaging/deferral.py); 0: never holds
    defer_while_busy_seconds: float = 0.0
    busy_cpu_share: float = 0.8
    # empty: the service's retry tiers in shared/messaging/topology.py; set (the same in every
    # process) only by tests and local rehearsals that cannot wait seconds for a retry
    retry_delays_ms: tuple = ()
    max_attempts: int = 5
    # how long a message is retried through the tiers when an outside service it needs fails
    # (shared.messaging.consumer.PartnerDown: checkout's payment provider); tests shorten it
    partner_down_seconds: float = 24 * 3600
    # a consumer deletes what has aged this often (shared/messaging/housekeeping.py): inbox
    # message ids kept this long (a copy of a message comes again within minutes, not days)
    housekeeping_interval_seconds: float = 3600.0
    inbox_retention_seconds: float = 7 * 24 * 3600
    # outbox relay
    relay_batch_size: int = 500
    relay_idle_seconds: float = 0.25  # the longest pause between polls of an idle outbox
    # After a batch that was not full, let rows gather: events wait up to this long (an email
    # 0.1 s later), and the relay spends 40% less CPU per order than at 0.02 (make bench).
    relay_batch_window_seconds: float = 0.1
    # consumers, relays and sweepers touch this file every turn of their loop (liveness)
    heartbeat_file: str = ""
    # consumers, relays and sweepers lower their CPU priority by this much (nice): on a machine
    # shared with the APIs the rush's requests win and the follow-up work drains after
    background_niceness: int = 0
    # browser origins allowed to call this service's API (CORS), comma-separated: the drop page's
    # (checkout's public URL) where the services are not behind one origin; empty: none
    cors_allowed_origins: str = ""
    # /metrics reads the database and the broker when Prometheus scrapes; each read gets at most this long
    metrics_query_timeout_seconds: float = 2.0
    # traces go to this OTLP/HTTP collector (shared/tracing.py); empty: no tracing, at no cost
    otel_exporter_otlp_endpoint: str = ""
    # `migrate` waits this long at most for a table's lock, then rolls back and tries again, up to
    # `migration_attempts` runs (shared/migrate.py): queries queued behind a migration that
    # waits on a long transaction wait this long, not as long as that transaction lasts
    migration_lock_timeout_seconds: float = 5.0
    migration_attempts: int = 10
    # fault injection for tests and rehearsals; never set in production
    fault_relay_exit_after_publish: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from `environ` (default: the process environment) and overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.name.upper())
            if raw is None:
                continue
            try:
                values[f.name] = _cast(raw, f.default if f.default is not None else "")
            except ValueError as error:
                raise ConfigError(f"{f.name.upper()}={raw!r}: {error}") from None
            if f.name in cls.POSITIVE and not values[f.name] > 0:
                raise ConfigError(f"{f.name.upper()}={raw!r}: must be more than 0")
        values.update(overrides)
        settings = cls(**values)
        if not settings.database_url:
            object.__setattr__(
                settings,
                "database_url",
                f"postgresql+psycopg://postgres@127.0.0.1:5432/floodgate_{settings.service_name}",
            )
        return settings

    def checked_for_production(self, kind: str) -> "Settings":
        """These settings for a process of `kind`, or ConfigError for a DEPLOYMENT_ENVIRONMENT
        that is neither, or, in production, a development secret the kind uses (`SECRETS_USED`);
        one it does not use is blanked there. What a service's process starts with (its `load`).
        Tools that read settings for other ends (PgBouncer's sizing from a ConfigMap) need no secret."""
        if self.deployment_environment not in ENVIRONMENTS:
            raise ConfigError(f"DEPLOYMENT_ENVIRONMENT={self.deployment_environment!r}: one of {', '.join(ENVIRONMENTS)}")
        if self.deployment_environment != "production":
            return self
        public = {name for name, value in self.DEVELOPMENT_SECRETS.items() if getattr(self, name) == value}
        used = public & self.SECRETS_USED.get(kind, frozenset())
        if used:
            raise ConfigError(f"{', '.join(sorted(name.upper() for name in used))}: the development default, public "
                              "in the repository; production sets its own (deploy/k8s/README.md, Production)")
        return replace(self, **dict.fromkeys(public, ""))




def lower_priority(settings: Settings) -> None:
    """Run this (background) process at `settings.background_niceness` below the APIs."""
    if settings.background_niceness > 0:
        os.nice(settings.background_niceness)


# An API process's gunicorn shape where WEB_CONCURRENCY and GUNICORN_THREADS do not name one: one
# worker of 24 threads, so that checkout's concurrent orders share bigger calls to inventory (its
# MAX_ORDERS_IN_FLIGHT says how many). What each shape measured, and its price in p99:
# docs/performance.md, "Where it stands (2026-12-04, 14:20 UTC)". A pod scales with more pods.
API_WORKERS = 1
API_THREADS = 24
# How long an API (gunicorn) or checkout's line-status edge (uvicorn) keeps an idle connection,
# where KEEPALIVE_SECONDS does not say: gunicorn's own 5 s, for clients that reach it directly
# (make run, the tests, the rehearsal's crowd), whose idle connections would otherwise fill a
# worker's 1,000. Behind a proxy that keeps its idle upstream connections (ingress-nginx: 60 s)
# it must be longer than the proxy's, so that the proxy, not the server, closes them: a server
# closing one races the proxy's next request on it, and the proxy answers that request 502 (a
# POST is not retried), counted by no metric here. The manifests' ConfigMaps set 75.
KEEPALIVE_SECONDS = 5


def keepalive_seconds(env: Mapping[str, str] = os.environ) -> int:
    raw = env.get("KEEPALIVE_SECONDS", str(KEEPALIVE_SECONDS))
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"KEEPALIVE_SECONDS={raw!r}: must be a whole number of seconds, 1 or more")
    return int(raw)


def metrics_address(bind: str) -> tuple[str, int]:
    """`METRICS_BIND`'s HOST:PORT, as gunicorn takes a bind (HOST may be empty: every address;
    `[::1]:9100` for IPv6), or ValueError. The APIs' gunicorn and checkout's line-status edge
    both listen for Prometheus there."""
    host, colon, port = bind.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"METRICS_BIND must be HOST:PORT, not {bind!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def api_process_shape(env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """(gunicorn workers, threads per worker) of an API process run with `env`: what
    shared/gunicorn_defaults.py serves with and deploy/pooling.py sizes PgBouncer for."""
    shape = []
    for name, default in (("WEB_CONCURRENCY", API_WORKERS), ("GUNICORN_THREADS", API_THREADS)):
        raw = env.get(name, str(default))
        if not raw.strip().isdigit() or int(raw) < 1:
            raise ConfigError(f"{name}={raw!r}: must be a whole number, 1 or more")
        shape.append(int(raw))
    return shape[0], shape[1]
