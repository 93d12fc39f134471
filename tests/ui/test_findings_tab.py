"""The Findings tab in Chromium: every figure of every run's tab is drawn at a real size, with
its curves, and apart from the others (on the demo runs, which store findings)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from demo_runs import NAMES
from playwright.sync_api import Page
from served import ARTIFACTS, Server
from test_dashboard import TIMEOUT_MS, figure

from mambapanel.views.data import RunData
from mambapanel.views.findings import PROFILES

pytestmark = [pytest.mark.ui, pytest.mark.slow, pytest.mark.timeout(600)]

# Every Bokeh figure inside the Findings tab (not the Explore tab's), as drawn: its frame (the
# plotting area) and canvas in page pixels, and the number of data points of each glyph.
FINDINGS_FIGURES_JS = """() => {
  const views = [...Bokeh.index.all_views()];
  const tabs = views.find((v) => v.model.tabs && v.model.tabs.some((t) => t.title === "Findings"));
  if (!tabs) return [];
  const content = tabs.model.tabs.find((t) => t.title === "Findings").child;
  const onTab = (view) => {
    for (let up = view; up; up = up.parent) if (up.model === content) return true;
    return false;
  };
  return views.filter((v) => v.model.type === "Figure" && onTab(v)).map((v) => {
    const canvas = v.canvas_view.el.getBoundingClientRect();
    return {
      title: v.model.title ? v.model.title.text : "",
      frame: [v.frame.bbox.width, v.frame.bbox.height],
      canvas: [canvas.left, canvas.top, canvas.width, canvas.height],
      glyphs: v.model.renderers.filter((r) => r.data_source).map((r) => {
        const data = r.data_source.data;
        const column = data.x ?? data.xs ?? Object.values(data)[0] ?? [];
        return [r.glyph.type, column.length];
      }),
    };
  });
}"""
MIN_FRAME_PX = 150  # a plotting area a reader can read curves in


@pytest.fixture(scope="module")
def findings_server(demo_runs: Path) -> Iterator[Server]:
    server = Server("explorer", *(str(demo_runs / name) for name in NAMES))
    yield server
    server.stop()


def lines(drawn: dict) -> list[int]:
    """The number of points of each line a figure draws."""
    return [n for glyph, n in drawn["glyphs"] if glyph == "Line"]


def drawn_figures(page: Page, expected: int, n_blocks: int) -> list[dict]:
    """The Findings tab's figures once ``expected`` of them are drawn at a real size with a
    line per block (a run tab's, not the one shown before it); the last state seen if they
    never are, for the assertions to show."""
    shown: list[dict] = []
    for _ in range(TIMEOUT_MS // 250):
        shown = page.evaluate(FINDINGS_FIGURES_JS)
        if len(shown) == expected and all(
            min(f["frame"]) >= MIN_FRAME_PX and len(lines(f)) == n_blocks for f in shown
        ):
            break
        page.wait_for_timeout(250)
    return shown


def test_every_findings_figure_is_drawn_with_its_curves(
    page: Page, findings_server: Server, demo_runs: Path
) -> None:
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{findings_server.url}?stage=0")
    figure(page, "patch-view")
    page.locator(".bk-tab", has_text=re.compile("^Findings$")).click()
    for name in NAMES:
        page.locator(".bk-tab", has_text=re.compile(f"^{re.escape(name)}$")).click()
        stored = RunData(demo_runs / name).findings().stages[0]
        profiles = [profile for profile, *_ in PROFILES if profile in stored]
        assert profiles, f"the demo run {name} stores no locality profile at stage 0"
        shown = drawn_figures(page, len(profiles), stored.sizes["block"])
        page.screenshot(path=ARTIFACTS / f"findings-{name}.png", full_page=True)
        assert len(shown) == len(profiles), shown
        for drawn in shown:
            assert min(drawn["frame"]) >= MIN_FRAME_PX, drawn
            # One curve per block, each with a point per distance.
            assert len(lines(drawn)) == stored.sizes["block"] and min(lines(drawn)) > 1, drawn
        # Side by side or stacked, never on top of each other.
        for index, first in enumerate(shown):
            for second in shown[index + 1 :]:
                (x0, y0, w0, h0), (x1, y1, w1, h1) = first["canvas"], second["canvas"]
                assert x0 + w0 <= x1 or x1 + w1 <= x0 or y0 + h0 <= y1 or y1 + h1 <= y0
