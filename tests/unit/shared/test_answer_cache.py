"""A worker's copy of public answers (shared/answer_cache.py) and how it is served
(shared/web.py's `public_answer`): a test clock, counted renders and a bare Flask app stand in."""
from __future__ import annotations

import json
import threading

import pytest
from flask import Flask

from devtools.client import poll
from shared.answer_cache import AnswerCache
from shared.web import public_answer


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Renders:
    """Renders "v1", "v2", ... and counts them; `changes_in` is what each says about the clock."""

    def __init__(self, changes_in=None):
        self.count = 0
        self.changes_in = changes_in

    def __call__(self):
        self.count += 1
        return f"v{self.count}".encode(), self.changes_in


@pytest.fixture()
def clock():
    return Clock()


def test_an_answer_is_rendered_once_while_it_holds_and_again_after(clock):
    cache, render = AnswerCache(1.0, clock=clock), Renders()
    assert cache.get("drop", render).body == b"v1"
    clock.now += 0.99
    assert cache.get("drop", render).body == b"v1"
    clock.now += 0.01
    assert cache.get("drop", render).body == b"v2"
    assert render.count == 2


def test_an_answer_never_holds_past_its_change_by_the_clock(clock):
    cache, render = AnswerCache(1.0, clock=clock), Renders(changes_in=0.25)
    answer = cache.get("drop", render)
    assert answer.fresh_until == pytest.approx(100.25)
    clock.now += 0.25
    assert cache.get("drop", render).body == b"v2"


def test_an_answer_already_due_to_change_is_not_kept(clock):
    cache, render = AnswerCache(1.0, clock=clock), Renders(changes_in=-3)
    cache.get("drop", render)
    cache.get("drop", render)
    assert render.count == 2


def test_keys_are_kept_apart(clock):
    cache = AnswerCache(1.0, clock=clock)
    assert cache.get("a", lambda: (b"A", None)).body == b"A"
    assert cache.get("b", lambda: (b"B", None)).body == b"B"
    assert cache.get("a", Renders()).body == b"A"


def test_a_reader_asking_for_a_fresh_answer_renders_it_and_refreshes_the_copy(clock):
    cache, render = AnswerCache(1.0, clock=clock), Renders()
    cache.get("drop", render)
    assert cache.get("drop", render, fresh=True).body == b"v2"
    assert cache.get("drop", render).body == b"v2"
    assert render.count == 2


def test_while_one_reader_renders_an_expired_answer_the_others_keep_the_old_one(clock):
    cache, render = AnswerCache(1.0, clock=clock), Renders()
    cache.get("drop", render)
    clock.now += 1.5
    seen_meanwhile = []

    def slow_render():
        seen_meanwhile.append(cache.get("drop", render).body)  # a second reader, during the render
        return b"new", None

    assert cache.get("drop", slow_render).body == b"new"
    assert seen_meanwhile == [b"v1"] and render.count == 1


def test_an_expired_answer_is_not_kept_for_others_past_its_change_by_the_clock(clock):
    cache = AnswerCache(1.0, clock=clock, wait_seconds=0.01)  # the second reader, on this thread, cannot wait
    cache.get("drop", lambda: (b"scheduled", 0.5))  # the drop opens in 0.5 s
    clock.now += 0.6
    seen_meanwhile = []

    def slow_render():
        seen_meanwhile.append(cache.get("drop", lambda: (b"open, read by the second reader", None)).body)
        return b"open", None

    cache.get("drop", slow_render)
    assert seen_meanwhile == [b"open, read by the second reader"]


def test_an_expired_answer_is_kept_for_others_at_most_one_more_period(clock):
    cache = AnswerCache(1.0, clock=clock, wait_seconds=0.01)  # the second reader, on this thread, cannot wait
    cache.get("drop", lambda: (b"old", None))
    clock.now += 2.5  # a render has taken 0.5 s longer than the answer may be stale

    def stuck_render():
        return cache.get("drop", lambda: (b"second reader's", None)).body, None

    assert cache.get("drop", stuck_render).body == b"second reader's"


