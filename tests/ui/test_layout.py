"""The layout in Chromium: the served page's controls in its sidebar, the scatterplot and the
patch view side by side and as wide as the window allows (at 1280x800 and 1920x1080, and
after a resize), compare mode's two sides aligned, nothing wider than the window, nothing
fetched from outside the server; and an Explorer as a notebook cell's value within its
output area's width. Screenshots in test-artifacts/layout-*.png."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page
from served import ARTIFACTS, Server
from test_dashboard import TIMEOUT_MS, select_option

pytestmark = [pytest.mark.ui, pytest.mark.timeout(600)]

NETWORK = re.compile(r"(https?|wss?)://(?!127\.0\.0\.1[:/])")  # elsewhere than the server
NOTEBOOK = Path(__file__).with_name("notebook_width.py")
VIEWS = ("scatterplot", "patch-view", "image-view")
# Every view's figure, left to right, then top to bottom: its canvas and frame in page pixels,
# and whether its frame has the shape its fit callback gives it (mambapanel.views.style).
FIGURES_JS = """() => [...Bokeh.index.all_views()]
  .filter((v) => v.model.name && v.canvas_view && v.model.name.match(/-view$|^scatterplot$/))
  .map((v) => {
    const canvas = v.canvas_view.el.getBoundingClientRect();
    const fit = (v.model.js_property_callbacks["change:inner_width"] || [])[0];
    const ratio = fit ? (fit.args instanceof Map ? fit.args.get("ratio") : fit.args.ratio) : null;
    return {
      name: v.model.name,
      canvas: [canvas.left, canvas.top, canvas.width, canvas.height],
      frame: [canvas.left + v.frame.bbox.left, canvas.top + v.frame.bbox.top,
              v.frame.bbox.width, v.frame.bbox.height],
      fitted: ratio !== null && v.frame.bbox.width > 0 &&
        Math.abs(v.frame.bbox.height - Math.round(v.frame.bbox.width * ratio)) <= 1,
    };
  })
  .sort((a, b) => a.canvas[1] - b.canvas[1] || a.canvas[0] - b.canvas[0])"""
# The page's width as laid out, and its viewport's.
WIDTHS_JS = "() => [document.documentElement.scrollWidth, window.innerWidth]"


def figures(page: Page, count: int, check=lambda shown: True) -> list[dict]:
    """The ``count`` view figures once each is fitted to its width and ``check`` holds."""
    shown: list[dict] = []
    for _ in range(TIMEOUT_MS // 250):
        shown = page.evaluate(FIGURES_JS)
        if len(shown) == count and all(f["fitted"] for f in shown) and check(shown):
            # Once more after a while: a layout still settling moves them.
            page.wait_for_timeout(500)
            if page.evaluate(FIGURES_JS) == shown:
                return shown
        page.wait_for_timeout(250)
    raise AssertionError(f"{count} fitted figures expected; the page shows {shown}")


def named(shown: list[dict], name: str) -> list[dict]:
    return [f for f in shown if f["name"] == name]


def right(box: list[float]) -> float:
    return box[0] + box[2]


def beside(left: dict, right_one: dict) -> bool:
    """Canvases side by side: one after the other across, overlapping down."""
    (x0, y0, w0, h0), (x1, y1, _, h1) = left["canvas"], right_one["canvas"]
    return x0 + w0 <= x1 and y0 < y1 + h1 and y1 < y0 + h0


def assert_apart(shown: list[dict]) -> None:
    """No two figures' canvases overlap."""
    for index, first in enumerate(shown):
        for second in shown[index + 1 :]:
            (x0, y0, w0, h0), (x1, y1, w1, h1) = first["canvas"], second["canvas"]
            assert x0 + w0 <= x1 or x1 + w1 <= x0 or y0 + h0 <= y1 or y1 + h1 <= y0, (
                first,
                second,
            )


def box(page: Page, selector: str) -> list[float]:
    found = page.locator(selector).first.bounding_box()
    return [found["x"], found["y"], found["width"], found["height"]]


def assert_within_window(page: Page) -> None:
    scroll_width, viewport = page.evaluate(WIDTHS_JS)
    assert scroll_width <= viewport, f"the page is {scroll_width} px wide in {viewport}"


@pytest.fixture(scope="module")
def notebook_server(small_run: Path) -> Iterator[Server]:
    server = Server("notebook_width", str(small_run), script=NOTEBOOK)
    yield server
    server.stop()


