"""Settings read from the environment: a value the service cannot run with stops it at once,
with the variable named, instead of being read as something else."""
import pytest

from services.checkout.config import Settings as CheckoutSettings
from services.notifications.config import Settings as NotificationsSettings
from shared.config import ConfigError, Settings
from shared.web import allowed_origins, cors_headers


@pytest.mark.parametrize("word, read", [("true", True), ("Yes", True), ("1", True), (" on ", True),
                                        ("false", False), ("NO", False), ("0", False), ("off", False), ("", False)])
def test_a_switch_reads_its_yes_and_no_words(word, read):
    assert NotificationsSettings.from_env({"SMTP_STARTTLS": word}).smtp_starttls is read


@pytest.mark.parametrize("word", ["required", "enabled", "ture", "2"])
def test_a_switch_set_to_a_word_it_does_not_know_stops_the_service_instead_of_reading_no(word):
    """`SMTP_STARTTLS=required` read as no: mail and the SMTP password went out unencrypted."""
    with pytest.raises(ConfigError, match=f"SMTP_STARTTLS={word!r}"):
        NotificationsSettings.from_env({"SMTP_STARTTLS": word})


@pytest.mark.parametrize("name, raw", [("CONSUMER_THREADS", "four"), ("CONSUMER_THREADS", ""),
                                       ("JWKS_MIN_REFRESH_SECONDS", "nan"), ("JWKS_MIN_REFRESH_SECONDS", "inf"),
                                       ("RELAY_BATCH_WINDOW_SECONDS", "-1"), ("RETRY_DELAYS_MS", "200,-5"),
                                       ("RETRY_DELAYS_MS", "200,soon")])
def test_a_number_that_is_not_one_names_its_variable(name, raw):
    with pytest.raises(ConfigError, match=f"^{name}="):
        Settings.from_env({name: raw})


@pytest.mark.parametrize("name", ["JWKS_MAX_AGE_SECONDS", "CONSUMER_THREADS", "RELAY_IDLE_SECONDS", "MAX_ATTEMPTS"])
def test_a_setting_that_would_spin_or_do_nothing_at_0_is_refused(name):
    """JWKS_MAX_AGE_SECONDS=0 had every worker fetch accounts' key set about 18,000 times a second."""
    with pytest.raises(ConfigError, match="more than 0"):
        Settings.from_env({name: "0"})


def test_a_service_refuses_its_own_settings_at_0_and_keeps_the_shared_ones():
    with pytest.raises(ConfigError, match="MAX_ORDERS_IN_FLIGHT"):
        CheckoutSettings.from_env({"MAX_ORDERS_IN_FLIGHT": "0"})
    with pytest.raises(ConfigError, match="JWKS_MAX_AGE_SECONDS"):
        CheckoutSettings.from_env({"JWKS_MAX_AGE_SECONDS": "0"})


def test_settings_where_0_means_off_take_it():
    settings = Settings.from_env({"DEFER_WHILE_BUSY_SECONDS": "0", "BACKGROUND_NICENESS": "0", "RETRY_DELAYS_MS": "200,500"})
    assert (settings.defer_while_busy_seconds, settings.background_niceness, settings.retry_delays_ms) == (0, 0, (200, 500))


def test_cors_origins_are_kept_as_a_browser_sends_them():
    """Kept as typed, these matched no browser's Origin, and the drop page failed with nothing in
    the logs."""
    written = ("https://Shop.Example.com, https://shop.example.com:443/, HTTP://127.0.0.1:8003, http://[::1]:80, "
               "https://Bücher.example, capacitor://localhost, https://faß.de, https://my_app.example.com")
    assert allowed_origins(Settings(cors_allowed_origins=written)) == {
        "https://shop.example.com", "http://127.0.0.1:8003", "http://[::1]", "https://xn--bcher-kva.example",
        "capacitor://localhost", "https://xn--fa-hia.de", "https://my_app.example.com"}
    assert cors_headers("https://shop.example.com", allowed_origins(Settings(cors_allowed_origins=written)))


