"""The notifications API's app factory."""
from flask import Response
from prometheus_client import CollectorRegistry, generate_latest

from shared import metrics, web
from services.notifications import config
from services.notifications.api import bp
from services.notifications.metrics import EmailMetrics


def create_app(settings: config.Settings | None = None):
    settings = settings or config.load()
    app = web.create_app(settings, [bp], title="Floodgate notifications", pool_size=2)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EmailMetrics(settings, web_context(app).session_factory))

    def prometheus():
        # The common HTTP metrics, then the email metrics read from the delivery log and the broker.
        body, content_type = metrics.exposition()
        return Response(body + generate_latest(registry), content_type=content_type)

    app.view_functions["probes.prometheus"] = prometheus
    return app


def web_context(app) -> web.ServiceContext:
    return app.extensions["floodgate"]