def test_served_layout_uses_the_window_and_keeps_compared_sides_aligned(
    page: Page, explorer_server: Server
) -> None:
    outside = []
    page.on(
        # Anything fetched but from the server's own address (or a blob: URL of the page).
        "request",
        lambda r: outside.append(r.url) if re.match(NETWORK, r.url) else None,
    )
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{explorer_server.url}?stage=1&block=0&method=pca")
    small = figures(page, 3)
    page.screenshot(path=ARTIFACTS / "layout-1280x800.png", full_page=True)
    scatter, patches, image = (named(small, name)[0] for name in VIEWS)
    # The controls are in the sidebar, left of the views.
    sidebar = box(page, "#sidebar")
    for label in ("run", "stage", "block", "DR method", "image", "compare"):
        control = page.locator(".bk-input-group").filter(
            has=page.locator("label", has_text=re.compile(f"^{re.escape(label)}$"))
        )
        found = control.bounding_box()
        assert right(sidebar) <= scatter["canvas"][0] and found["x"] + found["width"] <= right(
            sidebar
        ), f"{label} should be in the sidebar"
    assert beside(scatter, patches)
    assert patches["frame"][2] == patches["frame"][3], "square patches: a square 8x8 grid"
    # The scatterplot is the largest view; the two use the window's width beside the sidebar.
    assert scatter["frame"][2] > patches["frame"][2]
    assert right(patches["canvas"]) > 1280 - 120
    assert_apart(small)
    assert_within_window(page)

    # Wider: larger views, now all three side by side, without reloading.
    page.set_viewport_size({"width": 1920, "height": 1080})
    large = figures(page, 3, lambda shown: shown[0]["frame"][2] > scatter["frame"][2] + 50)
    page.screenshot(path=ARTIFACTS / "layout-1920x1080.png", full_page=True)
    scatter, patches, image = (named(large, name)[0] for name in VIEWS)
    assert beside(scatter, patches) and beside(patches, image)
    assert patches["frame"][2] == patches["frame"][3]
    assert scatter["frame"][2] > patches["frame"][2]
    assert right(image["canvas"]) > 1920 - 120
    assert_apart(large)
    assert_within_window(page)

    # Two blocks: each view of the left side has its twin on the right at the same height,
    # of the same size, and the sides do not overlap.
    select_option(page, "compare", "two blocks")
    compared = figures(page, 6)
    page.screenshot(path=ARTIFACTS / "layout-compare-1920x1080.png", full_page=True)
    for name in VIEWS:
        left, right_side = sorted(named(compared, name), key=lambda f: f["canvas"][0])
        assert left["frame"][1] == right_side["frame"][1], f"{name}: tops differ"
        assert left["frame"][2:] == right_side["frame"][2:], f"{name}: sizes differ"
    assert_apart(compared)
    sides = page.locator(".mambapanel-side")
    assert sides.count() == 2
    first, second = (sides.nth(i).bounding_box() for i in range(2))
    assert first["x"] + first["width"] <= second["x"] and first["y"] == second["y"]
    assert_within_window(page)
    assert not outside, f"the page fetched from outside the server: {outside}"


def test_an_explorer_in_a_notebook_stays_within_the_output_area(
    page: Page, notebook_server: Server
) -> None:
    """An 800-pixel output area, comparing (two sides and the longest header): everything
    inside it, each side's views inside the side (7(b): the compare layout scrolled
    sideways and its left image view hid under the right column; the header cut its last
    button)."""
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{notebook_server.url}?stage=1&block=0&method=pca&compare=blocks")
    shown = figures(page, 6)
    page.screenshot(path=ARTIFACTS / "layout-notebook-800.png", full_page=True)
    assert_apart(shown)
    area = box(page, ".notebook-output")
    assert area[2] == 800
    for name in ("Figures (PNG)", "Selection (CSV)"):
        button = page.get_by_text(name).bounding_box()
        assert button["x"] + button["width"] <= right(area), f"{name} cut off"
    sides = [page.locator(".mambapanel-side").nth(i).bounding_box() for i in range(2)]
    sides = [[s["x"], s["y"], s["width"], s["height"]] for s in sides]
    assert right(sides[0]) <= sides[1][0] and right(sides[1]) <= right(area)
    for name in VIEWS:
        for figure, side in zip(
            sorted(named(shown, name), key=lambda f: f["canvas"][0]), sides, strict=True
        ):
            assert side[0] <= figure["canvas"][0] and right(figure["canvas"]) <= right(side), (
                f"{name} outside its side: {figure['canvas']} in {side}"
            )
    assert_within_window(page)
