"""Checkout's app factory: gunicorn serves `services.checkout.app:create_app()`."""
from flask import Flask

from services.checkout import api, config, control_room_page, page
from services.checkout.bootstrap import bootstrap
from services.checkout.errors import TooBusy
from services.checkout.load_shedding import LoadReport, OrderAdmission, OrderGate, line_pass_patience
from shared import control_room, web
from shared.messaging.metrics import dead_letter_figures


def create_app(settings: config.Settings | None = None, **dependencies) -> Flask:
    """`dependencies` go to the composition root (a test's fake `provider`, say)."""
    root = bootstrap("api", settings, **dependencies)
    app = web.create_app(root, [api.bp, page.bp, control_room_page.bp, control_room.workers_bp,
                                control_room.admin_actions_bp], title="Floodgate checkout", figures={
        "dead_letters": dead_letter_figures(root.settings, root.settings.metrics_query_timeout_seconds),
    })
    api.init_app(app, root.settings)
    # Load shedding in front of Flask: see services/checkout/load_shedding.py.
    gate = OrderGate(root.settings.max_orders_in_flight, root.settings.max_retry_after_seconds)
    app.wsgi_app = OrderAdmission(
        app.wsgi_app,
        gate,
        TooBusy("Checkout is taking as many orders as it can; retry after the time given."),
        root.service,
        report=LoadReport(gate, root.engine),  # the waiting room slows down while checkout sheds
        cors_origins=app.extensions["floodgate.cors"],  # so the drop page can read a refusal
        # the line's admitted buyers wait for a slot instead of being turned away at once
        patience=line_pass_patience(root.settings.line_pass_secrets, root.settings.line_pass_wait_seconds),
    )
    return app
