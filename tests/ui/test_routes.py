"""Routes made visible, in Chromium: the route toggles draw the scan routes over the patch view
(route 0 first, as the stored order visits the patches), and a by-route run's patch view shows
the attention of one chosen route, as stored."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, expect
from served import ARTIFACTS, Server
from test_dashboard import TIMEOUT_MS, open_explorer, select_option, wait_for_figure

from mambapanel.store import open_run, stage_group
from mambapanel.views.style import scaled

pytestmark = [pytest.mark.ui, pytest.mark.timeout(600)]

STAGE, BLOCK, PATCH = 0, 1, (5, 6)
# The patch view's drawn routes: each MultiLine's first line and its colour.
PATHS_JS = """() => {
  const view = [...Bokeh.index.all_views()].find((v) => v.model.name === "patch-view");
  if (!view) return null;
  return view.model.renderers.filter((r) => r.glyph && r.glyph.type === "MultiLine").map((r) => ({
    xs: Array.from(r.data_source.data.xs[0]), ys: Array.from(r.data_source.data.ys[0]),
    colour: r.glyph.line_color.value ?? r.glyph.line_color,
  }));
}"""
MARKERS_JS = """() => {
  const view = [...Bokeh.index.all_views()].find((v) => v.model.name === "patch-view");
  return view.model.renderers.filter((r) => r.glyph && r.glyph.type === "Scatter")
    .map((r) => r.glyph.marker.value ?? r.glyph.marker);
}"""


@pytest.fixture(scope="module")
def server(by_route_run: Path) -> Iterator[Server]:
    served = Server("explorer", str(by_route_run))
    yield served
    served.stop()


def drawn_paths(page: Page, count: int) -> list[dict]:
    for _ in range(TIMEOUT_MS // 250):
        paths = page.evaluate(PATHS_JS)
        if paths is not None and len(paths) == count:
            return paths
        page.wait_for_timeout(250)
    raise AssertionError(f"the patch view should draw {count} routes; it draws {paths}")


def test_the_toggles_draw_the_routes_and_a_chosen_route_shows_its_attention(
    page: Page, server: Server, by_route_run: Path
) -> None:
    group = open_run(by_route_run)[stage_group(STAGE)]
    routes = group["routes"].values
    width = group.attrs["grid_width"]
    row, col = PATCH
    open_explorer(page, server, f"stage={STAGE}&block={BLOCK}&method=pca&patch={row},{col}")
    page.set_viewport_size({"width": 1900, "height": 1100})  # the header's controls in view
    toggles = page.locator(".mambapanel-routes")
    expect(toggles.get_by_role("button")).to_have_text([f"route {k}" for k in range(4)])
    assert drawn_paths(page, 0) == []

    toggles.get_by_role("button", name="route 0").click()
    (path,) = drawn_paths(page, 1)
    # Route 0 as the run stores it: its first patches in the order the scan visits them.
    first_rows, first_cols = np.divmod(routes[0][:20], width)
    np.testing.assert_array_equal(path["xs"][:20], first_cols)
    np.testing.assert_array_equal(path["ys"][:20], first_rows)
    assert len(path["xs"]) == routes.shape[1]
    markers = page.evaluate(MARKERS_JS)
    assert {"circle", "square", "triangle"} <= set(markers), markers  # start, end, direction
    page.mouse.move(0, 0)  # no tooltip over the header
    page.screenshot(path=ARTIFACTS / "routes-route0.png")

    toggles.get_by_role("button", name="route 1").click()
    paths = drawn_paths(page, 2)
    np.testing.assert_array_equal(
        np.array(paths[1]["ys"][:16]), np.divmod(routes[1][:16], width)[0]
    )
    assert paths[0]["colour"] != paths[1]["colour"]

    select_option(page, "attention of", "route 2")
    shown = wait_for_figure(
        page, "patch-view", lambda shown: f"block {BLOCK}, route 2: attention" in shown["title"],
        "the patch view should show route 2's attention",
    )  # fmt: skip
    stored = group["attention_mean_by_route"].values[BLOCK, 2, row * width + col]
    np.testing.assert_allclose(shown["image"], scaled(stored, "strength"), rtol=1e-6)
    merged = group["attention_mean"].values[BLOCK, row * width + col]
    assert not np.allclose(shown["image"], scaled(merged, "strength"))
    expect(page).to_have_url(re.compile(r"[?&]route=2(&|$)"), timeout=TIMEOUT_MS)  # URL state
    assert "routes=0%2C1" in page.url
    page.mouse.move(0, 0)
    page.screenshot(path=ARTIFACTS / "routes-route2-attention.png")
