"""Checkout's consumer: `python -m services.checkout.consumer`."""
from services.checkout import config, handlers
from services.checkout.payments import HttpPaymentProvider
from shared import db, logs
from shared.messaging.consumer import ConsumerRunner


def main() -> None:
    settings = config.load()
    logs.configure("checkout-consumer", settings.log_level)
    session_factory = db.make_session_factory(db.engine_for(settings, pool_size=2))
    provider = HttpPaymentProvider(settings.payment_provider_url, settings.payment_webhook_secret)
    runner = ConsumerRunner(
        settings, handlers.event_handlers(provider, settings), lambda: db.UnitOfWork(session_factory, "checkout")
    )
    runner.install_signal_handlers()
    runner.run()


if __name__ == "__main__":
    main()
