"""Many users on one server: ten Chromium sessions at once (load, click a patch, change
stage, close), then forty page loads that never connect, against one counted ``panel
serve`` (tests/ui/counted_serve.py). A closed session's dashboard is released, memory stays
on its plateau, the figures do not move under a click, and a browser that leaves while its
dashboard is built leaves no traceback in the log."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Browser
from served import Server
from test_dashboard import TIMEOUT_MS, click_patch, figure, select_option, wait_for_figure

pytestmark = [pytest.mark.ui, pytest.mark.slow, pytest.mark.timeout(600)]

USERS = 10
PAGE_LOADS = 20  # per round, two rounds
PLATEAU_MB = 4  # what a round of page loads may add once memory is on its plateau
DRAWN_MS = 120_000  # ten first renders at once on a busy 2-core machine: a hang, not a time
# Each page records where the patch view's frame is drawn, whenever that changes.
DRAWN_JS = """() => window.Bokeh && ["scatterplot", "patch-view", "image-view"].every(
  (name) => [...Bokeh.index.all_views()].some((view) => view.model.name === name))"""
RECORD_POSITIONS_JS = """
window.positions = [];
setInterval(() => {
  if (!window.Bokeh) return;
  const view = [...Bokeh.index.all_views()].find((v) => v.model.name === "patch-view");
  if (!view) return;
  const canvas = view.canvas_view.el.getBoundingClientRect();
  const at = [canvas.left + view.frame.bbox.left, canvas.top + view.frame.bbox.top];
  const last = window.positions[window.positions.length - 1];
  if (!last || last[0] !== at[0] || last[1] !== at[1]) window.positions.push(at);
}, 20);
"""


def ended(server: Server) -> dict[str, int]:
    """The server's count once every session has ended and its dashboard is released, or
    the last count after half a minute. Not at once: a browser's closing websocket may reach
    the server after its page has closed, and a callback the server had scheduled for a
    session holds its dashboard until it has run (and found the session gone)."""
    for _ in range(60):
        counted = server.count()
        if counted == {"sessions": 0, "explorers": 0}:
            break
        time.sleep(0.5)
    return counted


def settle(server: Server) -> None:
    """Wait until the server is idle: the dashboards of the page loads are built."""
    process = psutil.Process(server.process.pid)
    for _ in range(120):
        if process.cpu_percent(interval=0.5) < 5:
            return
    raise AssertionError("the server stayed busy for a minute")


def test_closed_sessions_leave_nothing_behind(browser: Browser, small_run: Path) -> None:
    server = Server("explorer", str(small_run), counted=True)
    try:
        # A browser that leaves at once: its session ends while the server still imports.
        leaving = browser.new_page()
        leaving.goto(server.url, wait_until="commit")
        leaving.close()
        assert ended(server) == {"sessions": 0, "explorers": 0}

        users = []
        for _ in range(USERS):
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            context.add_init_script(RECORD_POSITIONS_JS)
            users.append(context.new_page())
        for page in users:  # ten page loads at once, as ten users would start them
            page.evaluate(f"location.href = '{server.url}?stage=1&block=0&method=pca'")
        for user, page in enumerate(users):
            page.wait_for_function(DRAWN_JS, timeout=DRAWN_MS)
            # Still where it was first drawn, and a click lands where the user aimed.
            assert len(page.evaluate("window.positions")) == 1, page.evaluate("window.positions")
            row, col = divmod(user * 5 % 64, 8)
            click_patch(page, figure(page, "patch-view"), row, col)
        for page in users:
            select_option(page, "stage", "2")
        for page in users:
            wait_for_figure(
                page, "scatterplot", lambda shown: "stage 2 · block 0" in shown["title"],
                "the scatterplot should show stage 2",
            )  # fmt: skip
            page.context.close()
        assert ended(server) == {"sessions": 0, "explorers": 0}

        memory = []
        for _ in range(2):
            for _ in range(PAGE_LOADS):
                with urllib.request.urlopen(server.url, timeout=TIMEOUT_MS / 1000) as response:
                    assert response.status == 200
            settle(server)
            assert ended(server) == {"sessions": 0, "explorers": 0}
            memory.append(server.memory())
        assert memory[1] - memory[0] < PLATEAU_MB * 2**20, [m / 2**20 for m in memory]
    finally:
        server.stop()
    assert "Traceback" not in server.output()
