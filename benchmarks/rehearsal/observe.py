"""What the rehearsal's report shows of the drop as an operator would have seen it: the trace of
its slowest order, and the control room at the sell-out.

- **Tracing** (`--trace`, the default): every process of the isolated stack exports its spans
  over OTLP to a collector in the rehearsal's own process (devtools/otlp_collector.py). After the
  run, the slowest `POST /orders` answered 201 is found among checkout's server spans, and its
  whole trace (the inventory call, the outbox row, the relay's publish, the consumers, the
  email) goes into the report, span by span. Tracing costs CPU (about 25 spans an order): a run
  meant to measure cost takes `--no-trace`.
- **The control room** (`--control-room`, the default): a headless Debian Chromium (Playwright,
  as the browser tests drive it) signs in to the drop's control room before the opening, and
  when the sampler first reads no units left it waits for the page to show 0 left and keeps a
  screenshot, control-room-at-sell-out.png, beside the report.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from devtools.otlp_collector import Collector, Span

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TRACING_ENV = {
    "OTEL_BSP_SCHEDULE_DELAY": "1000",  # spans reach the collector within a second or so
    "OTEL_BSP_MAX_QUEUE_SIZE": "20000",  # a crowd's spans are not dropped while they wait
}


def tracing_env(collector: Collector) -> dict:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, **TRACING_ENV}


def _status(span: Span) -> int | None:
    for key in ("http.response.status_code", "http.status_code"):
        if key in span.attributes:
            return int(span.attributes[key])
    return None


def slowest_order_trace(collector: Collector) -> dict | None:
    """The slowest `POST /orders` answered 201, and every span of its trace in start order:
    process, name, milliseconds from the trace's first span, duration, depth in the tree."""
    placed = [span for span in collector.spans()
              if span.kind == "SERVER" and span.name.startswith("POST /orders") and _status(span) == 201]
    if not placed:
        return None
    slowest = max(placed, key=lambda span: span.milliseconds)
    spans = sorted(collector.trace(slowest.trace_id), key=lambda span: span.start_ns)
    by_id = {span.span_id: span for span in spans}

    def depth(span: Span) -> int:
        level, seen = 0, set()
        while span.parent_id in by_id and span.span_id not in seen:
            seen.add(span.span_id)
            span, level = by_id[span.parent_id], level + 1
        return level

    first = spans[0].start_ns
    return {
        "trace_id": slowest.trace_id,
        "order_id": next((s.attributes["floodgate.order_id"] for s in spans if "floodgate.order_id" in s.attributes),
                         None),
        "post_orders_ms": round(slowest.milliseconds, 1),
        "orders_traced": len(placed),
        "spans": [{"process": s.process, "name": s.name, "kind": s.kind, "depth": depth(s),
                   "at_ms": round((s.start_ns - first) / 1e6, 1), "ms": round(s.milliseconds, 1)} for s in spans],
    }


class ControlRoomCamera(threading.Thread):
    """Signs in to the drop's control room before the opening, and keeps a screenshot of it
    once the sampler reads no units left (`sold_out()`), or says why it could not."""

    def __init__(self, url: str, admin_email: str, password: str, sold_out, out: Path, give_up_at: float):
        super().__init__(name="control-room-camera", daemon=True)
        self.url, self.admin_email, self.password = url, admin_email, password
        self.sold_out, self.out, self.give_up_at = sold_out, out, give_up_at
        self.result: dict = {"screenshot": None, "why_not": "not taken yet"}

    def run(self) -> None:
        if not CHROMIUM.exists():
            self.result["why_not"] = f"no Debian chromium at {CHROMIUM} (`make chromium` installs it)"
            return
        try:
            from playwright.sync_api import expect, sync_playwright

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1100, "height": 1400})
                    page.goto(self.url)
                    form = page.locator("#sign-in-form")
                    form.get_by_label("Email").fill(self.admin_email)
                    form.get_by_label("Password").fill(self.password)
                    form.get_by_role("button", name="Sign in").click()
                    expect(page.locator("#signed-in")).to_be_visible(timeout=20_000)
                    while not self.sold_out():
                        if time.time() > self.give_up_at:
                            self.result["why_not"] = "the drop did not sell out while the crowd was in"
                            return
                        page.wait_for_timeout(200)
                    seen_at = time.time()
                    expect(page.locator("#stock-remaining")).to_have_text("0", timeout=10_000)
                    path = self.out / "control-room-at-sell-out.png"
                    page.screenshot(path=str(path), full_page=True)
                    self.result = {"screenshot": path.name, "why_not": None,
                                   "seconds_after_the_sampler_saw_it": round(time.time() - seen_at, 1)}
                finally:
                    browser.close()
        except Exception as error:  # the rehearsal goes on without it, and says why
            self.result["why_not"] = f"{type(error).__name__}: {error}"[:300]
