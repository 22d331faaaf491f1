from benchmarks.memory import MIB, MemoryMeter, markdown


class Samples:
    """Stands in for /proc: the stack's memory, per process group, one reading after another."""

    def __init__(self, *readings):
        self.readings = list(readings)
        self.roots_seen = []

    def __call__(self, roots):
        self.roots_seen.append(roots)
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


def test_each_stage_keeps_its_peak_and_its_end_and_the_whole_runs_peak_is_named():
    at_rest = {"checkout-api": 80 * MIB, "accounts-api": 90 * MIB}
    samples = Samples(at_rest, at_rest,                                      # started; signing in begins
                      {"checkout-api": 80 * MIB, "accounts-api": 280 * MIB},  # while signing in: the peak
                      {"checkout-api": 117 * MIB, "accounts-api": 100 * MIB},  # placing begins
                      {"checkout-api": 110 * MIB, "accounts-api": 100 * MIB})  # placing ends
    meter = MemoryMeter(lambda: {1: "checkout-api", 2: "accounts-api"}, measure=samples)
    meter.begin("at rest")
    meter.begin("signing in")
    meter._sample()
    meter.begin("placing")
    figures = meter.stop()

    assert figures["peak_mib"] == 360.0 and figures["peak_during"] == "signing in" and figures["within_budget"]
    assert [(s["name"], s["peak_mib"], s["end_mib"]) for s in figures["stages"]] == [
        ("at rest", 170.0, 170.0), ("signing in", 360.0, 217.0), ("placing", 217.0, 210.0)]
    assert figures["groups_at_peak_mib"] == {"accounts-api": 280.0, "checkout-api": 80.0}
    assert figures["groups_end_mib"] == {"accounts-api": [90.0, 100.0, 100.0], "checkout-api": [80.0, 117.0, 110.0]}
    assert samples.roots_seen[0] == {1: "checkout-api", 2: "accounts-api"}


def test_a_stack_over_the_budget_says_so():
    meter = MemoryMeter(lambda: {}, measure=Samples({"checkout-api": 1100 * MIB}))
    meter.begin("placing")
    figures = meter.stop()

    assert not figures["within_budget"]
    assert "**1100.0 MiB** during placing: **over** the 1024 MiB budget" in "\n".join(markdown(figures))
