"""The served page's quick start (mambapanel.views.serve): the script imports Panel alone,
the imports run on the event loop, and outside a served session the dashboard is built at
once. The served path itself (loading indicator, then the dashboard) is driven in Chromium
by tests/ui: every page there goes through it."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["holoviews", "pandas", "zarr", "xarray", "mambapanel.views.app"]


def run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return result.stdout.decode().strip()


def test_the_script_imports_panel_alone():
    """What lets the page answer before HoloViews and the views are imported."""
    code = (
        "import sys; import mambapanel.views.serve; "
        f"print(sorted(set({HEAVY!r}) & set(sys.modules)))"
    )
    assert run(code) == "[]"


def test_the_imports_run_on_the_loop_once():
    code = f"""
import asyncio, gc, sys
from mambapanel.views.serve import IMPORTS, start_imports

async def main():
    imports = start_imports()
    assert start_imports() is imports  # one task for every session of the process
    before = sorted(set({HEAVY!r}) & set(sys.modules))
    await imports
    print(before, [name for name in IMPORTS if name not in sys.modules], gc.isenabled())

asyncio.run(main())
"""
    # Nothing is imported when the task starts; everything once it is done, and the garbage
    # collector, off meanwhile, is on again.
    assert run(code) == "[] [] True"


def test_outside_a_session_the_dashboard_is_built_at_once(small_run):
    """A notebook runs an event loop too: without a served session nothing is deferred and
    no import task starts."""
    code = f"""
import asyncio
from mambapanel.views import serve

async def main():
    page = serve.served([{str(small_run)!r}], stage=1, block=0)
    print(type(page).__name__, page.stage, page.block, serve._imports)

asyncio.run(main())
"""
    assert run(code) == "Explorer 1 0 None"


def test_a_bad_run_is_named(tmp_path):
    code = f"""
from mambapanel.views.serve import served

print(served([{str(tmp_path / "nowhere")!r}])[1].object)
"""
    assert "nowhere" in run(code)


def test_a_message_after_its_session_ended_logs_no_traceback():
    """Bokeh asserts that a connection still has a session when a browser's message arrives
    (a figure resized while its page left): that record is dropped, other errors are not."""
    import logging
    import sys

    from bokeh.server.connection import ServerConnection

    from mambapanel.views.serve import SESSION_GONE

    connection = ServerConnection.__new__(ServerConnection)
    connection._session = None
    try:
        connection.session  # noqa: B018 -- the property raises
    except AssertionError:
        gone = sys.exc_info()
    try:
        raise AssertionError("something else")
    except AssertionError:
        other = sys.exc_info()

    def record(exc_info):
        return logging.LogRecord("bokeh", logging.ERROR, __file__, 1, "error", (), exc_info)

    assert not SESSION_GONE.filter(record(gone))
    assert SESSION_GONE.filter(record(other))
    assert SESSION_GONE.filter(record(None))
