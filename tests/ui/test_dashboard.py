"""The served dashboard in Chromium: a lasso drawn with the mouse, a click on a patch, the
header's menus, and a bad run path, checked against the stored run."""

from __future__ import annotations

import csv
import io
import re
import shutil
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect
from served import ARTIFACTS, Server

from mambapanel.store import stage_group
from mambapanel.views import export
from mambapanel.views.data import RunData
from mambapanel.views.explorer import STATUS_PATCHES
from mambapanel.views.style import ATTENTION_CMAP, hex_colours

# A generous limit, to stop a hung browser or server, not to time: the first test may also
# build the session's run (tests/small_run.py), which takes minutes on a busy machine.
pytestmark = [pytest.mark.ui, pytest.mark.timeout(600)]

TIMEOUT_MS = 30_000
SELECTION_TITLE = re.compile(r": [1-9]\d* selected patches$")  # the patch view's, once selected
# A figure found by its Bokeh name (mambapanel.views.style.named; the index-th of that name
# where a page shows several): its frame in page pixels, its axis ranges, its title, and the
# values of its image glyph (a patch grid) if any.
FIGURE_JS = """(name, index = 0) => {
  const view = [...Bokeh.index.all_views()].filter((v) => v.model.name === name)[index];
  if (!view) return null;
  const canvas = view.canvas_view.el.getBoundingClientRect();
  const frame = view.frame.bbox;
  const image = view.model.renderers.find((r) => r.glyph && r.glyph.type === "Image");
  const scatter = view.model.renderers.find(  // not the markers of a drawn route
    (r) => r.glyph && r.glyph.type === "Scatter" && r.data_source.data.x);
  return {
    left: canvas.left + frame.left, top: canvas.top + frame.top,
    width: frame.width, height: frame.height,
    x: [view.model.x_range.start, view.model.x_range.end],
    y: [view.model.y_range.start, view.model.y_range.end],
    title: view.model.title.text,
    image: image ? Array.from(image.data_source.data.image[0]) : null,
    palette: image ? image.glyph.color_mapper.palette : null,
    low_high: image ? [image.glyph.color_mapper.low, image.glyph.color_mapper.high] : null,
    points_x: scatter ? Array.from(scatter.data_source.data.x) : null,
  };
}"""


def figure(page: Page, name: str) -> dict:
    """The figure ``name`` once it is drawn (views are replaced while the server works)."""
    page.wait_for_function(f"() => ({FIGURE_JS})({name!r}) !== null", timeout=TIMEOUT_MS)
    return page.evaluate(FIGURE_JS, name)


