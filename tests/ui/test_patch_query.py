"""Querying patches in Chromium: a box dragged with the patch view's box select tool makes
its patches the query; the grid's values and drawn colours are their mean attention from
them (rows) and, after the ``to`` switch, to them (columns), checked against the plain mean
of the stored matrix; a reload of the page's URL brings the query and direction back."""

from __future__ import annotations

import io
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect
from served import Server
from test_colour_scales import TOLERANCE, expected_colour
from test_dashboard import (
    TIMEOUT_MS,
    figure,
    open_explorer,
    pick_tool,
    status,
    to_page,
    wait_for_figure,
)

from mambapanel.store import open_run, stage_group
from mambapanel.views.data import query_mean

pytestmark = [pytest.mark.ui, pytest.mark.timeout(600)]

STAGE, BLOCK, WIDTH = 1, 0, 8
# The box dragged, in patch coordinates (col, row): it holds the centres of rows 2-4 and
# cols 1-4, twelve patches.
CORNERS = ((0.6, 1.6), (4.4, 4.4))
QUERY = [(row, col) for row in range(2, 5) for col in range(1, 5)]


def drag_box(page: Page, grid: dict) -> None:
    """Pick the patch view's box select tool and drag a box from corner to corner."""
    pick_tool(page, grid, "box-select")
    start, end = (to_page(grid, *corner) for corner in CORNERS)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=10)
    page.mouse.up()


def check_grid(page: Page, grid: dict, expected: np.ndarray, name: str, artifacts: Path) -> None:
    """The grid's values are |expected| (the strength scale) and each patch is drawn in the
    colour the scale gives its value; a screenshot to look at."""
    strength = np.abs(expected)
    np.testing.assert_allclose(np.array(grid["image"]), strength.ravel(), rtol=1e-6)
    screenshot = page.screenshot(full_page=True)
    (artifacts / f"patch-query-{name}.png").write_bytes(screenshot)
    pixels = np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB")).astype(int)
    for index in range(WIDTH * WIDTH):
        row, col = divmod(index, WIDTH)
        x, y = to_page(grid, col, row)
        colour = pixels[round(y), round(x)]
        wanted = expected_colour(strength.flat[index], "strength", strength)
        assert np.abs(colour - wanted).max() <= TOLERANCE, (name, row, col, colour, wanted)


def test_a_box_on_the_patch_grid_shows_the_mean_attention_from_and_to_its_patches(
    page: Page, explorer_server: Server, small_run: Path, artifacts: Path
) -> None:
    matrix = open_run(small_run)[stage_group(STAGE)]["attention_mean"].isel(block=BLOCK).values
    indices = [row * WIDTH + col for row, col in QUERY]
    mean = {way: query_mean(matrix, indices, way).reshape(WIDTH, WIDTH) for way in ("from", "to")}
    open_explorer(page, explorer_server, f"stage={STAGE}&block={BLOCK}&method=pca")
    drag_box(page, figure(page, "patch-view"))
    grid = wait_for_figure(
        page, "patch-view", lambda shown: shown["title"].endswith("from 12 patches (mean)"),
        "the patch view should show the mean attention from the boxed patches",
    )  # fmt: skip
    listed = " ".join(f"({row}, {col})" for row, col in QUERY)
    expect(status(page)).to_contain_text(
        f"Attention: from 12 patches (mean): {listed}", timeout=TIMEOUT_MS
    )
    wait_for_figure(
        page, "image-view", lambda shown: shown["title"].endswith("from 12 patches (mean)"),
        "the image view should follow the query",
    )  # fmt: skip
    check_grid(page, grid, mean["from"], "from", artifacts)

    page.locator(".mambapanel-direction").get_by_role("button", name="to").click()
    page.mouse.move(1, 1)  # away: the switch's tooltip would lie over the patch grid
    grid = wait_for_figure(
        page, "patch-view", lambda shown: shown["title"].endswith("to 12 patches (mean)"),
        "the patch view should show the mean attention to the boxed patches",
    )  # fmt: skip
    expect(status(page)).to_contain_text("Attention: to 12 patches (mean)", timeout=TIMEOUT_MS)
    # Updated in place, the image view keeps a real, square frame (an update used to make
    # its figure fixed-size again, and its frame collapsed to a width of 0).
    wait_for_figure(
        page, "image-view",
        lambda shown: shown["title"].endswith("to 12 patches (mean)")
        and shown["width"] > 100 and abs(shown["width"] - shown["height"]) <= 2,
        "the image view should follow the direction at its size",
    )  # fmt: skip
    check_grid(page, grid, mean["to"], "to", artifacts)

    # The URL keeps the query and the direction; opened again, it shows the same.
    page.wait_for_function("() => window.location.search.includes('dir=to')", timeout=TIMEOUT_MS)
    params = parse_qs(urlparse(page.url).query)
    assert params["query"] == [";".join(f"{row},{col}" for row, col in QUERY)]
    assert params["dir"] == ["to"]
    page.goto(page.url)
    grid = wait_for_figure(
        page, "patch-view", lambda shown: shown["title"].endswith("to 12 patches (mean)"),
        "the reloaded page should show the query's attention to it",
    )  # fmt: skip
    expect(status(page)).to_contain_text(
        f"Attention: to 12 patches (mean): {listed}", timeout=TIMEOUT_MS
    )
    chosen = page.locator(".mambapanel-direction").get_by_role("button", name="to")
    expect(chosen).to_have_class(re.compile("bk-active"), timeout=TIMEOUT_MS)
    check_grid(page, grid, mean["to"], "reloaded", artifacts)
