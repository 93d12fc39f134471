"""A served page that answers at once: what ``dashboards/*.py`` call.

A session's page is sent to the browser only when its script has run. Had the script built
the dashboard itself, the first session of a fresh ``panel serve`` would spend 2-2.5 s
importing pandas, HoloViews, zarr and the views and building the figures while the browser
waits for the page; then the browser would load Bokeh's JavaScript (0.5-1 s) while the
server waits for it.

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
import gc
import importlib
import logging
from collections.abc import Sequence

import panel as pn
from panel.io.state import set_curdoc

log = logging.getLogger(__name__)

# What a dashboard imports beyond Panel, heaviest first; the last one brings the rest.
IMPORTS = (
    "pandas",
    "holoviews",
    "holoviews.plotting.bokeh",
    "zarr",
    "mambapanel.views.app",
)

_imports: asyncio.Task | None = None


async def _import_all() -> None:
    # The collector would scan the modules' new objects again and again (0.1-0.2 s of the
    # imports here) to find no garbage; frozen afterwards, later full collections skip them.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for name in IMPORTS:
            importlib.import_module(name)
            await asyncio.sleep(0)  # answer the browser's requests between two imports
    finally:
        if collecting:
            gc.enable()
        gc.freeze()


def start_imports() -> asyncio.Task | None:
    """Start the imports on the running event loop (once per process); None where no loop
    runs (a plain script, a test): the dashboard then imports them when built."""
    global _imports
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if _imports is None or _imports.get_loop() is not loop:
        _imports = loop.create_task(_import_all())
    return _imports


def served(paths: Sequence[str], **params: object) -> pn.viewable.Viewable:
    """:func:`mambapanel.views.dashboard` of ``paths`` and ``params``. In a served session,
    a loading indicator at first, replaced by the dashboard as soon as the imports are done;
    elsewhere (a test, a notebook) the dashboard itself."""
    paths = list(paths)  # `sys.argv` is the script's only while it runs
    doc = pn.state.curdoc
    in_session = doc is not None and doc.session_context is not None  # not a notebook
    imports = start_imports() if in_session else None
    if imports is None:
        from mambapanel.views.app import dashboard

        return dashboard(paths, **params)
    page = pn.Column(
        pn.indicators.LoadingSpinner(value=True, size=32, name="Loading the dashboard ...")
    )

    def fill() -> None:  # a callback of the session: it holds the document's lock
        with set_curdoc(doc):
            try:
                imports.result()
                from mambapanel.views.app import dashboard

                page[:] = [dashboard(paths, **params)]
            except Exception as err:  # shown, not only logged: the page would spin forever
                log.exception("mambapanel: the dashboard could not be built")
                page[:] = [pn.pane.Alert(f"mambapanel: the dashboard failed: {err!r}")]

    # Built before the browser asks for the document where the imports are done by then
    # (a second session; the first one when Bokeh's JavaScript loads slowly), else after.
    imports.add_done_callback(lambda _: doc.add_next_tick_callback(fill))
    return page
