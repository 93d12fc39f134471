"""The Patch view: the stage's p x p patches as an ``hv.Image``. ``selection`` display: the
patches selected in the scatterplot red on grey; ``attention`` display: every patch coloured
by the mean attention from (or to) the query patches (``attention_mean``, or one route's
part of it), outlined: those selected with the box or lasso tool on the grid, or the
clicked patch; the run's scan routes drawn over it on request.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import param

from mambapanel.views.data import DIRECTIONS, Patch, RunData
from mambapanel.views.geometry import PointIndex
from mambapanel.views.hold import held
from mambapanel.views.inplace import Drawn, write_columns
from mambapanel.views.problems import Problems
from mambapanel.views.style import (
    BUTTON_HEIGHT,
    GREY,
    OUTLINE,
    RED,
    SCALE_LABELS,
    SCALES,
    attention_cmap,
    colour_limits,
    figure_pane,
    named,
    scaled,
)

FRAME = 250  # pixels of the longer side of a patch grid (axes and colour bar excluded)
ROUTE_ARROWS = 64  # direction marks along a drawn route
# Route 0 black, the others in colours that stand out on yellow to red and on grey.
ROUTE_COLOURS = ("#000000", "#2166ac", "#7b3294", "#008837")
UNREADABLE = (2.0, 3.0)  # the colour range of a grid of ones: all below it (positive: log)


def patch_grid(values: np.ndarray, vdim: str) -> hv.Image:
    """A (height, width) array as an image whose pixel (row, col) is centred on integer
    coordinates, with its own dimensions ``col`` and ``row`` so that its axes are never
    linked to a scatterplot's ``x`` and ``y``."""
    height, width = values.shape
    return hv.Image((np.arange(width), np.arange(height), values), ["col", "row"], [vdim])


def query_parameter() -> param.List:
    """The query patches, a parameter of each view that shows their attention."""
    return param.List(
        default=[],
        item_type=tuple,
        doc="Patches (row, col) selected with the box or lasso tool on the patch grid: the "
        "attention shown is their mean. Empty: the clicked patch's.",
    )


def direction_parameter() -> param.Selector:
    """Which attention of the query patches is shown, a parameter of each view."""
    return param.Selector(
        default="from",
        objects=list(DIRECTIONS),
        doc="from: the attention the query patches give each patch (rows of the matrix); "
        "to: the attention each patch gives them (columns).",
    )


def queried(query: list[Patch], patch: Patch | None) -> list[Patch]:
    """The patches whose attention is shown: the ``query`` selected on the grid, or else
    the clicked ``patch`` alone (or none)."""
    return list(query) if query else [] if patch is None else [patch]


def query_text(patches: list[Patch], direction: str, listed: int = 3) -> str:
    """What the attention of ``patches`` is, in words: ``from (2, 5)``, ``to 6 patches
    (mean): (1, 2) (1, 3) (2, 2) …`` (the first ``listed`` named)."""
    names = [f"({row}, {col})" for row, col in patches]
    if len(names) == 1:
        return f"{direction} {names[0]}"
    text = f"{direction} {len(names)} patches (mean)"
    if listed:
        text += f": {' '.join(names[:listed])}{' …' if len(names) > listed else ''}"
    return text


def box(patches: list[Patch]) -> dict[str, np.ndarray]:
    """The outlines of ``patches`` (row, col) as the columns of a quad glyph: left, bottom,
    right and top in patch coordinates (col, row), one box per patch."""
    row, col = np.array(patches, dtype=np.float64).reshape(-1, 2).T
    return {"left": col - 0.5, "bottom": row - 0.5, "right": col + 0.5, "top": row + 0.5}


def outline(patches: list[Patch]) -> hv.Rectangles:
    """A box around each of ``patches`` (row, col)."""
    return hv.Rectangles(tuple(box(patches).values()), ["col", "row", "col2", "row2"]).opts(
        fill_alpha=0.0,
        line_color=OUTLINE,
        line_width=3,
        # A box or lasso selection on the grid is drawn by these outlines; Bokeh's own
        # (client side) selection styling would fade the others.
        nonselection_alpha=1.0,
        selection_alpha=1.0,
    )


