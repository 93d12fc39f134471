"""The report's figures, drawn with Pillow (matplotlib is not in the stack): locality
profiles per run and the cross-run order matrix, in the dashboard's colours.
"""

from __future__ import annotations

from collections.abc import Sequence

import colorcet
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mambapanel.findings.metrics import relative_profile
from mambapanel.findings.record import Findings

INK, FAINT, WHITE = (40, 40, 40), (200, 200, 200), (255, 255, 255)
# The dashboard's block colours (mambapanel.views.style.block_colours) and attention scale.
BLOCK_PALETTE = colorcet.palette["glasbey_category10"]
YL_OR_RD = [(255, 255, 204), (254, 217, 118), (253, 141, 60), (227, 26, 28), (128, 0, 38)]


def _font(size: int = 12) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _ticks(low: float, high: float, count: int = 5, integer: bool = False) -> np.ndarray:
    """About ``count`` round values from ``low`` to the first at or above ``high``."""
    raw = max(high - low, 1e-12) / count
    step = 10 ** np.floor(np.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    step = max(step, 1) if integer else step
    first, last = np.floor(low / step), np.ceil(high / step)
    return np.arange(first, last + 0.5) * step


def line_chart(
    title: str,
    x_label: str,
    series: Sequence[tuple[str, str, np.ndarray, np.ndarray]],
    size: tuple[int, int] = (380, 260),
) -> Image.Image:
    """Lines on shared axes from y = 0: ``series`` of (label, colour, integer xs, ys); points
    whose y is not finite are left out and their neighbours joined. The legend stands to the
    right of the ``size`` plot, in as many columns as it needs."""
    left, right, top, bottom = 48, size[0] - 12, 26, size[1] - 34
    per_column = max(1, (bottom - top) // 14)
    legend_columns = -(-len(series) // per_column)
    image = Image.new("RGB", (size[0] + 72 * legend_columns, size[1]), WHITE)
    draw = ImageDraw.Draw(image)
    font = _font()
    draw.text((left, 6), title, fill=INK, font=font)
    kept = [
        (label, colour, np.asarray(xs, float)[ok], np.asarray(ys, float)[ok])
        for label, colour, xs, ys in series
        for ok in [np.isfinite(np.asarray(ys, float))]
    ]
    xs = np.concatenate([x for _, _, x, _ in kept] + [np.zeros(1)])
    ys = np.concatenate([y for _, _, _, y in kept] + [np.zeros(1)])
    x_ticks = _ticks(xs.min(), max(xs.max(), xs.min() + 1), 6, integer=True)
    y_ticks = _ticks(min(ys.min(), 0.0), max(ys.max(), 1e-12))
    (x_low, x_high), (y_low, y_high) = x_ticks[[0, -1]], y_ticks[[0, -1]]

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (right - left),
            bottom - (y - y_low) / (y_high - y_low) * (bottom - top),
        )

    for y in y_ticks:
        _, py = to_pixel(x_low, y)
        draw.line([(left, py), (right, py)], fill=FAINT)
        draw.text((left - 4, py), f"{y:g}", fill=INK, font=font, anchor="rm")
    for x in x_ticks:
        px, _ = to_pixel(x, y_low)
        draw.text((px, bottom + 4), f"{x:g}", fill=INK, font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=INK)
    draw.text(((left + right) / 2, size[1] - 4), x_label, fill=INK, font=font, anchor="ms")
    for index, (label, colour, line_xs, line_ys) in enumerate(kept):
        points = [to_pixel(x, y) for x, y in zip(line_xs, line_ys, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        elif points:  # a single distance (a 2x2 grid): a dot
            (x, y) = points[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        column, row = divmod(index, per_column)
        legend_x, legend_y = size[0] + 72 * column, top + 6 + 14 * row
        draw.line([(legend_x, legend_y), (legend_x + 14, legend_y)], fill=colour, width=2)
        draw.text((legend_x + 18, legend_y), label, fill=INK, font=font, anchor="lm")
    return image


def locality_figure(findings: Findings) -> Image.Image:
    """One row per stage: :func:`~mambapanel.findings.metrics.relative_profile` by grid distance and
    by sequence distance, one line per block."""
    charts = []
    for stage, dataset in findings.stages.items():
        row = []
        for profile, pairs, axis in (
            ("locality", "pairs", "grid distance (Chebyshev, patches)"),
            ("sequence_locality", "sequence_pairs", "sequence distance (steps)"),
        ):
            if profile not in dataset:
                continue
            series = [
                (
                    f"block {block}",
                    BLOCK_PALETTE[int(block) % len(BLOCK_PALETTE)],
                    *relative_profile(values, dataset[pairs].values),
                )
                for block, values in zip(
                    dataset["block"].values, dataset[profile].values, strict=True
                )
            ]
            title = f"stage {stage}: mean attention by distance (1 = mean)"
            row.append(line_chart(title, axis, series))
        charts.append(row)
    width = max((sum(c.width for c in row) for row in charts), default=1)
    height = sum(max((c.height for c in row), default=0) for row in charts) or 1
    figure = Image.new("RGB", (width, height), WHITE)
    y = 0
    for row in charts:
        x = 0
        for chart in row:
            figure.paste(chart, (x, y))
            x += chart.width
        y += max((c.height for c in row), default=0)
    return figure


def _colour(value: float, low: float, high: float) -> tuple[int, int, int]:
    """``value`` on the light-yellow to dark-red scale between ``low`` and ``high``."""
    if not np.isfinite(value):
        return FAINT
    t = 0.0 if high <= low else float(np.clip((value - low) / (high - low), 0, 1))
    position = t * (len(YL_OR_RD) - 1)
    index = min(int(position), len(YL_OR_RD) - 2)
    fraction = position - index
    start, end = YL_OR_RD[index], YL_OR_RD[index + 1]
    return tuple(round(a + (b - a) * fraction) for a, b in zip(start, end, strict=True))


def heatmap(matrix, title: str, cell: tuple[int, int] = (76, 30)) -> Image.Image:
    """A table of numbers (a DataFrame) as coloured cells, each row's largest outlined."""
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = 12 + max(measure.textlength(str(name), font=font) for name in matrix.index)
    left, top = int(label_width), 48
    width = left + cell[0] * len(matrix.columns) + 10
    height = top + cell[1] * len(matrix) + 10
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill=INK, font=font)
    values = matrix.to_numpy(float)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for column, name in enumerate(matrix.columns):
        x = left + column * cell[0] + cell[0] / 2
        draw.text((x, top - 6), str(name), fill=INK, font=font, anchor="ms")
    for row, name in enumerate(matrix.index):
        y = top + row * cell[1]
        draw.text((left - 6, y + cell[1] / 2), str(name), fill=INK, font=font, anchor="rm")
        best = int(np.nanargmax(values[row])) if np.isfinite(values[row]).any() else -1
        for column, value in enumerate(values[row]):
            x = left + column * cell[0]
            fill = _colour(value, low, high)
            box = [x, y, x + cell[0] - 2, y + cell[1] - 2]
            draw.rectangle(box, fill=fill, outline=INK if column == best else None, width=2)
            text = "-" if not np.isfinite(value) else f"{value:.2f}"
            ink = WHITE if sum(fill) < 380 else INK
            draw.text((x + cell[0] / 2, y + cell[1] / 2), text, fill=ink, font=font, anchor="mm")
    return image
