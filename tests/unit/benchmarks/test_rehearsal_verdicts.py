"""The rehearsal's must-holds (benchmarks/rehearsal/report.py): each can fail, including in a
drop where nothing went wrong because nobody could buy."""
from benchmarks.rehearsal import report


def figures(available_after: int, units: int = 300, buyers: int = 1000, line=None, gave_up=None,
            told_sold_out: int = 700) -> dict:
    return {
        "run": {"units": units, "buyers": buyers},
        "crowd": {"unexpected_5xx": 0, "gave_up": gave_up or {}, "told_sold_out": told_sold_out},
        "checks": {"oversold_units": 0, "stock_accounted_for": True, "confirmed_without_sale": [],
                   "confirmed_without_email": [], "duplicate_emails": 0, "available_after": available_after},
        "line": line,
        "database_restart": None,
    }


def failed(figures_: dict) -> list[str]:
    return [name for name, ok, _ in report.verdicts(figures_) if not ok]


def test_a_drop_where_nobody_could_buy_fails_although_nothing_else_went_wrong():
    assert failed(figures(available_after=300, told_sold_out=0)) == [
        "the drop sold out (1,000 buyers, every one answered, for 300 units)"]
    assert failed(figures(available_after=0)) == []


def test_with_fewer_buyers_than_units_an_unsold_drop_is_not_a_failure():
    assert failed(figures(available_after=200, units=300, buyers=100, told_sold_out=0)) == []


def test_when_buyers_gave_up_units_may_be_left_but_nobody_may_hear_sold_out_meanwhile():
    gave_up = {"503 for 20 s": 12}
    assert failed(figures(available_after=5, gave_up=gave_up, told_sold_out=0)) == []
    assert failed(figures(available_after=0, gave_up=gave_up)) == []
    assert failed(figures(available_after=5, gave_up=gave_up)) == ["no buyer told sold out while units were left unsold"]


def test_passes_in_play_judged_on_no_sample_at_all_fail():
    line = {
        "fairness": {"holds": True, "why": "no line"},
        "passes_within_stock": {"judged": True, "samples": 0, "violating_samples": 0, "max_active_passes": None},
        "sold_out": {"holds": True, "why": "the drop did not sell out", "sold_out_at": None, "limit_seconds": 5.0},
    }
    assert [name for name in failed(figures(available_after=0, line=line)) if "passes in play" in name]