def test_a_failed_render_leaves_no_answer_behind(clock):
    cache = AnswerCache(1.0, clock=clock)
    cache.get("drop", lambda: (b"old", None))
    clock.now += 1.5

    def failing():
        raise ConnectionError("the database is down")

    with pytest.raises(ConnectionError):
        cache.get("drop", failing)
    assert cache.get("drop", lambda: (b"new", None)).body == b"new"


def test_a_failed_fresh_render_keeps_the_copy_others_are_served(clock):
    cache = AnswerCache(1.0, clock=clock)
    cache.get("drop", lambda: (b"copy", None))

    def failing():
        raise ConnectionError("the database is down")

    with pytest.raises(ConnectionError):
        cache.get("drop", failing, fresh=True)
    assert cache.get("drop", Renders()).body == b"copy"


def test_the_oldest_key_goes_when_the_cache_is_full(clock):
    cache = AnswerCache(1.0, most=2, clock=clock)
    for key in "abc":
        cache.get(key, lambda key=key: (key.encode(), None))
    render = Renders()
    assert [cache.get(key, render).body for key in "cb"] == [b"c", b"b"]
    assert cache.get("a", render).body == b"v1"


def test_a_forgotten_answer_is_rendered_again(clock):
    cache, render = AnswerCache(1.0, clock=clock), Renders()
    cache.get("drop", render)
    cache.forget("drop")
    assert cache.get("drop", render).body == b"v2"


def test_no_max_age_means_every_read_is_rendered(clock):
    cache, render = AnswerCache(0.0, clock=clock), Renders()
    assert [cache.get("drop", render).body for _ in range(3)] == [b"v1", b"v2", b"v3"]


def test_a_crowd_of_threads_renders_an_expired_answer_once(clock):
    cache = AnswerCache(1.0, clock=clock)
    cache.get("drop", lambda: (b"old", None))
    clock.now += 1.5
    renders, answers = crowd(cache, "drop", 16, b"new", held_until=lambda renders, answers: len(answers) == 15)
    assert len(renders) == 1
    assert sorted(answers) == [b"new"] + [b"old"] * 15


def crowd(cache: AnswerCache, key: str, readers: int, body: bytes,
          held_until=lambda renders, answers: len(renders) == 1) -> tuple[list, list]:
    """`readers` threads read `key` at once while the one render is held up until
    `held_until(renders, answers)` (by default: until it has begun); the renders made and the
    answers read."""
    release, renders, answers = threading.Event(), [], []

    def render():
        renders.append(1)
        assert release.wait(10)
        return body, None

    threads = [threading.Thread(target=lambda: answers.append(cache.get(key, render).body)) for _ in range(readers)]
    for thread in threads:
        thread.start()
    poll(lambda: held_until(renders, answers), timeout=10, what="the readers the held render lets through")
    release.set()
    for thread in threads:
        thread.join(10)
    return renders, answers


def test_readers_with_no_copy_to_serve_wait_for_the_one_render(clock):
    renders, answers = crowd(AnswerCache(1.0, clock=clock), "new drop", 16, b"first")
    assert len(renders) == 1 and answers == [b"first"] * 16


def test_at_a_change_by_the_clock_the_crowd_waits_for_one_render_not_a_herd(clock):
    cache = AnswerCache(1.0, clock=clock)
    cache.get("drop", lambda: (b"scheduled", 0.5))
    clock.now += 0.5  # the opening: the old copy may not be served any more
    renders, answers = crowd(cache, "drop", 8, b"open")
    assert len(renders) == 1 and answers == [b"open"] * 8


