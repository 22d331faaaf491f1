from shared.gunicorn_defaults import *  # noqa
