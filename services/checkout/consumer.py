"""Checkout's consumer: `python -m services.checkout.consumer`."""
from services.checkout import config, handlers
from shared import db, logs
from shared.messaging.consumer import ConsumerRunner


def main() -> None:
    settings = config.load()
    logs.configure("checkout-consumer", settings.log_level)
    session_factory = db.make_session_factory(db.make_engine(settings.database_url, pool_size=2))
    runner = ConsumerRunner(settings, handlers.EVENT_HANDLERS, lambda: db.UnitOfWork(session_factory, "checkout"))
    runner.install_signal_handlers()
    runner.run()


if __name__ == "__main__":
    main()
