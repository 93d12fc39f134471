"""The Overview tab in Chromium: every small multiple and patch map drawn at a real size with
its points and the stored attention, and a click on one opening that stage or block in the
Explore tab (on the session's small run: stages 1 and 2, 2 blocks, 2 images)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, expect
from served import ARTIFACTS, Server
from test_dashboard import open_explorer, status, to_page

from mambapanel.views.data import RunData
from mambapanel.views.overview import BlockOverview

pytestmark = [pytest.mark.ui, pytest.mark.timeout(600)]

# A click's changes to the Explorer took 11 s to reach the page at load 19 on the 2-core
# machine here: generous, to stop a hung server, not to time.
SLOW_MS = 120_000

# The overview figures as drawn: frame in page pixels, ranges, the points of a scatter and
# the values of an image glyph.
OVERVIEW_JS = """() => [...Bokeh.index.all_views()].filter((v) => v.model.type === "Figure"
    && /^(stage|block)-overview-/.test(v.model.name)).map((v) => {
  const canvas = v.canvas_view.el.getBoundingClientRect();
  const frame = v.frame.bbox;
  const glyph = (type) => v.model.renderers.find((r) => r.glyph && r.glyph.type === type);
  const scatter = glyph("Scatter"), image = glyph("Image");
  return {
    name: v.model.name, left: canvas.left + frame.left, top: canvas.top + frame.top,
    width: frame.width, height: frame.height, on_screen: canvas.width > 0,
    x: [v.model.x_range.start, v.model.x_range.end],
    y: [v.model.y_range.start, v.model.y_range.end],
    points: scatter ? scatter.data_source.data.x.length : 0,
    image: image ? Array.from(image.data_source.data.image[0]) : null,
  };
})"""
NAMES = ["stage-overview-1", "stage-overview-2", "block-overview-1", "block-overview-2"]


def overview_figures(page: Page) -> dict[str, dict]:
    """The overview's figures once all of them are on screen (their tab shown) at a size, with
    their glyphs."""
    page.wait_for_function(
        f"""() => {{ const shown = ({OVERVIEW_JS})();
          return {NAMES!r}.every((name) => shown.some((f) => f.name === name && f.on_screen
            && f.width > 50
            && f.height > 30 && (f.points > 0 || f.image !== null))); }}""",
        timeout=SLOW_MS,
    )
    return {shown["name"]: shown for shown in page.evaluate(OVERVIEW_JS)}


def shown_as(page: Page, name: str, title: str) -> None:
    """Wait until the figure ``name`` is on screen (its tab shown) with ``title`` in its title."""
    page.wait_for_function(
        """([name, title]) => [...Bokeh.index.all_views()].some((v) => v.model.name === name
            && v.model.title.text.includes(title) && v.el.getBoundingClientRect().width > 0)""",
        arg=[name, title],
        timeout=SLOW_MS,
    )


def open_overview(page: Page) -> dict[str, dict]:
    page.locator(".bk-tab", has_text=re.compile("^Overview$")).click()
    return overview_figures(page)


def test_the_overview_draws_every_stage_and_block_and_a_click_opens_it(
    page: Page, explorer_server: Server, small_run: Path
) -> None:
    open_explorer(page, explorer_server, "stage=1&block=0&patch=2,5")
    shown = open_overview(page)
    page.screenshot(path=ARTIFACTS / "overview-small-run.png", full_page=True)
    run = RunData(small_run)
    for stage in run.stages:  # every (image, block) point of the stage
        assert shown[f"stage-overview-{stage}"]["points"] == len(run.image_ids) * 2
    # The maps of the clicked patch (2, 5) and of (1, 2), the same image location in stage 2.
    expected = BlockOverview(run=run, stage=1, patch=(2, 5))
    for stage in run.stages:
        drawn = np.array(shown[f"block-overview-{stage}"]["image"], dtype=float)
        np.testing.assert_allclose(drawn, expected.row(stage).ravel(), rtol=1e-6)

    # Stage 2's map of block 1, at its patch: opens block 1 of stage 2 with (1, 2) clicked.
    block_map = shown["block-overview-2"]
    col = 1 * (4 + expected.gap(2)) + 2
    page.mouse.click(*to_page(block_map, col, 1))
    expect(status(page)).to_contain_text("Clicked patch: (1, 2)", timeout=SLOW_MS)
    shown_as(page, "scatterplot", "stage 2 · block 1")
    shown_as(page, "patch-view", "block 1: attention from (1, 2)")
    expect(page.locator(".bk-tab.bk-active")).to_have_text("Explore", timeout=SLOW_MS)
    page.screenshot(path=ARTIFACTS / "overview-opened-block.png", full_page=True)

    # Back to the overview, which follows: stage 2 first; a click on stage 1's multiple opens
    # its Mode 1 scatterplot.
    shown = open_overview(page)
    assert shown["block-overview-2"]["top"] < shown["block-overview-1"]["top"]
    multiple = shown["stage-overview-1"]
    page.mouse.click(multiple["left"] + multiple["width"] / 2, multiple["top"] + 5)
    shown_as(page, "scatterplot", "stage 1 · all blocks")
    expect(page.locator(".bk-tab.bk-active")).to_have_text("Explore", timeout=SLOW_MS)
    page.screenshot(path=ARTIFACTS / "overview-opened-stage.png", full_page=True)


def test_the_overview_is_drawn_in_its_hidden_tab_once_the_page_is_drawn(
    page: Page, explorer_server: Server, small_run: Path
) -> None:
    """Its figures are in the page before the tab is opened (drawn on the click instead, it
    took seconds to show), and opening the tab shows them with their points."""
    open_explorer(page, explorer_server, "stage=1&block=0")
    page.wait_for_function(
        """(names) => names.every((name) =>
            [...Bokeh.index.all_views()].some((v) => v.model.name === name))""",
        arg=NAMES,
        timeout=SLOW_MS,
    )
    expect(page.locator(".bk-tab.bk-active")).to_have_text("Explore")  # never opened
    shown = open_overview(page)
    run = RunData(small_run)
    for stage in run.stages:
        assert shown[f"stage-overview-{stage}"]["points"] == len(run.image_ids) * 2
