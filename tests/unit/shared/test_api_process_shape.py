"""The gunicorn shape of an API process: the one place gunicorn's settings and PgBouncer's sizing read it."""
import pytest

from shared.config import API_THREADS, API_WORKERS, ConfigError, api_process_shape


def test_an_environment_that_names_no_shape_gets_one_worker_of_24_threads():
    assert api_process_shape({}) == (API_WORKERS, API_THREADS) == (1, 24)


def test_the_environment_names_the_workers_and_threads():
    assert api_process_shape({"WEB_CONCURRENCY": "4", "GUNICORN_THREADS": "8"}) == (4, 8)
    assert api_process_shape({"GUNICORN_THREADS": "32"}) == (1, 32)


@pytest.mark.parametrize("env", [{"WEB_CONCURRENCY": "two"}, {"GUNICORN_THREADS": "0"}, {"WEB_CONCURRENCY": ""}])
def test_a_shape_that_is_not_one_names_its_variable(env):
    [name] = env
    with pytest.raises(ConfigError, match=f"^{name}="):
        api_process_shape(env)
