"""A served page that answers at once: what ``dashboards/*.py`` call.

A session's page is sent to the browser only when its script has run. Had the script built
the dashboard itself, the first session of a fresh ``panel serve`` would spend seconds
importing pandas, HoloViews, zarr and the views and building the figures while the browser
waits for the page; then the browser would load Bokeh's JavaScript while the server waits
for it.

:func:`served` overlaps the two. The script returns a page holding a loading indicator, and
the imports start on the server's event loop, one module at a time, so that the browser's
requests for the JavaScript are answered in between; as soon as they are done, a callback of
the session builds the dashboard into the page, most often before the browser asks for the
document. ``python benchmarks/bench_dashboard.py`` measures both ways (benchmarks/RESULTS.md).

Why not a thread: one importing HoloViews while Panel's own code imports a part of it
(``panel.util.checks.is_holoviews``) can meet a partly initialised module; that happened.
Why not ``defer_load``: it builds only once the browser has loaded the page, which is later.

This module imports Panel alone (``mambapanel.views`` imports its names lazily for it).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import importlib
import logging
from collections.abc import Sequence
from html import escape
from pathlib import Path

import panel as pn
from panel.io.state import set_curdoc

from mambapanel.views.background import BACKGROUND, in_session

log = logging.getLogger(__name__)

# What a dashboard imports beyond Panel, heaviest first; the last one brings the rest.
IMPORTS = (
    "pandas",
    "holoviews",
    "holoviews.plotting.bokeh",
    "zarr",
    "mambapanel.views.app",
)

TITLE = "mambapanel: hidden attention of vision Mamba models"
SIDEBAR_WIDTH = 300  # pixels: the controls, two narrow menus a line

_imports: asyncio.Task | None = None


async def _import_all() -> None:
    # The collector would scan the modules' new objects again and again, to find no
    # garbage. Not frozen afterwards (gc.freeze): that would also freeze the first session's
    # page, built meanwhile, and a frozen object is never collected, nor anything it refers
    # to: that session's whole dashboard, once it ends.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for name in IMPORTS:
            importlib.import_module(name)
            await asyncio.sleep(0)  # answer the browser's requests between two imports
        _start_zarr_io()
    finally:
        if collecting:
            gc.enable()


def _start_zarr_io() -> None:
    """Start zarr's IO thread now, in the import task's empty context. zarr makes the event
    loop of that thread on first use, and the loop keeps the context it was made in: made
    while a session built its dashboard, it kept that session's document (Panel's curdoc)
    and so its whole dashboard alive for good."""
    import zarr

    zarr.open_group(zarr.storage.MemoryStore(), mode="w")


def _quiet_closed_websockets(loop: asyncio.AbstractEventLoop) -> None:
    """A browser that leaves while the server writes to it is not an error: each write
    tornado had started then fails with a closed-socket error that nothing collects
    (Panel drops the writes of a session that ends), and asyncio logged every one of them
    as a "Task exception was never retrieved" traceback. Other errors are logged as before."""
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    handler = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if isinstance(context.get("exception"), WebSocketClosedError | StreamClosedError):
            log.debug("mambapanel: a browser left while the server wrote to it")
        elif handler is not None:
            handler(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


class _SessionGone(logging.Filter):
    """A message that arrives from a browser after its session ended (a figure's size
    changed while the page was leaving) is not an error either: Bokeh asserts that the
    connection still has a session and logs the assertion with a traceback, twice (the
    message, then the websocket's close). Those records go; the rest pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, AssertionError) and _raised_by_session_lookup(error):
            log.debug("mambapanel: a message came after its session ended")
            return False
        return True


def _raised_by_session_lookup(error: BaseException) -> bool:
    """Whether ``error`` was raised by ``ServerConnection.session`` (bokeh/server/connection.py)."""
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    if trace is None:
        return False
    code = trace.tb_frame.f_code
    return code.co_name == "session" and Path(code.co_filename).parts[-3:] == (
        "bokeh",
        "server",
        "connection.py",
    )


SESSION_GONE = _SessionGone()


def _quiet_ended_sessions() -> None:
    """Install :class:`_SessionGone` where Bokeh and tornado log such records (once)."""
    for name in ("bokeh.server.protocol_handler", "tornado.application"):
        logger = logging.getLogger(name)
        if SESSION_GONE not in logger.filters:
            logger.addFilter(SESSION_GONE)


def start_imports() -> asyncio.Task | None:
    """Start the imports on the running event loop (once per process); None where no loop
    runs (a plain script, a test): the dashboard then imports them when built."""
    global _imports
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if _imports is None or _imports.get_loop() is not loop:
        _quiet_closed_websockets(loop)
        _quiet_ended_sessions()
        # In an empty context: the task outlives the session that starts it, and the
        # session's context holds its document (Panel's curdoc).
        _imports = loop.create_task(_import_all(), context=contextvars.Context())
    return _imports


def served(paths: Sequence[str], **params: object) -> pn.viewable.Viewable:
    """:func:`mambapanel.views.dashboard` of ``paths`` and ``params``. In a served session,
    a page (a template) with the controls in its sidebar and the views in
    its main area, which holds a loading indicator until the imports are done; elsewhere (a
    test, a notebook) the dashboard itself."""
    paths = list(paths)  # `sys.argv` is the script's only while it runs
    doc = pn.state.curdoc
    session = in_session(doc)  # not a notebook
    imports = start_imports() if session else None
    if session:
        # Declares the page's Panel extensions (none): without it the page also loads those
        # of every Panel model imported, Tabulator's half a megabyte of JavaScript among them.
        pn.extension()
    if imports is None:
        from mambapanel.views.app import dashboard

        return dashboard(paths, **params)
    sidebar = pn.Column(sizing_mode="stretch_width")
    main = pn.Column(
        pn.indicators.LoadingSpinner(value=True, size=32, name="Loading the dashboard ..."),
        sizing_mode="stretch_width",
    )
    # Bootstrap's template: its stylesheets and scripts are served by Panel (the Fast
    # templates ask Google for a font), so the page works without a network.
    page = pn.template.BootstrapTemplate(
        title=TITLE, sidebar=[sidebar], main=[main], sidebar_width=SIDEBAR_WIDTH
    )
    BACKGROUND.expect(doc)  # background work waits until this page is drawn

    def fill() -> None:  # a callback of the session: it holds the document's lock
        with set_curdoc(doc):
            try:
                imports.result()
                from mambapanel.views.app import dashboard_parts

                sidebar[:], main[:] = dashboard_parts(paths, **params)
            except Exception as err:  # shown, not only logged: the page would spin forever
                log.exception("mambapanel: the dashboard could not be built")
                message = escape(f"mambapanel: the dashboard failed: {err!r}")
                main[:] = [pn.pane.Alert(message, alert_type="danger")]

    def schedule(_: asyncio.Task) -> None:
        if doc.session_context is not None:  # None: the browser left, the session ended
            doc.add_next_tick_callback(fill)

    # Built before the browser asks for the document where the imports are done by then
    # (a second session; the first one when Bokeh's JavaScript loads slowly), else after.
    imports.add_done_callback(schedule)
    return page
