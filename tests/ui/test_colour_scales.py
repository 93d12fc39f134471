"""The colour scales in Chromium: the drawn colour of a known negative and a known positive
attention value on each scale (strength |α|, signed α, log |α|), as the page shows it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page
from served import ARTIFACTS, Server
from test_dashboard import figure, to_page, wait_for_figure

from mambapanel.views.data import RunData
from mambapanel.views.style import SCALE_LABELS, SCALES, attention_cmap

pytestmark = [pytest.mark.ui, pytest.mark.timeout(600)]

STAGE, BLOCK = 1, 0
# Colour channels may differ from the palette's by Bokeh's and the canvas' rounding: much
# less than between palette colours a tenth of the scale apart.
TOLERANCE = 12


def rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])


def expected_colour(value: float, scale: str, row: np.ndarray) -> np.ndarray:
    """The palette colour ``value`` of the attention ``row`` should get on ``scale``, from the
    scales' definitions: strength and log place |α| between the least and largest |α|
    (log: logarithmically), signed places α between -max |α| and max |α|."""
    palette = attention_cmap(scale)
    magnitude = np.abs(row[row != 0])
    if scale == "signed":
        low, high, shown = -magnitude.max(), magnitude.max(), value
    else:
        low, high, shown = magnitude.min(), magnitude.max(), abs(value)
    if scale == "log":
        low, high, shown = np.log(low), np.log(high), np.log(shown)
    place = int((shown - low) / (high - low) * len(palette))
    return rgb(palette[min(max(place, 0), len(palette) - 1)])


def signed_row(run: RunData) -> tuple[tuple[int, int], np.ndarray]:
    """The clicked patch whose attention row has the largest negative and positive values
    (the smaller of the two largest), and that row."""
    height, width = run.grid(STAGE)
    rows = {
        (r, c): run.attention_row(STAGE, BLOCK, (r, c)) for r in range(height) for c in range(width)
    }
    patch = max(rows, key=lambda p: min(-rows[p].min(), rows[p].max()))
    return patch, rows[patch]


def test_negative_and_positive_attention_are_drawn_honestly_on_each_scale(
    page: Page, explorer_server: Server, small_run
) -> None:
    (row, col), attention = signed_row(RunData(small_run))
    negative, positive = int(np.argmin(attention)), int(np.argmax(attention))
    assert attention.flat[negative] < 0 < attention.flat[positive]
    width = attention.shape[1]
    page.set_viewport_size({"width": 1400, "height": 1100})
    drawn = {}
    for scale in SCALES:
        query = f"stage={STAGE}&block={BLOCK}&method=pca&patch={row},{col}&scale={scale}"
        page.goto(f"{explorer_server.url}?{query}")
        figure(page, "patch-view")
        grid = wait_for_figure(
            page, "patch-view",
            lambda shown, scale=scale: f"attention from ({row}, {col})" in shown["title"]
            and shown["palette"] == attention_cmap(scale),
            f"the patch view should show the attention on the {scale} scale",
        )  # fmt: skip
        label = page.evaluate(
            """() => [...Bokeh.index.all_views()].find((v) => v.model.name === "patch-view")
              .model.right.find((m) => m.type === "ColorBar").title"""
        )
        assert label == SCALE_LABELS[scale]
        screenshot = page.screenshot()
        (ARTIFACTS / f"colour-scale-{scale}.png").write_bytes(screenshot)
        pixels = np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB")).astype(int)
        for index in (negative, positive):
            x, y = to_page(grid, index % width, index // width)
            colour = pixels[round(y), round(x)]
            drawn[scale, index] = colour
            expected = expected_colour(attention.flat[index], scale, attention)
            assert np.abs(colour - expected).max() <= TOLERANCE, (scale, index, colour, expected)
    # Signed: negative blue, positive red, at a glance. Strength and log: the negative value
    # is as strong as its size, not drawn as the weakest (light yellow).
    blue_negative, red_positive = drawn["signed", negative], drawn["signed", positive]
    assert blue_negative[2] > blue_negative[0] + 40 and red_positive[0] > red_positive[2] + 40
    assert -attention.flat[negative] > 0.5 * np.abs(attention).max(), "a strong negative value"
    weakest = rgb(attention_cmap("strength")[0])
    assert np.abs(drawn["strength", negative] - weakest).max() > 40
