"""The background queue of served pages (mambapanel.views.background), driven with stand-in
sessions: pieces wait while a page is being drawn, run one at a time in order, and go with
their session."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from mambapanel.views.background import Background


class Session:
    """A stand-in for a served session's Bokeh document: its next-tick callbacks and its
    destroyed callbacks are kept to be run by the test; ``onload`` callbacks wait until
    :meth:`draw`, as Panel's do until the browser has drawn the page."""

    def __init__(self) -> None:
        self.session_context = object()
        self.ticks: list[Callable[[], None]] = []
        self.destroyed: list[Callable[[object], None]] = []
        self.loads: list[Callable[[], None]] = []
        self.drawn = False

    def add_next_tick_callback(self, callback: Callable[[], None]) -> None:
        self.ticks.append(callback)

    def on_session_destroyed(self, callback: Callable[[object], None]) -> None:
        self.destroyed.append(callback)

    def draw(self) -> None:
        self.drawn = True
        for callback in self.loads:
            callback()

    def tick(self) -> None:
        """Run the callbacks scheduled so far (as the session's event loop would)."""
        ticks, self.ticks = self.ticks, []
        for callback in ticks:
            callback()

    def end(self) -> None:
        self.session_context = None
        self.ticks = []  # Bokeh drops the callbacks of a session that ends
        for callback in self.destroyed:
            callback(None)


def onload(doc: Session, callback: Callable[[], None]) -> None:
    if doc.drawn:
        callback()
    else:
        doc.loads.append(callback)


@pytest.fixture
def queue() -> Background:
    return Background(onload=onload, few=2)


def test_pieces_wait_for_every_page_being_drawn_then_run_one_at_a_time(queue):
    first, second = Session(), Session()
    ran = []
    queue.expect(first)
    queue.expect(second)
    queue.later(first, lambda: ran.append("first a"))
    queue.later(first, lambda: ran.append("first b"))
    first.draw()  # its pieces are queued, but the second page is still being drawn
    assert queue.queued == 2 and queue.waiting == 1 and first.ticks == []
    second.draw()
    assert queue.waiting == 0 and len(first.ticks) == 1  # one piece scheduled, not two
    first.tick()
    assert ran == ["first a"] and len(first.ticks) == 1  # the next one after it
    first.tick()
    assert ran == ["first a", "first b"] and queue.queued == 0 and first.ticks == []


def test_a_page_arriving_holds_the_pieces_not_yet_started(queue):
    first, second = Session(), Session()
    ran = []
    queue.expect(first)
    first.draw()
    queue.later(first, lambda: ran.append("a"))
    queue.later(first, lambda: ran.append("b"))
    queue.expect(second)  # arrives while "a" is scheduled
    first.tick()
    assert ran == ["a"] and first.ticks == []  # "b" waits for the second page
    second.draw()
    first.tick()
    assert ran == ["a", "b"]


def test_an_ended_session_takes_its_pieces_and_frees_the_queue(queue):
    gone, staying = Session(), Session()
    ran = []
    for doc in (gone, staying):
        queue.expect(doc)
        doc.draw()
    queue.later(gone, lambda: ran.append("gone"))  # scheduled at once: nothing waits
    queue.later(staying, lambda: ran.append("staying"))
    assert len(gone.ticks) == 1
    gone.end()  # its scheduled piece never runs; the queue must not wait for it
    assert len(staying.ticks) == 1
    staying.tick()
    assert ran == ["staying"] and queue.queued == 0


def test_a_page_that_ends_before_it_is_drawn_does_not_hold_the_queue(queue):
    left, other = Session(), Session()
    ran = []
    queue.expect(left)
    queue.expect(other)
    other.draw()
    queue.later(other, lambda: ran.append("other"))
    left.end()
    other.tick()
    assert ran == ["other"] and queue.waiting == 0


def test_a_failing_piece_is_logged_and_the_next_runs(queue, caplog):
    doc = Session()
    queue.expect(doc)
    doc.draw()
    ran = []
    queue.later(doc, lambda: 1 / 0)
    queue.later(doc, lambda: ran.append("next"))
    with caplog.at_level(logging.ERROR, logger="mambapanel.views.background"):
        doc.tick()
    assert "background work of a page failed" in caplog.text
    assert "ZeroDivisionError" in caplog.text
    doc.tick()
    assert ran == ["next"]


def test_pieces_wait_while_more_than_a_few_pages_are_open(queue):
    pages = [Session() for _ in range(3)]
    ran = []
    for doc in pages:
        queue.expect(doc)
        doc.draw()
    queue.later(pages[0], lambda: ran.append("first"))
    assert pages[0].ticks == [] and queue.queued == 1  # three open: more than two
    pages[2].end()
    pages[0].tick()
    assert ran == ["first"]
