"""Overviews: the Mode 1 scatterplot of every stage as small multiples (the study's Fig. 3),
and the attention from one patch in every block of every stage as small patch maps; a click
on one opens it in the Explorer (:class:`Overview`, the Explorer's Overview tab).

The small figures are Bokeh figures made here, not HoloViews elements: HoloViews took about
0.1 s of CPU per figure to render (its options, streams and plot classes), which a page of
a dozen small figures cannot afford; what a figure shows is written into its data source.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from html import escape

import numpy as np
import panel as pn
import param
from bokeh.events import Tap
from bokeh.models import ColumnDataSource, FixedTicker, LinearColorMapper
from bokeh.plotting import figure
from bokeh.transform import transform
from panel.io.state import set_curdoc

from mambapanel.store import RunError
from mambapanel.views import background
from mambapanel.views.data import Patch, RunData
from mambapanel.views.explorer import Explorer, _update
from mambapanel.views.geometry import patch_at_location
from mambapanel.views.problems import Problems
from mambapanel.views.scatter import padded_range
from mambapanel.views.style import (
    OUTLINE,
    SCALE_LABELS,
    SCALES,
    attention_cmap,
    block_colours,
    colour_limits,
    scaled,
)

MULTIPLE = 190  # pixels of a stage's small multiple (its plotting area)
MULTIPLE_SIZE = 4.0  # a point of a small multiple, screen pixels
MAP = 96  # pixels of the longer side of a block's patch map
SHOWN_LINE = 3  # the outline of the stage shown in the Explorer, pixels
FRAME_LINE = "#e5e5e5"  # the outline of the other stages
# How a block map's colours read on each scale: every map is coloured on its own range.
RANGES = {
    "strength": "each map on its own range: lightest = its weakest, darkest = its strongest",
    "signed": "each map on its own symmetric range: white = zero, darkest = its largest |α|",
    "log": "each map on its own range of log |α|; exact zeros uncoloured",
}


def small_figure(
    name: str, title: str, width: int, height: int, x_range: tuple, y_range: tuple
) -> figure:
    """A small figure: no axes, grid or toolbar, no tools (a click opens it; no wheel zoom
    to catch the page's scrolling), its plotting area ``width`` x ``height`` pixels, named
    ``name`` (as :func:`mambapanel.views.style.named` names the views' figures)."""
    fig = figure(
        name=name,
        title=title,
        frame_width=width,
        frame_height=height,
        x_range=x_range,
        y_range=y_range,
        tools="",
        toolbar_location=None,
        output_backend="canvas",
    )
    fig.title.text_font_size = "9pt"
    fig.axis.visible = False
    fig.grid.visible = False
    return fig


def on_tap(fig: figure, callback: Callable[[float, float], None]) -> None:
    """``callback(x, y)`` on a click in ``fig`` (data coordinates), run as Panel runs its own
    callbacks: on a served page, scheduled on the session's event loop with Panel's state
    set. Run inside Bokeh's handling of the event, or held (``pn.io.hold``), the changes a
    click made to the Explorer reached the page only in part, or not at all (Chromium)."""

    def tapped(event: Tap) -> None:
        with set_curdoc(fig.document):
            pn.state.execute(partial(callback, event.x, event.y), schedule=True)

    fig.on_event(Tap, tapped)


def figures_row(figures: list[figure]) -> pn.Row:
    """Small figures side by side, a pane each (one layout of figures was drawn with frames
    of zero size when its tab opened, as the Findings tab's: see
    :func:`mambapanel.views.findings.run_panel`)."""
    return pn.Row(*(pn.pane.Bokeh(fig) for fig in figures), margin=0)


def centre(grid: tuple[int, int]) -> Patch:
    """The middle patch (row, col) of a grid (height, width)."""
    return grid[0] // 2, grid[1] // 2


class StageOverview(pn.viewable.Viewer):
    """The Mode 1 scatterplot of every stage of a run side by side, coloured by block as in
    the Scatterplot view; a click on one sets :attr:`opened` to its stage."""

    run = param.ClassSelector(class_=RunData, doc="The run whose stages are shown.")
    method = param.String(
        default="pca",
        doc="Stored reduction shown; a stage that does not store it shows its first stored one.",
    )
    stage = param.Integer(
        default=None, allow_None=True, doc="The stage shown in the Explorer: outlined."
    )
    opened = param.Integer(
        default=None,
        allow_None=True,
        doc="The stage whose multiple was clicked last (set on every click, also when equal).",
    )

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.figures: dict[int, figure] = {}
        self._plot = pn.Column(margin=0)
        self._build()

    def __panel__(self) -> pn.viewable.Viewable:
        return self._plot

    def method_of(self, stage: int) -> str | None:
        """The method drawn for ``stage``: :attr:`method` if stored, else the first stored
        one, None before ``python -m compute reduce``."""
        methods = self.run.methods(stage)
        return self.method if self.method in methods else next(iter(methods), None)

    def open(self, stage: int) -> None:
        """What a click on the multiple of ``stage`` does."""
        self.param.update(opened=stage)

    @param.depends("run", "method", watch=True)
    def _build(self) -> None:
        self.figures = {}
        notes = []
        n_blocks = max(self.run.n_blocks(stage) for stage in self.run.stages)
        for stage in self.run.stages:
            method = self.method_of(stage)
            if method is None:
                notes.append(
                    f"stage {stage}: no embedding stored (add one with `python -m compute "
                    f"reduce {self.run.path}`)"
                )
                continue
            try:
                points = self.run.inter_embedding(stage, method)
            except RunError as err:
                notes.append(str(err))
                continue
            self.figures[stage] = self._multiple(stage, method, points)
        legend = " ".join(
            f'<span style="color:{colour}">&#9679;</span>&nbsp;block&nbsp;{block}'
            for block, colour in enumerate(block_colours(n_blocks))
        )
        shown = [pn.pane.HTML(f"<p>{legend}</p>", margin=(0, 10))]
        if self.figures:
            shown.append(figures_row(list(self.figures.values())))
        shown += [pn.pane.Alert(escape(note), alert_type="warning") for note in notes]
        self._plot[:] = shown
        self._outline()

    def _multiple(self, stage: int, method: str, points: object) -> figure:
        n_blocks = self.run.n_blocks(stage)
        fig = small_figure(
            f"stage-overview-{stage}",
            f"stage {stage} · {n_blocks} blocks · {method}",
            MULTIPLE,
            MULTIPLE,
            padded_range(points.x),  # as in the Scatterplot view: no point on the frame
            padded_range(points.y),
        )
        # Block b is colour b of a linear mapper over the block numbers.
        colours = LinearColorMapper(palette=block_colours(n_blocks), low=-0.5, high=n_blocks - 0.5)
        source = ColumnDataSource({"x": points.x, "y": points.y, "block": points.block})
        fig.scatter(
            "x",
            "y",
            source=source,
            size=MULTIPLE_SIZE,
            line_color=None,
            fill_color=transform("block", colours),
        )
        on_tap(fig, lambda x, y: self.open(stage))
        return fig

    @param.depends("stage", watch=True)
    def _outline(self) -> None:
        """Outline the multiple of the stage shown in the Explorer."""
        for stage, fig in self.figures.items():
            shown = stage == self.stage
            with pn.io.hold(fig.document):
                fig.outline_line_color = OUTLINE if shown else FRAME_LINE
                fig.outline_line_width = SHOWN_LINE if shown else 1


def normalised(values: np.ndarray, scale: str) -> np.ndarray:
    """Attention as coloured on ``scale`` (:func:`mambapanel.views.style.scaled`), mapped
    linearly from its own colour range (:func:`mambapanel.views.style.colour_limits`) to
    [0, 1]; on the log scale, log |α| from the log of its range. Signed: zero at 0.5."""
    shown = scaled(values, scale).astype(np.float64)
    low, high = colour_limits(shown, scale)
    if scale == "log":
        shown, low, high = np.log10(shown), np.log10(low), np.log10(high)
    return (shown - low) / (high - low)


def side_by_side(maps: np.ndarray, gap: int) -> np.ndarray:
    """Maps f(n, height, width) in one row, f(height, n * width + (n - 1) * gap), with
    ``gap`` columns of NaN (no colour) between them."""
    n, height, width = maps.shape
    row = np.full((height, n * (width + gap) - gap), np.nan)
    for index, values in enumerate(maps):
        start = index * (width + gap)
        row[:, start : start + width] = values
    return row


class BlockOverview(pn.viewable.Viewer):
    """The attention (``attention_mean``) from one patch in every block of its stage as small
    patch maps side by side, and from the patch at the same image location in every other
    stage, a row of maps per stage; a click on a map sets :attr:`opened` to its (stage,
    block).

    Each map is coloured on its own range (:func:`normalised`). A stage's maps are one image
    in one figure (:func:`side_by_side`): a figure per map took seconds to render for 32
    maps. A change of patch reads each stage's rows once (:meth:`RunData.attention_rows`)
    and writes them into the figures drawn (:mod:`mambapanel.views.inplace`).
    """

    run = param.ClassSelector(class_=RunData, doc="The run whose attention is shown.")
    stage = param.Integer(default=0, bounds=(0, None), doc="The stage of the patch: drawn first.")
    patch = param.Tuple(
        default=None,
        length=2,
        allow_None=True,
        doc="(row, col) on the stage's grid; None: the grid's centre patch.",
    )
    scale = param.Selector(
        default="strength", objects=list(SCALES), doc="Colour scale of attention (style.SCALES)."
    )
    opened = param.Tuple(
        default=None,
        length=2,
        allow_None=True,
        doc="(stage, block) of the map clicked last (set on every click, also when equal).",
    )

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.figures: dict[int, figure] = {}
        self.problems = Problems()
        self._maps: dict[int, tuple[Patch, np.ndarray | None]] = {}
        self._maps_of: tuple | None = None  # the run, stage and patch read into _maps
        self._headings: dict[int, pn.pane.HTML] = {}
        self._sources: dict[int, tuple[ColumnDataSource, ColumnDataSource]] = {}
        self._plot = pn.Column(margin=0)
        self._build()

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self.problems.pane, self._plot, margin=0)

    @property
    def clicked(self) -> Patch:
        """The patch shown, on the stage's grid: :attr:`patch`, or the centre patch."""
        return self.patch if self.patch is not None else centre(self.run.grid(self.stage))

    def stages(self) -> list[int]:
        """The stages drawn, in order: :attr:`stage` first, then the others."""
        return [self.stage, *(stage for stage in self.run.stages if stage != self.stage)]

    def maps(self) -> dict[int, tuple[Patch, np.ndarray | None]]:
        """{stage: (the patch at the image location of :attr:`clicked` on the stage's grid,
        its attention_mean rows f32(block, height, width), or None where unreadable)},
        read once per run, stage and patch."""
        key = (self.run, self.stage, self.clicked)
        if self._maps_of != key:
            grid = self.run.grid(self.stage)
            self._maps = {}
            for stage in self.stages():
                patch = patch_at_location(self.clicked, grid, self.run.grid(stage))
                rows = self.problems.read(
                    f"stage {stage}", lambda s=stage, p=patch: self.run.attention_rows(s, p), None
                )
                self._maps[stage] = (patch, rows)
            self._maps_of = key
        return self._maps

    def patch_in(self, stage: int) -> Patch:
        """The patch shown on ``stage``'s grid (at the image location of :attr:`clicked`)."""
        return self.maps()[stage][0]

    def gap(self, stage: int) -> int:
        """Columns between two maps of ``stage``: an eighth of a map, at least one."""
        return max(1, self.run.grid(stage)[1] // 8)

    def row(self, stage: int) -> np.ndarray:
        """What the figure of ``stage`` shows: its maps side by side, each normalised on the
        scale (:func:`normalised`), f(height, n_blocks * (width + gap) - gap); blank (NaN)
        where unreadable."""
        rows = self.maps()[stage][1]
        if rows is None:
            rows = np.full((self.run.n_blocks(stage), *self.run.grid(stage)), np.nan)
        return side_by_side(
            np.array([normalised(values, self.scale) for values in rows]), self.gap(stage)
        )

    def block_at(self, stage: int, x: float | None) -> int | None:
        """The block of the map under a tap at column ``x`` of the figure of ``stage``
        (None in a gap or outside)."""
        if x is None:
            return None
        block, col = divmod(round(x), self.run.grid(stage)[1] + self.gap(stage))
        inside = 0 <= block < self.run.n_blocks(stage) and col < self.run.grid(stage)[1]
        return block if inside else None

    def boxes(self, stage: int) -> dict[str, np.ndarray]:
        """The outline of the patch shown in every map of ``stage`` (see :func:`box`)."""
        row, col = self.patch_in(stage)
        step = self.run.grid(stage)[1] + self.gap(stage)
        cols = col + step * np.arange(self.run.n_blocks(stage))
        return {
            "left": cols - 0.5,
            "bottom": np.full(len(cols), row - 0.5),
            "right": cols + 0.5,
            "top": np.full(len(cols), row + 0.5),
        }

    def open(self, stage: int, block: int | None) -> None:
        """What a click on the map of ``block`` of ``stage`` does (None: a gap, nothing)."""
        if block is not None:
            self.param.update(opened=(stage, block))

    def heading(self, stage: int) -> str:
        patch = self.patch_in(stage)
        where = "" if stage == self.stage else ", the same image location"
        clicked = "" if self.patch is not None else " (no patch clicked: the centre patch)"
        return (
            f"<p><b>stage {stage}</b>: attention from patch {patch}{where}{clicked} in each "
            f"block ({SCALE_LABELS[self.scale]}, {RANGES[self.scale]})</p>"
        )

    @param.depends("run", "stage", "scale", watch=True)
    def _build(self) -> None:
        """Draw anew (a stage's grid, the number of maps and the colour scale are fixed in
        the figures); a change of patch is written into them (:meth:`_redraw`)."""
        self.figures, self._headings, self._sources = {}, {}, {}
        rows = []
        for stage in self.stages():
            self._headings[stage] = pn.pane.HTML(self.heading(stage), margin=(0, 10))
            self.figures[stage] = self._figure(stage)
            rows += [self._headings[stage], pn.pane.Bokeh(self.figures[stage])]
        self._plot[:] = rows

    def _figure(self, stage: int) -> figure:
        height, width = self.run.grid(stage)
        n_blocks, step = self.run.n_blocks(stage), width + self.gap(stage)
        values = self.row(stage)
        pixel = MAP / max(height, width)
        fig = small_figure(
            f"block-overview-{stage}",
            f"stage {stage}",
            round(values.shape[1] * pixel),
            round(height * pixel),
            (-0.5, values.shape[1] - 0.5),
            (height - 0.5, -0.5),  # row 0 at the top
        )
        # The blocks named under their maps.
        centres = [block * step + (width - 1) / 2 for block in range(n_blocks)]
        fig.xaxis.visible = True
        fig.xaxis.ticker = FixedTicker(ticks=centres)
        fig.xaxis.major_label_overrides = {c: f"block {b}" for b, c in enumerate(centres)}
        fig.xaxis.major_tick_line_color = None
        fig.xaxis.axis_line_color = None
        colours = LinearColorMapper(
            palette=attention_cmap(self.scale), low=0, high=1, nan_color="white"
        )
        maps = ColumnDataSource({"image": [values]})
        fig.image(
            image="image",
            x=-0.5,
            y=-0.5,
            dw=values.shape[1],
            dh=height,
            source=maps,
            color_mapper=colours,
        )
        boxes = ColumnDataSource(self.boxes(stage))
        fig.quad(
            left="left",
            right="right",
            bottom="bottom",
            top="top",
            source=boxes,
            fill_alpha=0.0,
            line_color=OUTLINE,
            line_width=2,
        )
        self._sources[stage] = (maps, boxes)
        on_tap(fig, lambda x, y: self.open(stage, self.block_at(stage, x)))
        return fig

    @param.depends("patch", watch=True)
    def _redraw(self) -> None:
        for stage, (maps, boxes) in self._sources.items():
            self._headings[stage].object = self.heading(stage)
            with pn.io.hold(maps.document):
                maps.data.update(image=[self.row(stage)])
                boxes.data.update(self.boxes(stage))


class Overview(pn.viewable.Viewer):
    """The Explorer's Overview tab: :class:`StageOverview` and :class:`BlockOverview` of its
    run, following its stage, DR method, clicked patch and colour scale. A click on a stage
    opens its Mode 1 scatterplot, on a block map that block (Mode 2) with the patch clicked
    at the map's location; then ``show()`` (e.g. the Explore tab)."""

    def __init__(
        self, explorer: Explorer, show: Callable[[], None] = lambda: None, visible: bool = True
    ) -> None:
        super().__init__()
        self.explorer, self.show = explorer, show
        self.visible = visible  # see set_visible
        self._stale = False  # the Explorer changed while hidden
        self.stages = StageOverview(**self._stage_values())
        self.blocks = BlockOverview(**self._block_values())
        explorer.param.watch(self._follow, ["run", "stage", "method", "patch", "scale"])
        self.stages.param.watch(self._open_stage, "opened", onlychanged=False)
        self.blocks.param.watch(self._open_block, "opened", onlychanged=False)

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(
            pn.pane.HTML(
                "<h4>Stages</h4><p>The Mode 1 scatterplot of each stage (one point per image "
                "and block, coloured by block); click one to open it.</p>",
                margin=(0, 10),
            ),
            self.stages,
            pn.pane.HTML(
                "<h4>Blocks</h4><p>The attention from the clicked patch in every block; "
                "click a map to open that block.</p>",
                margin=(0, 10),
            ),
            self.blocks,
        )

    def _stage_values(self) -> dict:
        explorer = self.explorer
        return dict(run=explorer.data, method=explorer.method, stage=explorer.stage)

    def _block_values(self) -> dict:
        explorer = self.explorer
        return dict(
            run=explorer.data, stage=explorer.stage, patch=explorer.patch, scale=explorer.scale
        )

    def set_visible(self, visible: bool) -> None:
        """Whether the Overview is on screen (its tab shown). Hidden, it does not follow the
        Explorer's changes (each new stage or scale redraws the block overview); shown, it
        catches up with them."""
        self.visible = visible
        if visible and self._stale:
            self._follow()

    def _follow(self, *_: param.parameterized.Event) -> None:
        if not self.visible:
            self._stale = True
            return
        self._stale = False
        _update(self.stages, self._stage_values())
        _update(self.blocks, self._block_values())

    def _open_stage(self, event: param.parameterized.Event) -> None:
        self.explorer.param.update(stage=event.new, block=None)
        self.show()

    def _open_block(self, event: param.parameterized.Event) -> None:
        stage, block = event.new
        patch = self.blocks.patch_in(stage)
        self.explorer.param.update(stage=stage)  # a new stage forgets the patch: set after
        self.explorer.param.update(block=block, patch=patch)
        self.show()


def show_first(tabs: pn.Tabs) -> None:
    """Show the first tab of ``tabs``, on a served page in a callback of its own: set in the
    callback of a click, after the page had switched to the Overview tab itself, the switch
    back did not reach Chromium (the Explorer's changes did)."""
    pn.state.execute(lambda: setattr(tabs, "active", 0), schedule=True)


def overview_tab(explorer: Explorer, tabs: pn.Tabs) -> pn.Column:
    """The content of an Overview tab of ``tabs``: the :class:`Overview` of ``explorer``,
    whose clicks show the first tab (Explore). On a served page it is drawn in the hidden
    tab in the background (:mod:`mambapanel.views.background`: once the page is drawn and
    the server is free), so that the tab shows at once when opened: drawn on the click
    instead, the server's build and Chromium's layout of the page around it took 2.2 s
    (benchmarks/RESULTS.md), a click on a drawn tab 0.25 s. Elsewhere, and when opened
    before that, it is drawn when the tab is first opened; a note stands in for it until
    then. While another tab is shown it does not follow the Explorer
    (:meth:`Overview.set_visible`): drawn in every page, it would redraw its block overview
    on every change of stage in every page."""
    content = pn.Column(pn.pane.HTML("<p>Drawing the overviews ...</p>"))

    drawn: list[Overview] = []

    def shown() -> bool:
        return tabs.objects[tabs.active] is content

    def draw() -> None:
        # A pane in the column is a drawing of the Overview, not the Overview: hence the list.
        if not drawn:
            drawn.append(Overview(explorer, show=partial(show_first, tabs), visible=shown()))
            content[:] = drawn

    def switch_tab(_: param.parameterized.Event) -> None:
        if shown():
            draw()
        if drawn:
            drawn[0].set_visible(shown())

    tabs.param.watch(switch_tab, "active")
    background.later(draw)
    return content
