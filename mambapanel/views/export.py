"""Export of what the views show: the figures as one PNG, rendered on the server from the
same arrays and colours (Datashader shades, Pillow draws; no browser, no network), and the
selection as CSV.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from PIL import Image, ImageDraw

from mambapanel.views.image import ImageView
from mambapanel.views.patch import PatchView, query_text
from mambapanel.views.scatter import ScatterView, padded_range
from mambapanel.views.style import (
    COLUMN_CMAP,
    GREY,
    HIGHLIGHT,
    OUTLINE,
    RED,
    SCALE_LABELS,
    attention_cmap,
    block_colours,
    colour_limits,
    hex_colours,
    scaled,
)
from mambapanel.views.url import format_patches

PANEL = 320  # pixels per exported figure
CAPTION = 18  # pixels of caption above each figure
MARGIN = 8


def shade(
    values: np.ndarray, cmap: str | list[str], span: tuple[float, float], how: str
) -> Image.Image:
    """A 2-D array coloured like the Bokeh plots (NaN transparent), as an RGBA image with
    row 0 at the top."""
    import datashader.transfer_functions as tf  # on first use: see mambapanel.views.scatter

    colours = hex_colours(cmap) if isinstance(cmap, str) else cmap
    array = xr.DataArray(np.asarray(values, dtype=np.float64)[::-1], dims=("y", "x"))
    # Datashader draws the first row at the bottom; flipping it keeps row 0 at the top.
    return tf.shade(array, cmap=colours, how=how, span=span, min_alpha=255).to_pil()


def scatter_figure(view: ScatterView) -> Image.Image:
    """The scatterplot over its visible range: Mode 1 coloured by block, Mode 2 by column
    (sizes are not drawn), selected points in black."""
    import datashader as ds  # on first use: see mambapanel.views.scatter
    import datashader.transfer_functions as tf

    if view.points is None:
        return _blank()
    frame = pd.DataFrame({"x": view.points.x, "y": view.points.y})
    x_range, y_range = _visible(view)
    canvas = ds.Canvas(PANEL, PANEL, x_range=x_range, y_range=y_range)
    if view.mode == 1:
        n_blocks = view.run.n_blocks(view.stage)
        frame["block"] = pd.Categorical(view.points.block, categories=range(n_blocks))
        shaded = tf.shade(
            canvas.points(frame, "x", "y", ds.count_cat("block")),
            color_key=block_colours(n_blocks),
            min_alpha=120,
        )
    else:
        frame["col"] = view.points.col.astype(np.float64)
        shaded = tf.shade(
            canvas.points(frame, "x", "y", ds.mean("col")),
            cmap=hex_colours(COLUMN_CMAP),
            span=(0, max(float(frame["col"].max()), 1.0)),
            how="linear",
            min_alpha=255,
        )
    layers = [tf.spread(shaded, px=2)]
    if len(view.selected):
        chosen = canvas.points(frame.iloc[view.selected], "x", "y", ds.count())
        layers.append(tf.spread(tf.shade(chosen, cmap=[HIGHLIGHT], min_alpha=255), px=1))
    return tf.set_background(tf.stack(*layers), "white").to_pil().convert("RGB")


def patch_figure(view: PatchView) -> Image.Image:
    """The patch grid as shown: attention (the view's colour scale) or selection."""
    values = view.values()
    if view.shows_attention:
        how = "log" if view.scale == "log" else "linear"
        picture = shade(values, attention_cmap(view.scale), colour_limits(values, view.scale), how)
    else:
        picture = shade(values, [GREY, RED], (0, 1), "linear")
    return _outlined(_on_white(picture), view.queried, values.shape)


def image_figure(view: ImageView) -> Image.Image:
    """The thumbnail with the map shown (attention or relevance) blended in at the view's
    opacity."""
    thumbnail = Image.fromarray(view.run.thumbnail(view.image)).convert("RGBA")
    values = view.layer_values()
    height, width = view.run.grid(view.stage)
    if values is not None:
        values = scaled(values, view.scale)
        how = "log" if view.scale == "log" else "linear"
        layer = shade(values, attention_cmap(view.scale), colour_limits(values, view.scale), how)
        layer = layer.resize(thumbnail.size, Image.Resampling.NEAREST)
        alpha = np.asarray(layer)[..., 3].astype(np.float64) * view.opacity
        layer.putalpha(Image.fromarray(alpha.astype(np.uint8)))
        thumbnail = Image.alpha_composite(thumbnail, layer)
    return _outlined(thumbnail.convert("RGB"), view.queried, (height, width))


def figures_png(rows: Sequence[Sequence[tuple[str, Image.Image]]]) -> bytes:
    """Figures laid out in rows, each under its caption, as PNG bytes."""
    columns = max(len(row) for row in rows)
    cell = (PANEL + MARGIN, PANEL + CAPTION + MARGIN)
    sheet = Image.new("RGB", (columns * cell[0] + MARGIN, len(rows) * cell[1] + MARGIN), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, (caption, figure) in enumerate(row):
            left, top = MARGIN + c * cell[0], MARGIN + r * cell[1]
            draw.text((left, top + 2), caption, fill="black")
            figure = figure.copy()
            figure.thumbnail((PANEL, PANEL))  # fit, keeping the aspect ratio
            sheet.paste(figure, (left, top + CAPTION))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def side_figures(
    scatter: ScatterView, patches: PatchView, image: ImageView
) -> list[tuple[str, Image.Image]]:
    """The three figures of one side, with captions that say what each shows."""
    run = scatter.run
    where = "all blocks" if scatter.block is None else f"block {scatter.block}"
    # The query's attention and the colour scale are named where attention is drawn.
    query = query_text(patches.queried, patches.direction) if patches.queried else ""
    scale = f" · {SCALE_LABELS[patches.scale]}"
    # A route's part of the attention, where one is shown (the image view: its image mean).
    patch_route = "" if patches.route is None else f" · route {patches.route}"
    image_route = f" · route {image.route} (mean)" if image.attention_of_route else ""
    patch_shows = f" {query}{patch_route}{scale}" if patches.shows_attention else ""
    image_shown = image.block is not None and image.queried
    image_shows = f", {query}{image_route}{scale}" if image_shown else ""
    return [
        (
            f"{run.name} · stage {scatter.stage} · {where} · {scatter.method}",
            scatter_figure(scatter),
        ),
        (f"patches: {patches.display}{patch_shows}", patch_figure(patches)),
        (f"{run.image_ids[image.image]}{image_shows}", image_figure(image)),
    ]


def selection_table(
    scatter: ScatterView, patches: PatchView
) -> tuple[list[str], list[list[object]]]:
    """The selection as (header, rows).

    Mode 2: one row per selected patch (``patch_row``, ``patch_col``), or every patch when
    none is selected, with the attention the patch view colours it by: the mean
    ``attention_mean`` from the query patches to it (``direction`` from), or from it to
    them (to); ``query`` lists them as the URL does (``row,col;row,col``), and it and the
    attention are empty without a query. Mode 1: one row per selected (image, block) point.
    """
    run, stage, block = scatter.run, scatter.stage, scatter.block
    if scatter.mode == 1:
        points = scatter.points
        header = ["run", "stage", "block", "image", "image_id", "x", "y"]
        rows = [
            [run.name, stage, int(points.block[i]), int(points.image[i]),
             run.image_ids[int(points.image[i])], float(points.x[i]), float(points.y[i])]
            for i in scatter.selected
        ]  # fmt: skip
        return header, rows
    header = ["run", "stage", "block", "direction", "query", "patch_row", "patch_col", "attention"]
    height, width = run.grid(stage)
    shown = patches.selection or [(r, c) for r in range(height) for c in range(width)]
    query, direction = patches.queried, patches.direction
    attention = run.query_attention(stage, block, query, direction) if query else None
    rows = [
        [run.name, stage, block, direction, format_patches(query), r, c,
         "" if attention is None else float(attention[r, c])]
        for r, c in shown
    ]  # fmt: skip
    return header, rows


def csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows as CSV text, with a header line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _visible(view: ScatterView) -> tuple[tuple[float, float], tuple[float, float]]:
    ranges = view.ranges
    if ranges is not None and ranges.x_range is not None and ranges.y_range is not None:
        return tuple(ranges.x_range), tuple(ranges.y_range)
    return padded_range(view.points.x), padded_range(view.points.y)


def _on_white(picture: Image.Image) -> Image.Image:
    background = Image.new("RGBA", picture.size, "white")
    return Image.alpha_composite(background, picture).convert("RGB")


def _outlined(
    picture: Image.Image, patches: list[tuple[int, int]], grid: tuple[int, int]
) -> Image.Image:
    """Scaled up to about :data:`PANEL` pixels (nearest: patches stay sharp), with the
    query patches outlined."""
    height, width = grid
    factor = max(1, PANEL // max(height, width))
    picture = picture.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(picture)
    for row, col in patches:
        box = (col * factor, row * factor, (col + 1) * factor - 1, (row + 1) * factor - 1)
        draw.rectangle(box, outline=OUTLINE, width=max(2, factor // 6))
    return picture


def _blank() -> Image.Image:
    return Image.new("RGB", (PANEL, PANEL), "white")
