"""The Scatterplot view: Mode 1 (no block) shows the m x n inter-block points of a stage
coloured by block; Mode 2 (a block) shows its p² intra-block points, colour = column,
size = row. Large point sets go through Datashader. Lasso and box selection are filtered
here, on the server.
"""

from __future__ import annotations

from html import escape

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from mambapanel.store import RunError
from mambapanel.views.data import Embedding, Patch, RunData
from mambapanel.views.geometry import PointIndex
from mambapanel.views.hold import held
from mambapanel.views.inplace import Drawn, write_columns
from mambapanel.views.style import (
    BUTTON_HEIGHT,
    COLUMN_CMAP,
    HIGHLIGHT,
    block_colours,
    figure_pane,
    hex_colours,
    named,
)

FRAME_WIDTH, FRAME_HEIGHT = 380, 330  # pixels of the plotting area, or its shape (fit)
MIN_BORDER_LEFT = 90  # pixels left of the plotting area: the y axis, its ticks and label
# Mode 2 point sizes in screen pixels: row 0 smallest, the last row largest (the paper's
# encoding of the row).
SMALLEST, LARGEST = 4.0, 13.0
# A tap picks the nearest Mode 1 point within this fraction of the visible axes.
PICK_RADIUS = 0.03
MODE1_SIZE = 6.0
# dynspread grows isolated pixels up to this many pixels, so that a few points are visible
# among millions without blurring dense regions.
SPREAD_PX = 3
# More glyphs than this are drawn with WebGL, fewer on a canvas (see style.named).
WEBGL_ABOVE = 10_000
# Datashader is imported on first use, not with this module: Numba compiles its kernels at
# import and on first call (seconds), which a dashboard of a few thousand points
# (1,000 images x 8 blocks, or 3,136 patches) should not wait for.


def padded_range(values: np.ndarray, fraction: float = 0.05) -> tuple[float, float]:
    """(low, high) of ``values`` widened by ``fraction`` of their span on each side, so
    that the outermost points are not cut by the frame (a zero span gets +-1)."""
    low, high = float(np.min(values)), float(np.max(values))
    pad = (high - low) * fraction or 1.0
    return low - pad, high + pad