def click(view: param.Parameterized, x: float | None, y: float | None) -> None:
    """A tap at (col, row) = (x, y) on ``view``'s grid clicks the patch there, which becomes
    the query alone (outside the grid: nothing changes)."""
    patch = patch_at(view.run.grid(view.stage), x, y)
    if patch is not None:
        view.param.update(patch=patch, query=[])


def grid_patches(grid: tuple[int, int]) -> PointIndex:
    """The centres of a grid's patches (col, row), in row-major order, for selection."""
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    return PointIndex(cols, rows)


def route_path(
    routes: np.ndarray, route: int, full_grid: tuple[int, int], pool: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(col, row) of each step of ``route``, in the coordinates of the stored grid: the
    centre of each full-grid patch it visits (a pooled grid's patch covers ``pool`` x
    ``pool`` of them, so the path runs inside it).

    Parameters
    ----------
    routes : int(K, L), the patches row-major on ``full_grid`` (``RunData.routes``)
    """
    rows, cols = np.divmod(routes[route], full_grid[1])
    return (cols + 0.5) / pool - 0.5, (rows + 0.5) / pool - 0.5


def route_overlay(
    routes: np.ndarray | None, drawn: list[int], full_grid: tuple[int, int], pool: int
) -> hv.Overlay:
    """The ``drawn`` routes as paths over a patch grid, each with its direction: a circle at
    its first patch, a square at its last, and triangles along it pointing the way it runs
    (about :data:`ROUTE_ARROWS` of them)."""
    layers = []
    for route in [] if routes is None else [k for k in drawn if 0 <= k < len(routes)]:
        cols, rows = route_path(routes, route, full_grid, pool)
        colour = ROUTE_COLOURS[route % len(ROUTE_COLOURS)]
        every = max(1, len(cols) // ROUTE_ARROWS)
        middle = np.arange(0, len(cols) - 1, every)
        # In degrees (HoloViews turns them into Bokeh's radians), anticlockwise from a
        # triangle's tip pointing up the screen; rows run down the screen.
        step_cols, step_rows = cols[middle + 1] - cols[middle], rows[middle + 1] - rows[middle]
        angle = np.degrees(np.arctan2(-step_cols, -step_rows))
        arrows = {
            "col": (cols[middle] + cols[middle + 1]) / 2,
            "row": (rows[middle] + rows[middle + 1]) / 2,
            "angle": angle,
        }
        layers += [
            hv.Path([(cols, rows)], ["col", "row"]).opts(color=colour, line_width=1.5, alpha=0.8),
            hv.Points(arrows, ["col", "row"], ["angle"]).opts(
                marker="triangle", angle=hv.dim("angle"), size=7, color=colour, tools=[]
            ),
            hv.Points(([cols[0]], [rows[0]]), ["col", "row"]).opts(
                marker="circle", size=10, color=colour, line_color="white", tools=[]
            ),
            hv.Points(([cols[-1]], [rows[-1]]), ["col", "row"]).opts(
                marker="square", size=9, color=colour, line_color="white", tools=[]
            ),
        ]
    return hv.Overlay(layers)


def route_parameter(doc: str) -> param.Integer:
    """A view's ``route`` parameter: a route's index, or None for every route merged."""
    return param.Integer(default=None, allow_None=True, bounds=(0, None), doc=doc)


def patch_at(grid: tuple[int, int], x: float | None, y: float | None) -> Patch | None:
    """The patch (row, col) under a tap at (col, row) = (x, y) on a grid (height, width),
    or None outside it."""
    if x is None or y is None:
        return None
    row, col = round(y), round(x)
    return (row, col) if 0 <= row < grid[0] and 0 <= col < grid[1] else None


def grid_opts(title: str, grid: tuple[int, int]) -> dict:
    """Options of a patch grid (height, width): row 0 at the top, square patches (the frame,
    not the whole plot, is sized, so a colour bar does not squeeze the grid), tap, hover."""
    height, width = grid
    return dict(
        title=title,
        frame_width=round(FRAME * min(1, width / height)),
        frame_height=round(FRAME * min(1, height / width)),
        invert_yaxis=True,
        tools=["tap", "hover"],
        active_tools=["tap"],
        framewise=True,
    )


class PatchView(pn.viewable.Viewer):
    """The p x p patches of one stage, linked to the scatterplot; a tap clicks a patch, the
    box and lasso tools select query patches."""

    run = param.ClassSelector(class_=RunData, doc="The run whose attention is shown.")
    stage = param.Integer(default=0, bounds=(0, None), doc="Stage of the model.")
    block = param.Integer(
        default=None,
        allow_None=True,
        bounds=(0, None),
        doc="Block whose attention_mean colours the patches; None (Mode 1) shows no attention.",
    )
    patch = param.Tuple(
        default=None, length=2, allow_None=True, doc="(row, col) of the clicked patch."
    )
    selection = param.List(
        default=[], item_type=tuple, doc="Patches (row, col) selected in the scatterplot."
    )
    query = query_parameter()
    direction = direction_parameter()
    scale = param.Selector(
        default="strength", objects=list(SCALES), doc="Colour scale of attention (style.SCALES)."
    )
    routes = param.List(
        default=[], item_type=int, doc="Scan routes drawn over the grid (route_overlay)."
    )
    route = route_parameter(
        "Route whose part of the attention is shown (attention_mean_by_route); None: the "
        "merged attention of every route."
    )
    display = param.Selector(
        default="selection",
        objects=["selection", "attention"],
        doc="Show the selected patches, or the attention of the query patches. A new "
        "selection shows the selection, a click or a query the attention.",
    )

    # Derived from display, block and the query: whether the grid shows attention. A Bokeh
    # plot keeps its colour bar and colour scale, so a change of it draws the plot anew.
    _attention = param.Boolean(default=False, precedence=-1)

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.tap: hv.streams.Tap | None = None
        self.box: hv.streams.BoundsXY | None = None
        self.lasso: hv.streams.Lasso | None = None
        self.problems = Problems()
        self._plot = pn.Column(sizing_mode="stretch_width")
        self._display = pn.widgets.RadioButtonGroup.from_param(
            self.param.display, color="light", width=FRAME, height=BUTTON_HEIGHT
        )
        self._build()

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self._display, self.problems.pane, self._plot, sizing_mode="stretch_width")

    @property
    def queried(self) -> list[Patch]:
        """The query patches (:func:`queried`)."""
        return queried(self.query, self.patch)

    @property
    def shows_attention(self) -> bool:
        """Attention needs a block (Mode 2) and a query; otherwise the selection."""
        return self.display == "attention" and self.block is not None and bool(self.queried)

    @param.depends("display", "block", "patch", "query", watch=True, on_init=True)
    def _update_attention(self) -> None:
        self._attention = self.shows_attention

    def values(self) -> np.ndarray:
        """What the grid shows, f(height, width): the mean attention of the query patches
        (:meth:`RunData.query_attention`) as coloured on the scale
        (:func:`mambapanel.views.style.scaled`), or 1 for a selected patch and 0 elsewhere."""
        if self.shows_attention:
            mean = self.run.query_attention(
                self.stage, self.block, self.queried, self.direction, self.route
            )
            return scaled(mean, self.scale)
        values = np.zeros(self.run.grid(self.stage), dtype=np.float32)
        if self.selection:
            values[tuple(np.array(self.selection).T)] = 1
        return values

    @param.depends("selection", watch=True)
    def _show_selection(self) -> None:
        if self.selection:
            self.display = "selection"

    @param.depends("patch", "query", watch=True)
    def _show_attention(self) -> None:
        if self.queried:
            self.display = "attention"

    def select(self, x: float | None, y: float | None) -> None:
        """A tap at (col, row) = (x, y) clicks the patch there (outside the grid: nothing)."""
        click(self, x, y)

    def select_bounds(self, bounds: tuple[float, float, float, float] | None) -> None:
        """The patches whose centres lie in a box (left, bottom, right, top) in (col, row)
        become the query (none: nothing changes)."""
        if bounds is not None:
            (left, right), (bottom, top) = sorted(bounds[::2]), sorted(bounds[1::2])
            self._set_query(
                grid_patches(self.run.grid(self.stage)).in_bounds(left, bottom, right, top)
            )

    def select_polygon(self, geometry: np.ndarray | None) -> None:
        """The patches whose centres lie in a lasso polygon f64(V, 2) of (col, row) become
        the query (none: nothing changes)."""
        if geometry is not None:
            self._set_query(grid_patches(self.run.grid(self.stage)).in_polygon(geometry))

    def _set_query(self, inside: np.ndarray) -> None:
        rows, cols = np.divmod(np.flatnonzero(inside), self.run.grid(self.stage)[1])
        if len(rows):
            query = list(zip(rows.tolist(), cols.tolist(), strict=True))
            self.param.update(query=query, patch=None)

    @param.depends("run", "stage", "scale", "_attention", "routes", watch=True)
    def _build(self) -> None:
        """Draw anew (a Bokeh plot keeps its grid size, colour bar and colour scale); other
        changes of block, query (clicked patch), direction and selection are written into
        the plot in place."""
        self._grid_plots = Drawn(self._draw_grid)
        self._outline_plots = Drawn(lambda plot: write_columns(plot, **box(self.queried)))
        grid = self._grid()
        # Streams attach to the grid, not to the overlay: HoloViews does not deliver the
        # events of an overlay's plot to its streams.
        self.tap = hv.streams.Tap(source=grid)
        self.box = hv.streams.BoundsXY(source=grid)
        self.lasso = hv.streams.Lasso(source=grid)
        self.tap.add_subscriber(held(self.select))
        self.box.add_subscriber(held(self.select_bounds))
        self.lasso.add_subscriber(held(self.select_polygon))
        outlined = outline(self.queried).opts(hooks=[self._outline_plots.hook])
        figure = grid * outlined
        if self.routes:
            stage = self.stage
            routes = self.problems.read("routes", lambda: self.run.routes(stage), None)
            pool, full_grid = self.run.pool(stage), self.run.full_grid(stage)
            figure = figure * route_overlay(routes, self.routes, full_grid, pool)
        self._plot[:] = [figure_pane(figure, fit_width=True)]

    @param.depends("block", "patch", "query", "direction", "selection", "route", watch=True)
    def _redraw(self) -> None:
        self._grid_plots.redraw()
        self._outline_plots.redraw()

    def _content(self) -> tuple[np.ndarray, str, tuple[float, float]]:
        """What the grid shows: values (see :meth:`values`), title and colour range."""
        if self.shows_attention:
            shown = query_text(self.queried, self.direction, listed=0)
            part = "" if self.route is None else f", route {self.route}"
            title = f"block {self.block}{part}: attention {shown}"
            values = self.problems.read("attention", self.values, None)
            if values is None:  # the message is above the grid
                # A blank grid: every value below the colour range (white, see _grid). Not
                # NaN: HoloViews warns of an all-NaN range.
                values = np.ones(self.run.grid(self.stage), dtype=np.float32)
                return values, f"{title} cannot be read", UNREADABLE
            return values, title, colour_limits(values, self.scale)
        self.problems.forget("attention")
        values = self.values()
        title = f"stage {self.stage}: {len(self.selection)} selected patches"
        if self.block is None and not self.selection:
            title = f"stage {self.stage}: pick a block for attention"
        return values, title, (0, 1)

    def _grid(self) -> hv.Image:
        values, title, limits = self._content()
        options = grid_opts(title, values.shape)
        options["tools"] = [*options["tools"], "box_select", "lasso_select"]
        hooks = [named("patch-view", fit=True), self._grid_plots.hook]
        if self.shows_attention:
            return patch_grid(values, "attention").opts(
                cmap=attention_cmap(self.scale),
                clim=limits,
                logz=self.scale == "log",
                colorbar=True,
                clabel=SCALE_LABELS[self.scale],
                clipping_colors={"NaN": "white", "min": "white"},
                hooks=hooks,
                **options,
            )
        return patch_grid(values, "selected").opts(
            cmap=[GREY, RED], clim=limits, colorbar=False, hooks=hooks, **options
        )

    def _draw_grid(self, plot: object) -> None:
        """Write what :meth:`_grid` would show into one of its plots."""
        values, title, (low, high) = self._content()
        write_columns(plot, image=[values])
        plot.state.title.text = title
        plot.handles["color_mapper"].update(low=low, high=high)