def test_when_the_render_a_crowd_waits_for_fails_one_reader_renders_again_not_all(clock):
    cache = AnswerCache(1.0, clock=clock)
    failing, changed = threading.Event(), threading.Condition()
    renders, at_once, most_at_once, answers = [], [0], [0], []

    def render():
        with changed:
            renders.append(1)
            at_once[0] += 1
            most_at_once[0] = max(most_at_once[0], at_once[0])
            first = len(renders) == 1
            changed.notify_all()
        try:
            if first:
                assert failing.wait(10)
                raise ConnectionError("the database blinked")
            # the next render lasts until another begins beside it, or half a second: two at
            # once are seen when they happen
            with changed:
                changed.wait_for(lambda: at_once[0] > 1, timeout=0.5)
            return b"open", None
        finally:
            with changed:
                at_once[0] -= 1

    def read():
        try:
            answers.append(cache.get("drop", render).body)
        except ConnectionError:
            answers.append(None)

    threads = [threading.Thread(target=read) for _ in range(12)]
    for thread in threads:
        thread.start()
    poll(lambda: len(renders) == 1 and len(cache._rendering) == 1, what="the first render to begin")
    failing.set()
    for thread in threads:
        thread.join(10)
    assert answers.count(None) == 1 and answers.count(b"open") == 11  # the failed render's reader is told
    assert most_at_once[0] == 1 and len(renders) == 2  # then one render, not eleven


def test_a_reader_that_waited_too_long_renders_for_itself(clock):
    cache = AnswerCache(1.0, clock=clock, wait_seconds=0.01)
    rendering, release = threading.Event(), threading.Event()

    def stuck_render():
        rendering.set()
        release.wait(10)
        return b"late", None

    stuck = threading.Thread(target=lambda: cache.get("drop", stuck_render))
    stuck.start()
    assert rendering.wait(10)
    assert cache.get("drop", lambda: (b"own", None)).body == b"own"
    release.set()
    stuck.join(10)


def test_a_render_under_way_when_the_answer_was_forgotten_is_not_kept(clock):
    cache = AnswerCache(1.0, clock=clock)

    def render_across_a_change():
        cache.forget("drop")  # an admin's change commits while this read is under way
        return b"before the change", None

    assert cache.get("drop", render_across_a_change).body == b"before the change"
    assert cache.get("drop", lambda: (b"after the change", None)).body == b"after the change"


# --- served over HTTP -------------------------------------------------------------------------

SERVICE_KEY = "unit-test-service-key"


def public_app(cache: AnswerCache, changes_in=None):
    app = Flask(__name__)
    app.extensions["floodgate.auth"] = (None, SERVICE_KEY)
    renders = []

    @app.get("/drops/<key>")
    def show(key):
        def render():
            renders.append(key)
            return {"key": key, "render": len(renders)}, changes_in
        return public_answer(cache, key, render)

    return app.test_client(), renders


def test_a_public_answer_says_how_long_a_cdn_may_keep_it(clock):
    client, _ = public_app(AnswerCache(1.0, clock=clock))
    first = client.get("/drops/d1")
    assert first.status_code == 200 and first.mimetype == "application/json"
    assert json.loads(first.data) == {"key": "d1", "render": 1}
    assert first.headers["Cache-Control"] == "public, max-age=1"


def test_a_cdn_is_never_told_to_keep_an_answer_past_its_change_by_the_clock(clock):
    client, _ = public_app(AnswerCache(1.0, clock=clock), changes_in=1.2)
    assert client.get("/drops/d1").headers["Cache-Control"] == "public, max-age=1"
    clock.now += 0.9  # the copy still holds, and the drop opens in 0.3 s
    assert client.get("/drops/d1").headers["Cache-Control"] == "public, max-age=0"


def test_a_browsers_no_cache_does_not_bypass_the_copy(clock):
    client, renders = public_app(AnswerCache(1.0, clock=clock))
    client.get("/drops/d1")
    for asked in ({"Cache-Control": "no-cache", "Pragma": "no-cache"}, {"Cache-Control": "max-age=0"},
                  {"X-Service-Key": "a guess"}):
        assert json.loads(client.get("/drops/d1", headers=asked).data)["render"] == 1
    assert len(renders) == 1


def test_the_service_key_reads_the_figures_of_this_instant(clock):
    client, renders = public_app(AnswerCache(1.0, clock=clock))
    client.get("/drops/d1")
    assert json.loads(client.get("/drops/d1", headers={"X-Service-Key": SERVICE_KEY}).data)["render"] == 2
    assert json.loads(client.get("/drops/d1").data)["render"] == 2  # and refreshed the copy
