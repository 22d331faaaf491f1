"""Checkout's settings: the only place it reads the environment."""
from dataclasses import dataclass

from shared.config import DEV_WEBHOOK_SECRET, Settings as CommonSettings

# development default; production reads LINE_PASS_SECRET from a Secret
DEV_LINE_PASS_SECRET = "dev-only-line-pass-secret-not-a-secret"


@dataclass(frozen=True)
class Settings(CommonSettings):
    POSITIVE = CommonSettings.POSITIVE | {
        "inventory_timeout_seconds", "max_orders_in_flight", "inventory_hold_batch_size",
        "inventory_hold_calls", "admitter_interval_seconds", "line_positions_per_turn", "line_status_refresh_seconds",
        "per_address_limit", "web_concurrency", "refused_key_retention_seconds"}
    DEVELOPMENT_SECRETS = {**CommonSettings.DEVELOPMENT_SECRETS, "payment_webhook_secret": DEV_WEBHOOK_SECRET,
                           "line_pass_secret": DEV_LINE_PASS_SECRET}
    # the API checks service keys, webhooks and passes and calls inventory; the admitter calls
    # inventory; the consumer signs refunds to the provider; the line's edge signs passes
    SECRETS_USED = {"api": frozenset(DEVELOPMENT_SECRETS), "admitter": frozenset({"service_key"}),
                    "consumer": frozenset({"payment_webhook_secret"}), "line-status": frozenset({"line_pass_secret"})}

    inventory_url: str = "http://127.0.0.1:8002"
    inventory_timeout_seconds: float = 2.0
    payment_provider_url: str = "http://127.0.0.1:8010"
    # development default; production reads it from a Secret
    payment_webhook_secret: str = DEV_WEBHOOK_SECRET
    # during a rotation, the secret before it: webhooks signed with it are still taken (refunds
    # are signed with the current one only); empty: none (deploy/k8s/README.md, "Rotating secrets")
    payment_webhook_previous_secret: str = ""
    webhook_tolerance_seconds: int = 300
    public_url: str = "http://127.0.0.1:8003"
    # how long an Idempotency-Key refused for good (sold out, a limit, a bad address) keeps its
    # answer: a retry within it hears the refusal again; past it the key is deleted by the
    # consumer's housekeeping (a lineless drop's crowd leaves one such key per buyer) and a request
    # with it is handled afresh. Longer than the longest hold (inventory's MAX_HOLD_TTL_SECONDS, a
    # day): a hold a refused attempt left behind has run out and been swept by then, so a fresh
    # attempt never orders on it. A key that placed an order keeps its answer as long as the order.
    refused_key_retention_seconds: float = 2 * 24 * 3600
    # resellers share addresses: units of one drop per shipping address, across buyers
    per_address_limit: int = 2
    # load shedding: orders handled at once per process (of its 24 request threads: the rest serve
    # polls, pass pickups and payment webhooks), and the inventory circuit breaker
    max_orders_in_flight: int = 20
    # the longest Retry-After a shed buyer is given (it follows the refused/admitted ratio)
    max_retry_after_seconds: int = 10
    # how long an order with a line pass waits for one of those slots before it is shed (the
    # line bounds how many such orders there are: services/checkout/load_shedding.py)
    line_pass_wait_seconds: float = 2.0
    inventory_breaker_threshold: int = 5
    # a process's concurrent new holds share one call to inventory: at most this many holds in a
    # call (1: one call per hold), and at most `inventory_hold_calls` such calls in flight
    inventory_hold_batch_size: int = 16
    inventory_hold_calls: int = 1
    inventory_breaker_cooldown_seconds: float = 3.0
    # the waiting room (services/checkout/line.py): the key that signs admission passes, how
    # often the admitter turns, and joins per client address per minute (per line-status edge process)
    line_pass_secret: str = DEV_LINE_PASS_SECRET
    # during a rotation, the key before it: passes it signed still place orders until they run
    # out (passes are signed with the current one only); empty: none
    line_pass_previous_secret: str = ""
    admitter_interval_seconds: float = 0.5
    # a line's pre-queue positions the admitter writes a turn, from the opening on (a pre-queue
    # this size or smaller is placed at its opening; services/checkout/admitter.py): about 26 us
    # of PostgreSQL's CPU each, so 0.26 s a turn at 10,000
    line_positions_per_turn: int = 10_000
    # no buyer is let in this close to their drop's close: the pass would run out before an order
    line_min_order_seconds: float = 30.0
    line_joins_per_client_per_minute: int = 30
    # the proxies in front of the edge (ingress, load balancer) whose X-Forwarded-For it believes,
    # as accounts' setting of the same name: the join limit's client address is the one the
    # nearest of them put there; 0: the connection's own address
    trusted_proxy_hops: int = 0
    # how long `GET /drops/{id}/line` (every drop page's read of its line) may be answered from a
    # worker's copy, and by a CDN in front; 0: every read from the database
    line_max_age_seconds: float = 1.0
    # the public status edge (services/checkout/line_status.py): how often it copies the lines,
    # its uvicorn workers (the name gunicorn's APIs read), and where it serves /metrics (HOST:PORT;
    # empty: nowhere), which takes one worker
    line_status_refresh_seconds: float = 0.25
    web_concurrency: int = 1
    metrics_bind: str = ""
    # where the drop page (services/checkout/page.py) finds the other services, as buyers reach them
    accounts_public_url: str = "http://127.0.0.1:8001"
    inventory_public_url: str = "http://127.0.0.1:8002"
    line_status_public_url: str = "http://127.0.0.1:8005"
    # where the control room (services/checkout/control_room_page.py) finds notifications, as admins reach it
    notifications_public_url: str = "http://127.0.0.1:8004"

    @property
    def payment_webhook_secrets(self) -> tuple[str, ...]:
        """The secrets a provider webhook may be signed with: the current one, then the previous."""
        return _set(self.payment_webhook_secret, self.payment_webhook_previous_secret)

    @property
    def line_pass_secrets(self) -> tuple[str, ...]:
        """The keys an admission pass may be signed with: the current one, then the previous."""
        return _set(self.line_pass_secret, self.line_pass_previous_secret)


def _set(*secrets: str) -> tuple[str, ...]:
    """The secrets that are set, in their order (during a rotation: the current, then the previous)."""
    return tuple(secret for secret in secrets if secret)


def load(kind: str) -> Settings:
    """The settings a process of `kind` (shared.service.KINDS) starts with."""
    return Settings.from_env(service_name="checkout").checked_for_production(kind)

