"""The compare page in Chromium: after a tap on a Mode 1 point opens a block, each side's
scatterplot frames the block's own points (read from Bokeh's models in the page)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from served import ARTIFACTS, Server
from test_dashboard import TIMEOUT_MS, figure, to_page

from mambapanel.views.scatter import padded_range

pytestmark = [pytest.mark.ui, pytest.mark.slow, pytest.mark.timeout(600)]

# Both scatterplots, left first, as drawn: frame in page pixels, axis ranges, title and the
# points of the first Scatter glyph (the second is the selection's highlight).
SCATTERPLOTS_JS = """() => [...Bokeh.index.all_views()]
  .filter((v) => v.model.name === "scatterplot" && v.canvas_view)
  .map((v) => {
    const canvas = v.canvas_view.el.getBoundingClientRect();
    const points = v.model.renderers.find((r) => r.glyph && r.glyph.type === "Scatter");
    return {
      left: canvas.left + v.frame.bbox.left, top: canvas.top + v.frame.bbox.top,
      width: v.frame.bbox.width, height: v.frame.bbox.height,
      x: [v.model.x_range.start, v.model.x_range.end],
      y: [v.model.y_range.start, v.model.y_range.end],
      title: v.model.title.text,
      points_x: points ? Array.from(points.data_source.data.x) : [],
      points_y: points ? Array.from(points.data_source.data.y) : [],
    };
  })
  .sort((a, b) => a.left - b.left)"""
MODE_2 = re.compile(r" · block (\d+), \d+ patches · ")


@pytest.fixture(scope="module")
def compare_server(demo_runs: Path) -> Iterator[Server]:
    server = Server("compare", str(demo_runs / "cross"), str(demo_runs / "morton"))
    yield server
    server.stop()


def scatterplots(page, check, message: str) -> list[dict]:
    """Both scatterplots once ``check`` holds for each (the server's update has arrived)."""
    for _ in range(TIMEOUT_MS // 250):
        shown = page.evaluate(SCATTERPLOTS_JS)
        if len(shown) == 2 and all(check(side) for side in shown):
            return shown
        page.wait_for_timeout(250)
    raise AssertionError(f"{message}; the scatterplots show {page.evaluate(SCATTERPLOTS_JS)}")


def test_a_block_opened_in_compare_mode_is_framed_on_both_sides(
    page, compare_server: Server
) -> None:
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{compare_server.url}?stage=0&block=all&method=pca")
    figure(page, "patch-view")
    mode_1 = scatterplots(page, lambda side: "all blocks" in side["title"], "Mode 1 first")
    left = mode_1[0]
    page.mouse.click(*to_page(left, left["points_x"][0], left["points_y"][0]))
    opened = scatterplots(
        page, lambda side: MODE_2.search(side["title"]), "a tap should open a block on both sides"
    )
    page.screenshot(path=ARTIFACTS / "compare-block-opened.png")
    for side, before in zip(opened, mode_1, strict=True):
        x, y = np.array(side["points_x"]), np.array(side["points_y"])
        assert np.ptp(x) < np.ptp(before["x"]) / 3, "the block's points span less than Mode 1's"
        assert side["x"] == pytest.approx(padded_range(x)), side["title"]
        assert side["y"] == pytest.approx(padded_range(y)), side["title"]