def wait_for_figure(page: Page, name: str, check, message: str) -> dict:
    """Poll the figure until ``check(figure)`` holds (the server's update has arrived)."""
    for _ in range(TIMEOUT_MS // 250):
        shown = page.evaluate(FIGURE_JS, name)
        if shown is not None and check(shown):
            return shown
        page.wait_for_timeout(250)
    raise AssertionError(f"{message}; {name} shows {page.evaluate(FIGURE_JS, name)}")


def to_page(shown: dict, x: float, y: float) -> tuple[float, float]:
    """Data coordinates to page pixels (either axis may be inverted)."""
    (x0, x1), (y0, y1) = shown["x"], shown["y"]
    return (
        shown["left"] + (x - x0) / (x1 - x0) * shown["width"],
        shown["top"] + (y1 - y) / (y1 - y0) * shown["height"],
    )


def to_data(shown: dict, px: float, py: float) -> tuple[float, float]:
    (x0, x1), (y0, y1) = shown["x"], shown["y"]
    return (
        x0 + (px - shown["left"]) / shown["width"] * (x1 - x0),
        y1 - (py - shown["top"]) / shown["height"] * (y1 - y0),
    )


def status(page: Page):
    return page.locator(".mambapanel-status")


def click_patch(page: Page, grid: dict, row: int, col: int) -> dict:
    """Click patch (row, col) of the patch view ``grid`` as drawn; the patch view once it
    shows the attention from that patch (the status line names the patch first)."""
    page.mouse.click(*to_page(grid, col, row))
    expect(status(page)).to_contain_text(f"Clicked patch: ({row}, {col})", timeout=TIMEOUT_MS)
    return wait_for_figure(
        page, "patch-view", lambda shown: f"attention from ({row}, {col})" in shown["title"],
        f"the patch view should show the attention from ({row}, {col})",
    )  # fmt: skip


def open_explorer(page: Page, server: Server, query: str) -> None:
    page.set_viewport_size({"width": 1400, "height": 1100})
    page.goto(f"{server.url}?{query}")
    figure(page, "patch-view")


def select_option(page: Page, label: str, value: str) -> None:
    """Choose ``value`` in the header menu labelled ``label``."""
    group = page.locator(".bk-input-group").filter(
        has=page.locator("label", has_text=re.compile(f"^{re.escape(label)}$"))
    )
    group.locator("select").select_option(value)


def pick_tool(page: Page, shown: dict, tool: str) -> None:
    """Click the button of ``tool`` (``lasso-select``, ``box-select``) in the toolbar of the
    figure ``shown``: the one nearest its frame, as several figures have the tool."""
    icons = page.locator(f".bk-tool-icon-{tool}")
    centre = np.array([shown["left"] + shown["width"] / 2, shown["top"] + shown["height"] / 2])

    def distance(index: int) -> float:
        box = icons.nth(index).bounding_box()
        return float(np.hypot(box["x"] - centre[0], box["y"] - centre[1]))

    icons.nth(min(range(icons.count()), key=distance)).click()


def draw_lasso(page: Page, scatter: dict) -> np.ndarray:
    """Draw a pentagon over the middle of the scatterplot's frame with the lasso tool; its
    vertices in page pixels."""
    pick_tool(page, scatter, "lasso-select")
    centre = np.array(
        [scatter["left"] + scatter["width"] / 2, scatter["top"] + scatter["height"] / 2]
    )
    radius = 0.3 * min(scatter["width"], scatter["height"])
    angles = np.linspace(0, 2 * np.pi, 6)[:-1] + 0.3
    polygon = centre + radius * np.c_[np.cos(angles), np.sin(angles)]
    page.mouse.move(*polygon[0])
    page.mouse.down()
    for vertex in [*polygon[1:], polygon[0]]:
        page.mouse.move(*vertex, steps=8)
    page.mouse.up()
    return polygon


def listed_patches(page: Page) -> set[tuple[int, int]]:
    """The selected patches as the status line lists them (at most STATUS_PATCHES)."""
    # The status line's text is in the HTML pane's shadow root, which locators enter.
    text = status(page).locator("p").inner_text().split("Selection")[1].split("Attention")[0]
    return {(int(r), int(c)) for r, c in re.findall(r"\((\d+), (\d+)\)", text)}


def red_patches(grid: dict) -> set[tuple[int, int]]:
    """The patches (row, col) a square patch grid in selection display shows red."""
    side = round(len(grid["image"]) ** 0.5)
    shown = np.array(grid["image"]).reshape(side, side)
    return {(int(row), int(col)) for row, col in np.argwhere(shown == 1)}


def distance_to_polygon(point: np.ndarray, polygon: np.ndarray) -> float:
    """Pixels from ``point`` to the nearest edge of ``polygon``."""
    starts, ends = polygon, np.roll(polygon, -1, axis=0)
    edges = ends - starts
    t = np.clip(((point - starts) * edges).sum(1) / (edges**2).sum(1), 0, 1)
    return float(np.min(np.hypot(*(starts + t[:, None] * edges - point).T)))


def inside(point: np.ndarray, polygon: np.ndarray) -> bool:
    """Even-odd rule (the reference of tests/test_views.py, in page pixels)."""
    px, py = point
    result = False
    for (x1, y1), (x2, y2) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        if (y1 > py) != (y2 > py) and px < x1 + (py - y1) * (x2 - x1) / (y2 - y1):
            result = not result
    return result


def test_lasso_drawn_with_the_mouse_highlights_the_right_patches(
    page: Page, explorer_server: Server, small_run: Path
) -> None:
    open_explorer(page, explorer_server, "stage=1&block=0&method=pca")
    scatter = figure(page, "scatterplot")
    polygon = draw_lasso(page, scatter)

    embedding = RunData(small_run).intra_embedding(1, 0, "pca")
    width = 8
    surely, maybe = set(), set()  # points within 2 px of the lasso may fall either way
    for index, (x, y) in enumerate(zip(embedding.x, embedding.y, strict=True)):
        point = np.array(to_page(scatter, x, y))
        if distance_to_polygon(point, polygon) < 2:
            maybe.add(divmod(index, width))
        elif inside(point, polygon):
            surely.add(divmod(index, width))
    assert surely, "the lasso should enclose some points"

    patches = wait_for_figure(
        page, "patch-view", lambda shown: SELECTION_TITLE.search(shown["title"]),
        "the patch view should show the selection",
    )  # fmt: skip
    selected = red_patches(patches)
    assert surely <= selected <= surely | maybe
    assert patches["palette"] == ["#d9d9d9", "#d62728"]  # grey, red
    # The status line counts them and lists the first STATUS_PATCHES, in row-major order.
    expect(status(page)).to_contain_text(f"{len(selected)} patches selected", timeout=TIMEOUT_MS)
    assert listed_patches(page) == set(sorted(selected)[:STATUS_PATCHES])


def test_click_on_a_patch_colours_the_grid_by_its_stored_attention_row(
    page: Page, explorer_server: Server, small_run: Path, artifacts: Path
) -> None:
    open_explorer(page, explorer_server, "stage=1&block=1&method=tsne")
    shown = click_patch(page, figure(page, "patch-view"), row=2, col=5)
    # The default scale: strength |α|, light yellow to dark red.
    stored = np.abs(RunData(small_run).attention_row(1, 1, (2, 5)))
    np.testing.assert_array_equal(np.array(shown["image"], dtype=np.float32), stored.ravel())
    assert shown["palette"] == hex_colours(ATTENTION_CMAP)
    assert shown["palette"][0] == "#ffffcc" and shown["palette"][-1] == "#800026"
    np.testing.assert_allclose(shown["low_high"], [stored.min(), stored.max()], rtol=1e-6)
    # The Image view overlays the same patch's attention on image 0.
    wait_for_figure(
        page, "image-view", lambda shown: "from (2, 5)" in shown["title"],
        "the image view should follow the click",
    )  # fmt: skip
    page.screenshot(path=artifacts / "dashboard.png", full_page=True)


def test_switching_stage_block_and_method_updates_both_views(
    page: Page, explorer_server: Server, small_run: Path
) -> None:
    run = RunData(small_run)
    open_explorer(page, explorer_server, "stage=1&block=0&method=pca")
    select_option(page, "stage", "2")
    wait_for_figure(
        page, "scatterplot", lambda shown: "stage 2 · block 0, 16 patches · pca" in shown["title"],
        "the scatterplot should show stage 2",
    )  # fmt: skip
    wait_for_figure(
        page, "patch-view", lambda shown: len(shown["image"]) == 16,
        "the patch view should show the 4x4 grid of stage 2",
    )  # fmt: skip
    page.mouse.click(*to_page(figure(page, "patch-view"), 1, 3))  # col 1, row 3
    expect(status(page)).to_contain_text("Clicked patch: (3, 1)", timeout=TIMEOUT_MS)

    select_option(page, "block", "1")
    shown = wait_for_figure(
        page, "patch-view", lambda shown: shown["title"].startswith("block 1: attention"),
        "the patch view should show block 1",
    )  # fmt: skip
    np.testing.assert_array_equal(
        np.array(shown["image"], dtype=np.float32), np.abs(run.attention_row(2, 1, (3, 1))).ravel()
    )
    wait_for_figure(
        page, "scatterplot", lambda shown: "block 1, 16 patches" in shown["title"],
        "the scatterplot should show block 1",
    )  # fmt: skip

    select_option(page, "DR method", "tsne")
    scatter = wait_for_figure(
        page, "scatterplot", lambda shown: shown["title"].endswith("tsne"),
        "the scatterplot should show t-SNE",
    )  # fmt: skip
    np.testing.assert_allclose(scatter["points_x"], run.intra_embedding(2, 1, "tsne").x)
    assert "from (3, 1)" in figure(page, "patch-view")["title"]  # the clicked patch stays


def test_export_buttons_download_the_figures_and_the_selection(
    page: Page, explorer_server: Server, small_run: Path, artifacts: Path
) -> None:
    open_explorer(page, explorer_server, "stage=1&block=1&method=pca")
    draw_lasso(page, figure(page, "scatterplot"))
    grid = wait_for_figure(
        page, "patch-view", lambda shown: SELECTION_TITLE.search(shown["title"]),
        "the patch view should show the selection",
    )  # fmt: skip
    selected = red_patches(grid)
    assert selected
    click_patch(page, grid, row=2, col=5)  # the selection stays

    with page.expect_download(timeout=TIMEOUT_MS) as csv_download:
        page.get_by_text("Selection (CSV)").click()
    assert csv_download.value.suggested_filename == "selection-small-run-stage1-block1.csv"
    rows = list(csv.reader(io.StringIO(csv_download.value.path().read_text())))
    assert rows[0] == [
        "run", "stage", "block", "direction", "query", "patch_row", "patch_col", "attention",
    ]  # fmt: skip
    stored = RunData(small_run).attention_row(1, 1, (2, 5))
    assert {(int(row[5]), int(row[6])) for row in rows[1:]} == selected
    for row in rows[1:]:
        assert row[:5] == ["small-run", "1", "1", "from", "2,5"]
        assert float(row[7]) == float(stored[int(row[5]), int(row[6])])

    with page.expect_download(timeout=TIMEOUT_MS) as png_download:
        page.get_by_text("Figures (PNG)").click()
    assert png_download.value.suggested_filename == "mambapanel-small-run-stage1-block1.png"
    png_download.value.save_as(artifacts / "export.png")
    picture = Image.open(io.BytesIO(png_download.value.path().read_bytes()))
    assert picture.format == "PNG"
    # One row of three figures (scatterplot, patch grid, image), each under its caption.
    assert picture.size == (
        3 * (export.PANEL + export.MARGIN) + export.MARGIN,
        export.PANEL + export.CAPTION + 2 * export.MARGIN,
    )
    # The patch grid shows the attention: its strongest patch in the darkest red.
    colours = {tuple(c) for c in np.asarray(picture.convert("RGB")).reshape(-1, 3)}
    assert _rgb(hex_colours(ATTENTION_CMAP)[-1]) in colours


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_a_bad_run_path_shows_the_message(page: Page, tmp_path: Path) -> None:
    missing = tmp_path / "not-a-run"
    server = Server("explorer", str(missing))
    try:
        page.goto(server.url)
        expect(page.locator(".mambapanel-error")).to_contain_text(
            f"{missing}: no such run (the path does not exist)", timeout=TIMEOUT_MS
        )
        expect(page.get_by_text("Traceback")).to_have_count(0)
    finally:
        server.stop()


def frames(page: Page) -> dict[str, list[float]]:
    """Where each figure's frame is drawn: {name: [left, top, width, height]}."""
    return {
        name: [shown[key] for key in ("left", "top", "width", "height")]
        for name in ("scatterplot", "patch-view", "image-view")
        for shown in [figure(page, name)]
    }


def test_the_figures_are_where_they_are_with_or_without_the_stylesheets(
    browser: Browser, explorer_server: Server
) -> None:
    """A busy server sends the widgets' stylesheets after the browser has drawn the
    figures; a widget that grew when they came moved the figures below it, under a user's
    click. (The page's own stylesheets, its template's, linked in its HTML, come before the
    browser shows the page: those stay.)"""
    with urllib.request.urlopen(explorer_server.url, timeout=TIMEOUT_MS / 1000) as response:
        html = response.read().decode()
    linked = {
        urljoin(explorer_server.url, href)
        for href in re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
    }
    assert linked, "the page should link its template's stylesheets"

    def unless_linked(route: Route) -> None:
        route.continue_() if route.request.url in linked else route.abort()

    placed = []
    for styled in (True, False):
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        if not styled:
            page.route(re.compile(r"\.css(\?|$)"), unless_linked)
        open_explorer(page, explorer_server, "stage=1&block=0&method=pca")
        figure(page, "image-view")
        placed.append(frames(page))
        context.close()
    assert placed[0] == placed[1]


def test_a_damaged_run_is_named_in_the_page_and_the_rest_works(
    page: Page, small_run: Path, tmp_path: Path
) -> None:
    """A chunk cut short, met by the first render (a link to a clicked patch): the page
    used to stay on its loading indicator."""
    run = tmp_path / "damaged"
    shutil.copytree(small_run, run)
    chunk = run / stage_group(1) / "attention_mean/c/0/0/0"  # block 0
    chunk.write_bytes(chunk.read_bytes()[:100])
    server = Server("explorer", str(run))
    try:
        open_explorer(page, server, "stage=1&block=0&method=pca&patch=2,5")
        problem = page.locator(
            ".mambapanel-view-problem", has_text=f"{stage_group(1)}/attention_mean"
        )
        expect(problem).to_contain_text(f"run damaged ({run})", timeout=TIMEOUT_MS)
        expect(problem).to_contain_text("block 0, query 21 cannot be read")
        assert figure(page, "patch-view")["title"].endswith("cannot be read")
        assert "from (2, 5)" in figure(page, "image-view")["title"]  # its own chunk is whole
        page.screenshot(path=ARTIFACTS / "damaged-run.png", full_page=True)
        select_option(page, "block", "1")
        wait_for_figure(
            page, "patch-view", lambda shown: shown["title"] == "block 1: attention from (2, 5)",
            "the patch view should show block 1, which is whole",
        )  # fmt: skip
        expect(problem).to_be_hidden()
    finally:
        server.stop()
    assert "Traceback" not in server.output()
