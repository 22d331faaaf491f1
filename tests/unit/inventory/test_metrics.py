"""Each recent drop's expired holds, as Prometheus reads them from the inventory API (a fake
engine stands in for the database)."""
import uuid

from services.inventory.metrics import hold_expiry_figures
from shared.metrics import ScrapedFigures
from tests.unit.shared.fake_database import FakeEngine
from tests.unit.shared.scrape import scrape

DROP = uuid.UUID("5f0d7c7e-8a43-4b0b-a1a4-0c8c1d2e3f40")
OTHER = uuid.UUID("0b8a4a4e-2d0f-4b59-9a53-5a8f3c1d2e77")


def test_each_recent_drop_counts_its_expired_holds():
    engine = FakeEngine([{"id": DROP, "holds_expired": 12}, {"id": OTHER, "holds_expired": 0}])
    samples = scrape(ScrapedFigures("inventory", {"hold_expiries": hold_expiry_figures(engine, 2.0)}))

    assert samples[("floodgate_inventory_hold_expiries_total", ("drop_id", str(DROP)))] == 12
    assert samples[("floodgate_inventory_hold_expiries_total", ("drop_id", str(OTHER)))] == 0
    (statement, _), = engine.statements("SELECT")
    # drops long closed drop out: the series stay few
    assert "FROM drops WHERE closes_at > now() - interval '1 day'" in statement
