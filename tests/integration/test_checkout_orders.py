"""Checkout's orders against the real PostgreSQL: an order is read with its history in one
statement, and what a handler changes in an order it locked is written as the unit of work
commits, and only then."""
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from devtools.client import poll
from services.checkout import orders
from services.checkout.bootstrap import MIGRATIONS
from services.checkout.models import Order
from services.checkout.repository import CheckoutUnitOfWork
from tests.integration.database import migrated_engine

ADDRESS = {"name": "Ada", "street_address": "24 Sussex Drive", "city": "Ottawa", "postal_code": "K1A 0B1",
           "country_area": "ON", "country_code": "CA"}


@pytest.fixture
def database(infra):
    with migrated_engine(infra, "orders", MIGRATIONS, pool_size=4) as engine:
        yield engine


@pytest.fixture
def unit_of_work(database):
    return lambda: CheckoutUnitOfWork(orm.sessionmaker(database), "checkout")


def placed(unit_of_work) -> uuid.UUID:
    order = Order(id=uuid.uuid4(), buyer_id="buyer-1", buyer_email="ada@example.test", drop_id=uuid.uuid4(),
                  sku="PHONE-1", product_name="Phone", quantity=1, unit_amount=29900, currency="CAD",
                  shipping_address=ADDRESS, address_key="k", status=None,
                  hold_expires_at=datetime.now(timezone.utc) + timedelta(minutes=10),
                  approval_url="http://pay.example/1", created_at=datetime.now(timezone.utc), history=[])
    orders.move_new(order, "order placed; stock held")
    order.history[0].at = order.created_at
    with unit_of_work() as uow:
        uow.orders.add(order)
        uow.commit()
    return order.id


def confirm(order: Order) -> None:
    order.payment_capture_id = "CAP-1"
    orders.move(order, orders.CONFIRMED, "payment captured")
    order.confirmed_at = datetime.now(timezone.utc)


def read(unit_of_work, order_id) -> Order:
    with unit_of_work() as uow:
        return uow.orders.get(order_id)


def test_what_a_handler_changes_in_a_locked_order_is_written_when_the_unit_of_work_commits(unit_of_work):
    order_id = placed(unit_of_work)
    with unit_of_work() as uow:
        order = uow.orders.get(order_id, lock=True)
        assert (order.status, orders.version(order)) == (orders.AWAITING_PAYMENT, 1)
        confirm(order)
        assert uow.orders.get(order_id, lock=True) is order  # one order, one object, in a unit of work
        uow.commit()

    again = read(unit_of_work, order_id)
    assert (again.status, again.payment_capture_id, again.confirmed_at) == (orders.CONFIRMED, "CAP-1", order.confirmed_at)
    assert [(step.from_status, step.to_status, step.reason) for step in again.history] == [
        (None, orders.AWAITING_PAYMENT, "order placed; stock held"),
        (orders.AWAITING_PAYMENT, orders.CONFIRMED, "payment captured"),
    ]
    assert (again.shipping_address, again.total_amount, again.hold_expires_at) == (ADDRESS, 29900, order.hold_expires_at)


def test_a_unit_of_work_that_goes_on_after_a_commit_locks_and_reads_the_order_again(unit_of_work):
    order_id = placed(unit_of_work)
    with unit_of_work() as uow:
        first = uow.orders.get(order_id, lock=True)
        confirm(first)
        uow.commit()
        order = uow.orders.get(order_id, lock=True)
        assert order is not first and orders.version(order) == 2
        orders.move(order, orders.SHIPPED, "shipped")
        uow.commit()
    assert [step.to_status for step in read(unit_of_work, order_id).history] == [
        orders.AWAITING_PAYMENT, orders.CONFIRMED, orders.SHIPPED]


@pytest.mark.parametrize("ending", ["no commit", "rollback, then commit"])
def test_changes_of_a_transaction_given_up_are_not_written(unit_of_work, ending):
    order_id = placed(unit_of_work)
    with unit_of_work() as uow:
        confirm(uow.orders.get(order_id, lock=True))
        if ending == "rollback, then commit":
            uow.rollback()
            uow.commit()
    again = read(unit_of_work, order_id)
    assert (again.status, again.payment_capture_id, orders.version(again)) == (orders.AWAITING_PAYMENT, None, 1)


def test_an_address_changed_in_place_is_written(unit_of_work):
    order_id = placed(unit_of_work)
    with unit_of_work() as uow:
        uow.orders.get(order_id, lock=True).shipping_address["city"] = "Gatineau"
        uow.commit()
    assert read(unit_of_work, order_id).shipping_address == {**ADDRESS, "city": "Gatineau"}


def test_an_order_read_without_a_lock_is_never_written(unit_of_work):
    order_id = placed(unit_of_work)
    with unit_of_work() as uow:
        confirm(uow.orders.get(order_id))
        uow.commit()
    assert read(unit_of_work, order_id).status == orders.AWAITING_PAYMENT


def test_unknown_and_malformed_ids_name_no_order(unit_of_work):
    with unit_of_work() as uow:
        assert uow.orders.get(uuid.uuid4(), lock=True) is None
        assert uow.orders.get("not-an-id") is None


def waiting_for_a_lock(connection) -> bool:
    waiting = connection.execute(sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query LIKE '%FROM orders WHERE id = $1 FOR UPDATE'")).scalar()
    connection.rollback()  # pg_stat_activity is read once per transaction
    return bool(waiting)


def test_a_second_locker_waits_for_the_first_and_then_sees_its_changes(unit_of_work, database):
    order_id = placed(unit_of_work)
    seen = {}

    def second():
        with unit_of_work() as uow:
            order = uow.orders.get(order_id, lock=True)
            seen["status"], seen["version"] = order.status, orders.version(order)
            uow.commit()

    with unit_of_work() as uow:
        confirm(uow.orders.get(order_id, lock=True))
        waiter = threading.Thread(target=second)
        waiter.start()
        with database.connect() as observer:
            poll(lambda: waiting_for_a_lock(observer), timeout=10, interval=0.02,
                 what="the second transaction to wait for the order's lock")
        assert "status" not in seen
        uow.commit()
    waiter.join(10)
    assert seen == {"status": orders.CONFIRMED, "version": 2}


def test_an_order_is_known_charged_once_the_provider_captured_any_payment_for_it(unit_of_work):
    """What the email of an order's end says about money (services/checkout/handlers.py
    `_end_order`): an approval is no charge; a capture, of the wrong amount too, is."""
    order_id, other = placed(unit_of_work), placed(unit_of_work)
    with unit_of_work() as uow:
        uow.payment_events.record("WH-A", order_id, "PAYMENT.CAPTURE.APPROVED")
        uow.payment_events.record("WH-C", other, "PAYMENT.CAPTURE.COMPLETED")
        uow.commit()
    with unit_of_work() as uow:
        assert not uow.payment_events.captured_for(order_id)
        uow.payment_events.record("WH-B", order_id, "PAYMENT.CAPTURE.COMPLETED")
        assert uow.payment_events.captured_for(order_id)
