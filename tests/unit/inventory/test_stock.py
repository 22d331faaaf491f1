"""A drop's units for the control room (`GET /drops/{id}/stock`): what the stock's figures say,
for a drop that exists. The stock stands in: no database."""
from __future__ import annotations

import pytest

from services.inventory.errors import DropNotFound
from services.inventory.handlers.drops import drop_stock
from tests.unit.inventory.fakes import DROP


class CountedStock:
    def __init__(self, figures):
        self.by_drop = figures

    def figures(self, drop_id):
        return self.by_drop.get(drop_id)


class FakeUnitOfWork:
    def __init__(self, figures):
        self.stock = CountedStock(figures)


def test_a_drops_units_are_left_held_and_sold():
    uow = FakeUnitOfWork({DROP: {"total": 50, "remaining": 20, "held": 5, "sold": 25}})

    assert drop_stock(str(DROP), uow) == {"drop_id": DROP, "total": 50, "remaining": 20, "held": 5, "sold": 25}


@pytest.mark.parametrize("drop_id", ["1b4e28ba-2fa1-11d2-883f-0016d3cca427", "not-a-drop"])
def test_a_drop_that_does_not_exist_is_not_found(drop_id):
    with pytest.raises(DropNotFound):
        drop_stock(drop_id, FakeUnitOfWork({DROP: {"total": 1, "remaining": 1, "held": 0, "sold": 0}}))
