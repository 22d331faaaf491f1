"""The gunicorn shape of an API process: the one place gunicorn's settings and PgBouncer's sizing read it."""
from shared.config import API_THREADS, API_WORKERS, api_process_shape


def test_an_environment_that_names_no_shape_gets_one_worker_of_24_threads():
    assert api_process_shape({}) == (API_WORKERS, API_THREADS) == (1, 24)


def test_the_environment_names_the_workers_and_threads():
    assert api_process_shape({"WEB_CONCURRENCY": "4", "GUNICORN_THREADS": "8"}) == (4, 8)
    assert api_process_shape({"GUNICORN_THREADS": "32"}) == (1, 32)