class ScatterView(pn.viewable.Viewer):
    """Scatterplot of a stage's stored embedding; lasso, box and tap select on the server.

    Mode 1 (``block`` None): one point per (image, block), coloured by block; a tap on a
    point sets ``image`` and ``block``, which opens Mode 2 for that block. Mode 2: one point
    per patch, colour = column, size = row; a tap on a point sets ``patch``.

    More than ``datashade_above`` points (Mode 1's m x n reaches millions) go through
    Datashader, which aggregates them to pixels on the server; fewer are Bokeh glyphs, which
    alone can show the row as size and a point's (row, col) on hover.
    """

    run = param.ClassSelector(class_=RunData, doc="The run whose embeddings are shown.")
    stage = param.Integer(default=0, bounds=(0, None), doc="Stage of the model.")
    block = param.Integer(
        default=None,
        allow_None=True,
        bounds=(0, None),
        doc="None: Mode 1, every (image, block) of the stage; a block: Mode 2, its patches.",
    )
    method = param.String(default="pca", doc="Stored reduction: pca, tsne or umap.")
    image = param.Integer(default=0, bounds=(0, None), doc="Image of the last Mode 1 point tapped.")
    patch = param.Tuple(
        default=None,
        length=2,
        allow_None=True,
        doc="(row, col) of the last Mode 2 point tapped.",
    )
    datashade_above = param.Integer(
        default=50_000,
        bounds=(0, None),
        doc="More points than this are rendered by Datashader (aggregated on the server, "
        "re-aggregated on zoom and pan); fewer are Bokeh glyphs, with hover and, in Mode 2, "
        "size = row.",
    )
    selected = param.Array(
        default=np.empty(0, dtype=np.int64),
        doc="Indices of the selected points: image * n_blocks + block in Mode 1, the patch "
        "row * width + col in Mode 2.",
    )

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.lasso: hv.streams.Lasso | None = None
        self.box: hv.streams.BoundsXY | None = None
        self.tap: hv.streams.Tap | None = None
        self.ranges: hv.streams.RangeXY | None = None
        self.points: Embedding | None = None
        self._index: PointIndex | None = None
        self._highlighted: Drawn | None = None  # the highlight's plots (Bokeh glyphs only)
        self._clear = pn.widgets.Button(
            label="Clear selection", color="light", width=130, height=BUTTON_HEIGHT
        )
        self._clear.on_click(lambda _: self.clear())
        self._plot = pn.Column(sizing_mode="stretch_width")
        self._build()

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self._plot, self._clear, sizing_mode="stretch_width")

    @property
    def mode(self) -> int:
        """1 (inter-block) or 2 (intra-block)."""
        return 1 if self.block is None else 2

    def clear(self) -> None:
        """Select nothing."""
        self.selected = np.empty(0, dtype=np.int64)

    def select_polygon(self, geometry: np.ndarray | None) -> None:
        """Select the points inside a lasso polygon, f64(V, 2) in data coordinates."""
        if geometry is not None and self._index is not None:
            self.selected = np.flatnonzero(self._index.in_polygon(geometry))

    def select_bounds(self, bounds: tuple[float, float, float, float] | None) -> None:
        """Select the points in a box (left, bottom, right, top) in data coordinates."""
        if bounds is not None and self._index is not None:
            self.selected = np.flatnonzero(self._index.in_bounds(*bounds))

    def pick(self, x: float | None, y: float | None) -> None:
        """A tap at (x, y): the nearest point within :data:`PICK_RADIUS` of the visible axes
        opens its image and block (Mode 1) or becomes the clicked patch (Mode 2)."""
        if x is None or y is None or self._index is None or not len(self._index):
            return
        x_scale, y_scale = self._visible_extent()
        index, distance = self._index.nearest(x, y, x_scale, y_scale)
        if distance > PICK_RADIUS:
            return
        points = self.points
        if self.mode == 1:
            self.param.update(image=int(points.image[index]), block=int(points.block[index]))
        else:
            self.patch = (int(points.row[index]), int(points.col[index]))

    def selected_patches(self) -> list[Patch]:
        """The selected points as patches (row, col); [] in Mode 1."""
        if self.mode == 1 or self.points is None:
            return []
        rows, cols = self.points.row[self.selected], self.points.col[self.selected]
        return list(zip(rows.tolist(), cols.tolist(), strict=True))

    def select_patches(self, patches: list[Patch]) -> None:
        """Select the Mode 2 points of ``patches`` (row, col); ignored in Mode 1."""
        if self.mode == 1 or self.points is None:
            return
        width = self.run.grid(self.stage)[1]
        self.selected = np.array([row * width + col for row, col in patches], dtype=np.int64)

    def _visible_extent(self) -> tuple[float, float]:
        """Width and height of the visible axes (the data extent before any zoom)."""
        ranges = self.ranges
        if ranges is not None and ranges.x_range is not None and ranges.y_range is not None:
            spans = (np.ptp(ranges.x_range), np.ptp(ranges.y_range))
        else:
            spans = (np.ptp(self.points.x), np.ptp(self.points.y))
        return tuple(float(span) if span > 0 else 1.0 for span in spans)

    @property
    def shaded(self) -> bool:
        """Whether the points go through Datashader."""
        return self.points is not None and len(self.points) > self.datashade_above

    @param.depends("run", "stage", "block", "method", "datashade_above", watch=True)
    def _build(self) -> None:
        """Load the points of the current stage, block and method, and draw them anew with
        new streams; a stored embedding that is missing shows why instead."""
        # The old points go first: watchers of `selected` read them, and they no longer
        # match the mode.
        self.points = self._index = self._highlighted = None
        self.lasso = self.box = self.tap = self.ranges = None
        self.selected = np.empty(0, dtype=np.int64)
        if self.run is None:
            self._plot[:] = [pn.pane.Alert("No run.", alert_type="warning")]
            return
        try:
            if self.mode == 1:
                self.points = self.run.inter_embedding(self.stage, self.method)
            else:
                self.points = self.run.intra_embedding(self.stage, self.block, self.method)
        except KeyError as err:  # not stored (yet): what to run is in the message
            self._plot[:] = [pn.pane.Alert(escape(str(err.args[0])), alert_type="warning")]
            return
        except RunError as err:  # damaged
            self._plot[:] = [pn.pane.Alert(escape(str(err)), alert_type="danger")]
            return
        self._index = PointIndex(self.points.x, self.points.y)
        frame = self._frame()
        base = self._shaded(frame) if self.shaded else self._glyphs(frame)
        # Streams attach to the points, not to the overlay: HoloViews does not deliver the
        # events of an overlay's plot to its streams.
        self.lasso = hv.streams.Lasso(source=base)
        self.box = hv.streams.BoundsXY(source=base)
        self.tap = hv.streams.Tap(source=base)
        self.ranges = hv.streams.RangeXY(source=base)
        # A selection is written in place (highlight, patch grid), or redraws one figure
        # through HoloViews (the Datashader highlight): nothing for a freeze to batch.
        self.lasso.add_subscriber(held(self.select_polygon, freeze=False))
        self.box.add_subscriber(held(self.select_bounds, freeze=False))
        self.tap.add_subscriber(held(self.pick))
        self._plot[:] = [figure_pane(base * self._highlight(frame), fit_width=True)]

    def _title(self) -> str:
        if self.mode == 1:
            n_images, n_blocks = len(self.run.image_ids), self.run.n_blocks(self.stage)
            what = f"all blocks, {n_blocks} blocks x {n_images} images"
        else:
            what = f"block {self.block}, {len(self.points)} patches"
        return f"{self.run.name} · stage {self.stage} · {what} · {self.method}"

    def _opts(self) -> dict:
        webgl = not self.shaded and len(self.points) > WEBGL_ABOVE
        return dict(
            frame_width=FRAME_WIDTH,
            frame_height=FRAME_HEIGHT,
            # Embedding coordinates have no unit; short labels keep the ticks apart.
            xformatter="%.2g",
            yformatter="%.2g",
            title=self._title(),
            # The points' own extent, padded as Datashader's ranges are (:meth:`_ranges`).
            xlim=padded_range(self.points.x),
            ylim=padded_range(self.points.y),
            tools=["lasso_select", "box_select", "tap"],
            active_tools=["wheel_zoom", "pan", "tap"],
            hooks=[named("scatterplot", webgl=webgl, fit=True)],
            # Room for the longest tick labels: the frames of two sides' scatterplots then
            # start at the same place and have the same size, whatever their ticks.
            backend_opts={"plot.min_border_left": MIN_BORDER_LEFT},
            xlabel=f"{self.method} 1",
            ylabel=f"{self.method} 2",
        )

    def _frame(self) -> pd.DataFrame:
        """The points as plotted: x, y and, in Mode 1, the block as a category and the image
        index; in Mode 2 row, col and the glyph size that encodes the row."""
        points = self.points
        frame = pd.DataFrame({"x": points.x, "y": points.y})
        if self.mode == 1:
            labels = [f"block {block}" for block in range(self.run.n_blocks(self.stage))]
            frame["block"] = pd.Categorical.from_codes(points.block, categories=labels)
            frame["image"] = points.image
        else:
            last_row = max(self.run.grid(self.stage)[0] - 1, 1)
            frame["row"], frame["col"] = points.row, points.col
            frame["size"] = SMALLEST + (LARGEST - SMALLEST) * points.row / last_row
        return frame

    def _glyphs(self, frame: pd.DataFrame) -> hv.Points:
        """Bokeh glyphs. Mode 1: colour = block, with a legend; Mode 2: colour = column,
        size = row. Hover gives (image, block) or (row, col)."""
        options = self._opts()
        options["tools"] = [*options["tools"], "hover"]
        if self.mode == 1:
            labels = list(frame["block"].cat.categories)
            style = dict(
                color="block",
                cmap=dict(zip(labels, block_colours(len(labels)), strict=True)),
                size=MODE1_SIZE,
                show_legend=True,
                legend_position="right",
                hover_tooltips=[("image", "@image"), ("block", "@block")],
            )
        else:
            style = dict(
                color="col",
                cmap=hex_colours(COLUMN_CMAP),
                size="size",
                colorbar=True,
                clabel="col",
                hover_tooltips=[("row", "@row"), ("col", "@col")],
            )
        return hv.Points(frame, ["x", "y"], [c for c in frame if c not in ("x", "y")]).opts(
            line_color=None,
            # The server's selection is drawn by the highlight layer; Bokeh's own (client
            # side) selection styling would outlive "Clear selection".
            nonselection_alpha=1.0,
            selection_alpha=1.0,
            **style,
            **options,
        )

    def _shaded(self, frame: pd.DataFrame) -> hv.DynamicMap:
        """Datashader: Mode 1 coloured by block, with a legend; Mode 2 by mean column."""
        import datashader as ds
        from holoviews.operation.datashader import datashade, dynspread, rasterize

        points = hv.Points(frame, ["x", "y"], [c for c in frame if c not in ("x", "y")])
        if self.mode == 1:
            labels = list(frame["block"].cat.categories)
            shaded = datashade(
                points,
                aggregator=ds.count_cat("block"),
                color_key=dict(zip(labels, block_colours(len(labels)), strict=True)),
                min_alpha=120,
                **self._ranges(),
            )
            style = dict(legend_position="right")
        else:
            shaded = rasterize(points, aggregator=ds.mean("col"), **self._ranges())
            style = dict(cmap=hex_colours(COLUMN_CMAP), colorbar=True, clabel="col")
        return dynspread(shaded, max_px=SPREAD_PX, threshold=0.5).opts(**style, **self._opts())

    def _ranges(self) -> dict[str, tuple[float, float]]:
        """Datashader's ranges before any zoom: the points' extent, padded (Datashader
        otherwise aggregates over the bare extent and the outermost points sit on the edge)."""
        return {"x_range": padded_range(self.points.x), "y_range": padded_range(self.points.y)}

    def _highlight(self, frame: pd.DataFrame) -> hv.Points | hv.DynamicMap:
        """The selected points: a black ring around each glyph, written in place when
        ``selected`` changes (:mod:`mambapanel.views.inplace`); or black pixels when
        Datashader renders the points, re-shaded by HoloViews."""
        x, y = frame["x"].to_numpy(), frame["y"].to_numpy()
        ring = (frame["size"].to_numpy() if "size" in frame else np.full(len(x), MODE1_SIZE)) + 4

        def selected_points(selected: np.ndarray) -> hv.Points:
            return hv.Points((x[selected], y[selected], ring[selected]), ["x", "y"], ["ring"])

        if self.shaded:
            from holoviews.operation.datashader import datashade, dynspread

            dynamic = hv.DynamicMap(
                selected_points, streams=[hv.streams.Params(self, ["selected"])]
            )
            shaded = datashade(dynamic, cmap=[HIGHLIGHT], min_alpha=255, **self._ranges())
            return dynspread(shaded, max_px=SPREAD_PX)

        def draw(plot: object) -> None:
            selected = self.selected
            write_columns(plot, x=x[selected], y=y[selected], size=ring[selected])

        self._highlighted = Drawn(draw)
        return selected_points(self.selected).opts(
            marker="circle",
            size="ring",
            fill_alpha=0.0,
            line_color=HIGHLIGHT,
            line_width=1.5,
            hooks=[self._highlighted.hook],
        )

    @param.depends("selected", watch=True)
    def _redraw_highlight(self) -> None:
        if self._highlighted is not None:
            self._highlighted.redraw()
