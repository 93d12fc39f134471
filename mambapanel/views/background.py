"""Work a served page can do without for now (the Overview tab, drawn before it is opened),
done when the server has nothing more pressing: one piece at a time, only while no served
page waits for its first render, and only on a server of a few open pages (:data:`FEW`).

Done at once on every page instead, ten users arriving together paid for it: the server
used 53-65 CPU s a round instead of 30-46, for first renders no better (38-48 s against
35-46 s; ``benchmarks/bench_dashboard.py --sessions 10``, benchmarks/RESULTS.md). A page
counts as drawn once Panel's ``onload`` has run for it, which comes before the views are
drawn where the browser drew the page's loading indicator before the dashboard was built
into it (:func:`mambapanel.views.serve.served`): hence the limit on open pages too.

:data:`BACKGROUND` is the process's queue: :func:`mambapanel.views.serve.served` tells it
which pages are still to be drawn (:meth:`Background.expect`), the views give it work
(:func:`later`). Each piece runs in a callback of its own session, with Panel's state set to
it; a session that ends takes its pieces with it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from functools import partial

import panel as pn
from bokeh.document import Document
from panel.io.state import set_curdoc

log = logging.getLogger(__name__)

Onload = Callable[[Document, Callable[[], None]], None]

FEW = 2  # background work runs while at most this many served pages are open


def panel_onload(doc: Document, callback: Callable[[], None]) -> None:
    """``callback()`` once the browser has drawn ``doc`` (Panel's ``onload``; at once where
    it has already)."""
    with set_curdoc(doc):
        pn.state.onload(callback)


def in_session(doc: Document | None) -> bool:
    """Whether ``doc`` is the document of a served session (not a notebook's, not None)."""
    return doc is not None and doc.session_context is not None


class Background:
    """The process's background work: pieces queued per session, run in order, one at a
    time, while no page expected by :meth:`expect` is still being drawn and at most ``few``
    of them are open."""

    def __init__(self, onload: Onload = panel_onload, few: int = FEW) -> None:
        self._onload, self._few = onload, few
        self._open: set[Document] = set()  # served pages whose session has not ended
        self._waiting: set[Document] = set()  # pages whose first render is under way
        self._queue: deque[tuple[Document, Callable[[], None]]] = deque()
        self._running: Document | None = None  # the session of the piece scheduled to run

    @property
    def waiting(self) -> int:
        """Served pages still being drawn for the first time."""
        return len(self._waiting)

    @property
    def queued(self) -> int:
        """Pieces waiting to run."""
        return len(self._queue)

    def expect(self, doc: Document) -> None:
        """``doc`` is a page being drawn: background work waits until it is drawn (or its
        session ends)."""
        self._open.add(doc)
        self._waiting.add(doc)
        doc.on_session_destroyed(lambda _context: self._ended(doc))
        self._onload(doc, lambda: self._drawn(doc))

    def later(self, doc: Document, callback: Callable[[], None]) -> None:
        """Run ``callback()`` in a callback of ``doc``'s session once ``doc`` is drawn and
        the server is otherwise free; never, if the session ends first. A failure is logged."""
        self._onload(doc, lambda: self._add(doc, callback))

    def _add(self, doc: Document, callback: Callable[[], None]) -> None:
        self._queue.append((doc, callback))
        self._next()

    def _drawn(self, doc: Document) -> None:
        self._waiting.discard(doc)
        self._next()

    def _ended(self, doc: Document) -> None:
        self._open.discard(doc)
        self._waiting.discard(doc)
        self._queue = deque(piece for piece in self._queue if piece[0] is not doc)
        if self._running is doc:  # its callback will not run: free the queue
            self._running = None
        self._next()

    def _next(self) -> None:
        """Schedule the next piece, if nothing runs, no page waits and few are open."""
        if self._running is not None or self._waiting or len(self._open) > self._few:
            return
        while self._queue:
            doc, callback = self._queue.popleft()
            if in_session(doc):
                self._running = doc
                doc.add_next_tick_callback(partial(self._run, doc, callback))
                return

    def _run(self, doc: Document, callback: Callable[[], None]) -> None:
        try:
            if in_session(doc):
                with set_curdoc(doc):
                    callback()
        except Exception:
            log.exception("mambapanel: background work of a page failed")
        finally:
            if self._running is doc:
                self._running = None
            self._next()


BACKGROUND = Background()


def later(callback: Callable[[], None]) -> bool:
    """On a served page (Panel's current document), queue ``callback`` on :data:`BACKGROUND`
    and say True; elsewhere (a notebook, a test) do nothing and say False: the caller does
    the work when it is asked for."""
    doc = pn.state.curdoc
    if not in_session(doc):
        return False
    BACKGROUND.later(doc, callback)
    return True
