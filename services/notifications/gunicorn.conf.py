from shared.gunicorn_defaults import *  # noqa: F401,F403