@pytest.mark.parametrize("written", ["*", "shop.example.com", "https://shop.example.com/drops", "https://*.example.com",
                                     "https://shop.example.com:99999", "https://user@shop.example.com"])
def test_a_cors_origin_that_is_not_one_stops_the_service(written):
    with pytest.raises(ConfigError, match="^CORS_ALLOWED_ORIGINS="):
        allowed_origins(Settings(cors_allowed_origins=f"https://ok.example.com,{written}"))


def test_production_refuses_the_public_development_secrets_and_names_them():
    """Left unset outside Kubernetes, they were taken silently: with the public webhook secret a
    buyer could sign their own order's payment; with the service key read every address."""
    with pytest.raises(ConfigError, match="^LINE_PASS_SECRET, PAYMENT_WEBHOOK_SECRET, SERVICE_KEY: the development"):
        CheckoutSettings.from_env({"DEPLOYMENT_ENVIRONMENT": "production"}).checked_for_production("api")
    with pytest.raises(ConfigError, match="^SERVICE_KEY:"):
        NotificationsSettings.from_env({"DEPLOYMENT_ENVIRONMENT": "production"}).checked_for_production("api")
    own = {"DEPLOYMENT_ENVIRONMENT": "production", "SERVICE_KEY": "k" * 40, "PAYMENT_WEBHOOK_SECRET": "w" * 40,
           "LINE_PASS_SECRET": "p" * 40}
    assert CheckoutSettings.from_env(own).checked_for_production("api").deployment_environment == "production"
    assert CheckoutSettings.from_env({}).checked_for_production("api").service_key  # development takes them, as make run does
    with pytest.raises(ConfigError, match="^DEPLOYMENT_ENVIRONMENT='prod'"):
        Settings.from_env({"DEPLOYMENT_ENVIRONMENT": "prod"}).checked_for_production("job")


@pytest.mark.parametrize("kind, given, refused", [
    ("admitter", {"SERVICE_KEY"}, "LINE_PASS_SECRET, PAYMENT_WEBHOOK_SECRET"),
    ("consumer", {"SERVICE_KEY", "PAYMENT_WEBHOOK_SECRET"}, "LINE_PASS_SECRET"),
    ("line-status", {"LINE_PASS_SECRET"}, "PAYMENT_WEBHOOK_SECRET, SERVICE_KEY"),
    ("relay", set(), "LINE_PASS_SECRET, PAYMENT_WEBHOOK_SECRET, SERVICE_KEY"),
    ("job", set(), "LINE_PASS_SECRET, PAYMENT_WEBHOOK_SECRET, SERVICE_KEY"),
])
def test_a_process_in_production_needs_only_the_secrets_it_uses_and_holds_no_public_one(kind, given, refused):
    """Kubernetes gives each process only its own Secrets: checkout's consumer, admitter, relay and
    line edge, and accounts' nightly purge, refused to start in production when every process had
    to set all of its service's secrets."""
    env = {"DEPLOYMENT_ENVIRONMENT": "production", **{name: name.lower() * 3 for name in given}}
    settings = CheckoutSettings.from_env(env).checked_for_production(kind)
    assert {name.upper() for name in CheckoutSettings.DEVELOPMENT_SECRETS if getattr(settings, name) == ""} \
        == set(refused.split(", "))  # the public defaults it does not use are blanked
    assert all(getattr(settings, name.lower()) == name.lower() * 3 for name in given)
    for name in given & {name.upper() for name in CheckoutSettings.SECRETS_USED.get(kind, ())}:
        with pytest.raises(ConfigError, match=f"^{name}: the development default"):  # one it uses: not without it
            CheckoutSettings.from_env({k: v for k, v in env.items() if k != name}).checked_for_production(kind)


def test_every_service_starts_from_settings_checked_for_production(monkeypatch):
    import importlib

    monkeypatch.setenv("DEPLOYMENT_ENVIRONMENT", "production")
    for service in ("accounts", "inventory", "checkout", "notifications"):
        with pytest.raises(ConfigError, match="SERVICE_KEY"):
            importlib.import_module(f"services.{service}.config").load("api")
        assert importlib.import_module(f"services.{service}.config").load("job").service_key == ""
