import pytest

from tests.unit.checkout.fakes import Checkout


@pytest.fixture
def checkout():
    return Checkout()
