"""``panel serve`` run in this process, for the tests that count what served sessions leave
behind (tests/ui/test_sessions.py): ``python tests/ui/counted_serve.py SERVE-ARGS ...``.

A line ``count`` on stdin makes it end the sessions that no browser is connected to (what
Bokeh does by itself after ``--unused-session-lifetime``; the tests do not wait that long),
collect garbage and print one JSON line: ``{"sessions": live sessions, "explorers": live
Explorer objects}``. The server's resident memory is read from outside (psutil).

Counted here, in a fresh process of its own, not in the test process: what a served
session can be kept alive by includes state made once per process (an event loop made
during the first session held that session's document), which a test process that has
read runs before would not show.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import threading

from bokeh.server.contexts import ApplicationContext
from panel.command import main


async def report() -> None:
    contexts = [item for item in gc.get_objects() if isinstance(item, ApplicationContext)]
    for context in contexts:
        # Bokeh's own periodic clean-up, with no lifetime: every session without a
        # connection ends now (a private method: Bokeh offers no public one).
        await context._cleanup_sessions(0)
    gc.collect()
    explorers = sum(
        type(item).__qualname__ == "Explorer"
        and type(item).__module__ == "mambapanel.views.explorer"
        for item in gc.get_objects()
    )
    sessions = sum(len(list(context.sessions)) for context in contexts)
    print(json.dumps({"sessions": sessions, "explorers": explorers}), flush=True)


def answer(loop: asyncio.AbstractEventLoop) -> None:
    for line in sys.stdin:
        if line.strip() == "count":
            asyncio.run_coroutine_threadsafe(report(), loop).result()


if __name__ == "__main__":
    # The loop the server will run on (Bokeh's server takes the current one), for the thread
    # that reads stdin to hand its work to.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    threading.Thread(target=answer, args=(loop,), daemon=True).start()
    sys.argv = ["panel", *sys.argv[1:]]
    main()
