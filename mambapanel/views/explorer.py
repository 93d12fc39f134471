"""The Explorer: controls (run, stage, block, DR method, colour scale, image, the direction
of the query's attention, routes), the linked Scatterplot, Patch and Image views, a compare layout
(two blocks or two runs), URL state and export. ``Explorer(run)`` is a notebook cell's
value; a served page puts its controls in a template's sidebar (:meth:`Explorer.sidebar`,
:meth:`Explorer.main`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

import numpy as np
import panel as pn
import param

from mambapanel.address import Address, block_label
from mambapanel.store import RunError
from mambapanel.views.data import RunData, RunsLike, load_runs
from mambapanel.views.geometry import patch_at_location, patches_at_location
from mambapanel.views.image import ImageView
from mambapanel.views.patch import (
    ROUTE_COLOURS,
    PatchView,
    direction_parameter,
    queried,
    query_parameter,
    query_text,
)
from mambapanel.views.scatter import ScatterView
from mambapanel.views.serve import TITLE
from mambapanel.views.style import BUTTON_HEIGHT, SCALES
from mambapanel.views.url import MERGED, UrlState, format_route, owns_url, parse_route
from mambapanel.views.widgets import image_chooser, linked_menu

COMPARE = {"no comparison": "none", "two blocks": "blocks", "two runs": "runs"}
# The tabs' size as the template's stylesheets draw it, given in the page: a busy server sends
# those after the browser has drawn the figures, and taller tabs then moved every figure (see
# style.BUTTON_HEIGHT).
TABS_CSS = (
    ".bk-header { height: 36px !important; box-sizing: border-box !important; }"
    ".bk-tab { padding: 8px 16px; border-width: 1px 1px 0 !important; }"
)
# How each view of a side shares the side's width: (grow, basis px, max px). Views wrap onto a
# new line where their bases do not fit side by side (the image view first, then the patch
# view); the scatterplot, the study's main view, takes the largest share.
VIEW_FLEX = {"scatter": (5, 430, 960), "patches": (3, 340, 640), "image": (3, 340, 400)}
STATUS_PATCHES = 40  # selected (and query) patches listed by name in the status line

log = logging.getLogger(__name__)


def _update(view: param.Parameterized, values: dict) -> None:
    """Set what differs, in one batch. param compares values it does not know (a RunData)
    as different, and each change may redraw a plot."""
    view.param.update({k: v for k, v in values.items() if getattr(view, k) != v})


@dataclass
class Side:
    """The three linked views of one side of the layout (two sides when comparing)."""

    scatter: ScatterView
    patches: PatchView
    image: ImageView
    caption: pn.pane.HTML
    problem: pn.pane.Alert

    def views(self) -> tuple[ScatterView, PatchView, ImageView]:
        return self.scatter, self.patches, self.image

    def panel(self) -> pn.Column:
        """The side's caption above its views: side by side, as wide as the side is; a view
        whose share would be narrower than :data:`VIEW_FLEX`'s basis goes to a new line."""
        views = [
            pn.Column(
                view,
                sizing_mode="stretch_width",
                max_width=largest,
                styles={"flex": f"{grow} 1 {basis}px"},
                css_classes=[f"mambapanel-{name}"],
            )
            for name, view in zip(VIEW_FLEX, self.views(), strict=True)
            for grow, basis, largest in [VIEW_FLEX[name]]
        ]
        return pn.Column(
            self.caption,
            self.problem,
            pn.FlexBox(*views, flex_wrap="wrap", sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
            # Two sides share the width equally, whatever their contents' widths.
            styles={"flex": "1 1 0", "min-width": "0"},
            css_classes=["mambapanel-side"],
        )


class Explorer(pn.viewable.Viewer):
    """Explore the hidden attention of one or more stored runs.

    Parameters
    ----------
    runs : a run's path, a ``RunData``, a sequence of them, or a mapping {name: path}
    **params
        Initial values of the parameters below (e.g. ``stage=1, block=0``).

    Raises
    ------
    mambapanel.store.RunError
        A path that is not a usable run.
    """

    run = param.Selector(check_on_set=True, doc="The run shown (the left one when comparing).")
    stage = param.Selector(check_on_set=True, doc="Stage of the model.")
    block = param.Selector(
        check_on_set=True,
        doc="None: Mode 1, one point per image and block; a block: Mode 2, one per patch.",
    )
    method = param.Selector(check_on_set=True, doc="Dimensionality reduction (as stored).")
    scale = param.Selector(
        default="strength",
        objects=list(SCALES),
        doc="Colour scale of attention: strength |α| (the study's), signed α (diverging, "
        "centred at zero), or log |α|.",
    )
    image = param.Integer(default=0, bounds=(0, None), doc="Index of the Image view's image.")
    patch = param.Tuple(
        default=None, length=2, allow_None=True, doc="(row, col) of the clicked patch."
    )
    selection = param.List(
        default=[], item_type=tuple, doc="Patches (row, col) selected in a Mode 2 scatterplot."
    )
    query = query_parameter()
    direction = direction_parameter()
    compare = param.Selector(
        default="none", objects=COMPARE, doc="A second side: another block or another run."
    )
    routes = param.ListSelector(
        default=[],
        objects=[],
        check_on_set=True,
        doc="Scan routes drawn over the patch view (none: no overlay).",
    )
    route = param.Selector(
        default=None,
        objects=[None],
        check_on_set=True,
        doc="Route whose part of the attention the patch and image views show (a run made "
        "with --by-route); None: merged, the sum of every route's.",
    )
    block_b = param.Selector(check_on_set=True, doc="The right side's block (two blocks).")
    run_b = param.Selector(check_on_set=True, doc="The right side's run (two runs).")
    url = param.Boolean(
        default=None,
        allow_None=True,
        doc="Keep the view in the served page's URL. None: the first Explorer shown in the "
        "page does, the others do not (two on one page would otherwise follow each other); "
        "True or False to choose. A notebook has no page URL.",
    )

    def __init__(self, runs: RunsLike, **params) -> None:
        super().__init__()
        self.runs: dict[str, RunData] = load_runs(runs)
        self.sides: list[Side] = []
        self.url_state = UrlState()
        self.url_state.param.watch(lambda _: self._update_status(), "problems")
        self._url_synced = False
        self._linking = False
        # HTML panes, not Markdown: a run's name is not formatting, and Markdown's parser
        # costs a served page's first render a tenth of a second.
        self.status = pn.pane.HTML(css_classes=["mambapanel-status"], sizing_mode="stretch_width")
        self._layout = pn.Row(sizing_mode="stretch_width")
        # Runs are opened when first shown; one that cannot be opened then is named here.
        self.run_problem = pn.pane.Alert(
            alert_type="danger", visible=False, css_classes=["mambapanel-run-problem"]
        )
        names = list(self.runs)
        self._opened = names[0]  # the last run shown
        self.runs[names[0]].open()
        self.param.run.objects = names
        self.param.run_b.objects = names
        # Comparing two runs starts with the first two.
        self.param.update(run=names[0], run_b=names[min(1, len(names) - 1)])
        self._widgets = self._header()
        self.param.update(**params)
        self._add_side()
        self._show_sides()
        self._forward()

    def __panel__(self) -> pn.viewable.Viewable:
        """The layout of a notebook's output (which has no sidebar): the controls wrapping
        above the views, everything as wide as the output area."""
        return pn.Column(
            pn.pane.HTML(f"<h3>{TITLE}</h3>"),
            self._tabs(self.controls()),
            sizing_mode="stretch_width",
        )

    def sidebar(self) -> list[pn.viewable.Viewable]:
        """A served page's sidebar (:func:`mambapanel.views.serve.served`): the controls."""
        return [self.controls()]

    def main(self) -> list[pn.viewable.Viewable]:
        """A served page's main area: the Explore and Findings tabs."""
        return [self._tabs()]

    def controls(self) -> pn.FlexBox:
        """The controls (:meth:`_header`), wrapping into lines as wide as their container."""
        return pn.FlexBox(
            *self._widgets, flex_wrap="wrap", sizing_mode="stretch_width",
            css_classes=["mambapanel-controls"],
        )  # fmt: skip

    def _tabs(self, *above: pn.viewable.Viewable) -> pn.Tabs:
        """The Explore tab (``above`` the views) and the Findings tab."""
        if not self._url_synced and owns_url(pn.state.curdoc, self.url):
            self.sync_url(pn.state.location)
        explore = pn.Column(
            *above, self.run_problem, self._layout, self.status, sizing_mode="stretch_width"
        )
        # The findings of every run are read only when their tab is first opened.
        findings = pn.Column(pn.pane.HTML("<p>Reading the stored findings ...</p>"))
        tabs = pn.Tabs(
            ("Explore", explore),
            ("Findings", findings),
            sizing_mode="stretch_width",
            stylesheets=[TABS_CSS],
        )

        def open_findings(event: param.parameterized.Event) -> None:
            if event.new == 1 and len(findings) == 1 and isinstance(findings[0], pn.pane.HTML):
                from mambapanel.views.findings import FindingsView

                try:
                    findings[:] = [FindingsView(self.runs)]
                except Exception as err:  # shown, not only logged: the tab would say "Reading"
                    log.exception("mambapanel: the findings could not be shown")
                    message = escape(f"The findings could not be shown: {err!r}")
                    findings[:] = [pn.pane.Alert(message, alert_type="danger")]

        tabs.param.watch(open_findings, "active")
        from mambapanel.views.overview import overview_tab  # here: it imports this module

        tabs.append(("Overview", overview_tab(self, tabs)))
        return tabs

    def _repr_mimebundle_(self, include=None, exclude=None):
        """A notebook cell's output: Panel's, with a note that shows where BokehJS did not
        load (:mod:`mambapanel.views.notebook`)."""
        from mambapanel.views.notebook import with_bokeh_hint

        return with_bokeh_hint(super()._repr_mimebundle_(include, exclude))

    @property
    def data(self) -> RunData:
        return self.runs[self.run]

    @property
    def shown(self) -> list[Side]:
        """The sides on screen: one, or two when comparing."""
        return self.sides[: 1 if self.compare == "none" else 2]

    # -- state --------------------------------------------------------------------------

    @param.depends("run", watch=True)
    def _on_run(self) -> None:
        """Offer what the run stores; keep the stage and image when it has them. A run that
        cannot be opened is named in the page, and the last run shown comes back."""
        try:
            run = self.data.open()
        except RunError as err:
            name, self.run = self.run, self._opened
            # Escaped: a run's name and what was found in its files are text, not markup.
            message = escape(f"Cannot show run {name}: {err}")
            self.run_problem.param.update(object=message, visible=True)
            return
        self._opened = self.run
        self.run_problem.visible = False
        self.param.image.bounds = (0, len(run.image_ids) - 1)
        if self.image >= len(run.image_ids):
            self.image = 0
        self._set_objects("stage", run.stages)
        self._on_stage()

    @param.depends("stage", watch=True)
    def _on_stage(self) -> None:
        """Offer the stage's blocks and methods; patches of another grid go (clicked,
        selected, query)."""
        run = self.data
        blocks = list(range(run.n_blocks(self.stage)))
        self._set_objects("block", [None, *blocks])
        self._set_objects("block_b", blocks, default=blocks[-1])
        self._set_objects("method", run.methods(self.stage) or ["pca"])
        self.param.update(patch=None, selection=[], query=[])
        self._offer_routes()

    def _offer_routes(self) -> None:
        """Offer the stage's routes to draw (those the run records), and to show apart where
        the run keeps each route's matrices; what it lacks is dropped."""
        routes = self.data.routes(self.stage)
        indices = [] if routes is None else list(range(len(routes)))
        self.param.routes.objects = {f"route {k}": k for k in indices}
        kept = [k for k in self.routes if k in indices]
        self._set_objects("route", [None, *(indices if self.data.by_route else [])])
        if kept != self.routes:
            self.routes = kept
        if hasattr(self, "_routes_widgets"):
            self._show_route_controls()

    def _set_objects(self, name: str, objects: list, default: object = None) -> None:
        """Replace a selector's choices; keep its value when still a choice, else take
        ``default`` or the first choice."""
        self.param[name].objects = objects
        if getattr(self, name) not in objects:
            setattr(self, name, default if default in objects else objects[0])

    # -- views --------------------------------------------------------------------------

    def _add_side(self) -> None:
        run, block = self._side_values(len(self.sides))
        if self._problem(run) is not None:  # the left side's run until it can show its own
            run, block = self.data, self.block
        # What the views draw first; the rest (patch, selection, image, scale) follows in
        # _forward, whose changes update them.
        drawn = dict(run=run, stage=self.stage, block=block)
        side = Side(
            ScatterView(**drawn, method=self.method),
            PatchView(**drawn),
            ImageView(**drawn),
            pn.pane.HTML(margin=(0, 10)),
            pn.pane.Alert(alert_type="warning", visible=False),
        )
        self.sides.append(side)
        self._link_side(len(self.sides) - 1, side)

    def _view_values(self, run: RunData, block: int | None) -> tuple[dict, dict, dict]:
        """The parameters of a side's scatterplot, patch view and image view; the patches
        at the same image location where ``run``'s grid is not the left run's."""
        patch, selection = self._on_grid_of(run, self.patch, self.selection)
        common = dict(run=run, stage=self.stage, block=block, patch=patch)
        query = self._on_grid_of(run, None, self.query)[1]
        attention = dict(common, query=query, direction=self.direction, scale=self.scale)
        return (
            dict(common, method=self.method, image=self.image),
            dict(attention, selection=selection, **self._route_values()),
            dict(attention, image=self.image, route=self.route),
        )

    def _route_values(self) -> dict:
        return dict(routes=list(self.routes), route=self.route)

    def _on_grid_of(
        self, run: RunData, patch: tuple | None, selection: list[tuple], back: bool = False
    ) -> tuple[tuple | None, list[tuple]]:
        """``patch`` and ``selection`` of the left run's grid on ``run``'s grid (``back``:
        the reverse), by image location; unchanged on the same grid."""
        grids = (self.data.grid(self.stage), run.grid(self.stage))
        source, target = grids[::-1] if back else grids
        if source == target:
            return patch, selection
        moved = None if patch is None else patch_at_location(patch, source, target)
        return moved, patches_at_location(selection, source, target)

    def _side_values(self, index: int) -> tuple[RunData, int | None]:
        """The run and block of side ``index``: the right side (1) differs when comparing."""
        run, block = self.data, self.block
        if index == 1 and self.compare == "runs":
            run = self.runs[self.run_b]
        if index == 1 and self.compare == "blocks":
            block = self.block_b
        return run, block

    def _problem(self, run: RunData) -> str | None:
        """Why ``run`` cannot show the left side's stage, block and method, or None."""
        if run is self.data:
            return None
        try:
            run.open()
        except RunError as err:
            return f"Cannot show run {run.name}: {err}"
        if self.stage not in run.stages:
            return f"{run.name} stores stages {run.stages}, not stage {self.stage}"
        if self.block is not None and self.block >= run.n_blocks(self.stage):
            return f"{run.name} has {run.n_blocks(self.stage)} blocks at stage {self.stage}"
        if self.method not in run.methods(self.stage):
            return f"{run.name} stores no {self.method} embedding at stage {self.stage}"
        return None

    @param.depends(
        "run", "stage", "block", "method", "scale", "image", "patch", "selection", "query",
        "direction", "compare", "block_b", "run_b", "routes", "route", watch=True,
    )  # fmt: skip
    def _forward(self) -> None:
        """Push the state into the views of each side shown, one batch per view."""
        if not self.sides:
            return
        self._linking = True
        try:
            for index, side in enumerate(self.shown):
                run, block = self._side_values(index)
                problem = self._problem(run)
                shown = escape(problem or "")  # names a run: text, not markup
                side.problem.param.update(object=shown, visible=problem is not None)
                if problem is not None:
                    continue
                for view, values in zip(side.views(), self._view_values(run, block), strict=True):
                    _update(view, values)
                selection = self._on_grid_of(run, None, self.selection)[1]
                if selection != side.scatter.selected_patches():
                    side.scatter.select_patches(selection)
                where = Address(self.stage, block).caption()
                grid = run.grid(self.stage)
                located = (
                    f" · grid {grid[0]}×{grid[1]}: patches at the same image location"
                    if grid != self.data.grid(self.stage)
                    else ""
                )
                side.caption.object = (
                    f"<div><b>{escape(run.name)}</b> ({escape(run.order)}) · {where}{located}</div>"
                )
        finally:
            self._linking = False
        self._update_status()

    def _link_side(self, index: int, side: Side) -> None:
        """What a view changes by itself (a lasso, a tap) becomes the Explorer's state."""

        def watch(view: param.Parameterized, names: list[str], act: Callable) -> None:
            # One call per batch of changes, with one event per changed parameter.
            def act_unless_linking(*events: param.parameterized.Event) -> None:
                if not self._linking:
                    act({event.name: event.new for event in events})

            view.param.watch(act_unless_linking, names)

        def clicked(changed: dict) -> None:  # on the side's grid
            # A click or a query replaces both: the clicked patch is the query alone.
            patch, query = changed.get("patch"), changed.get("query", [])
            moved = self._on_grid_of(side.scatter.run, patch, query, back=True)
            self.param.update(dict(zip(("patch", "query"), moved, strict=True)))

        watch(side.scatter, ["selected"], lambda _: self._selected_from(side.scatter))
        watch(side.scatter, ["block", "image"], lambda changed: self._picked(index, changed))
        for view in side.views():
            watch(view, ["patch", "query"] if "query" in view.param else ["patch"], clicked)

    def _selected_from(self, scatter: ScatterView) -> None:
        if scatter.mode == 2:
            selected = scatter.selected_patches()
            self.selection = self._on_grid_of(scatter.run, None, selected, back=True)[1]
        else:  # Mode 1 selects (image, block) points: no patches to show
            self._update_status()

    def _picked(self, index: int, changed: dict[str, int]) -> None:
        """A tapped Mode 1 point opens its image and block."""
        values = {"image": changed["image"]} if "image" in changed else {}
        if "block" in changed:
            right_block = index == 1 and self.compare == "blocks"
            values["block_b" if right_block else "block"] = changed["block"]
        self.param.update(values)

    @param.depends("compare", watch=True)
    def _show_sides(self) -> None:
        if self.compare != "none" and len(self.sides) == 1:  # the right side, made when needed
            self._add_side()
            self._forward()
        self._layout[:] = [side.panel() for side in self.shown]
        self._block_b.visible = self.compare == "blocks"
        self._run_b.visible = self.compare == "runs"

    # -- controls, status ---------------------------------------------------------------

    def _header(self) -> list[pn.viewable.Viewable]:
        """The controls, in the order shown: the one list of them (:meth:`controls`)."""

        def select(name: str, label: str, width: int) -> pn.widgets.Select:
            return pn.widgets.Select.from_param(self.param[name], label=label, width=width)

        self._block_b = select("block_b", "block (right)", 100)
        self._run_b = select("run_b", "run (right)", 160)
        self._downloads = (
            pn.widgets.FileDownload(
                callback=lambda: io.BytesIO(self.figures()),
                filename="mambapanel.png",
                label="Figures (PNG)",
                width=130,
                margin=(25, 5),
            ),
            pn.widgets.FileDownload(
                callback=lambda: io.StringIO(self.selection_csv()),
                filename="selection.csv",
                label="Selection (CSV)",
                width=130,
                margin=(25, 5),
            ),
        )
        return [
            select("run", "run", 160),
            select("stage", "stage", 70),
            linked_menu(
                self,
                "block",
                lambda: {block_label(b): b for b in self.param.block.objects},
                ["stage", "run"],
                label="block",
                width=120,
            ),
            select("method", "DR method", 90),
            pn.widgets.RadioButtonGroup.from_param(
                self.param.scale, color="light", width=210, height=BUTTON_HEIGHT, margin=(25, 5)
            ),
            image_chooser(self, lambda: self.data.image_ids, ["run"]),
            *self._query_controls(),
            select("compare", "compare", 130),
            self._block_b,
            self._run_b,
            *self._downloads,
            self._route_controls(),
        ]

    def _query_controls(self) -> list[pn.viewable.Viewable]:
        """The direction of the query's attention: ``from`` (rows) or ``to`` (columns)."""
        return [
            pn.widgets.RadioButtonGroup.from_param(
                self.param.direction,
                color="light",
                width=90,
                height=BUTTON_HEIGHT,
                margin=(25, 5),
                css_classes=["mambapanel-direction"],
            )
        ]

    @property
    def queried(self) -> list[tuple[int, int]]:
        """The query patches (:func:`mambapanel.views.patch.queried`), on the left grid."""
        return queried(self.query, self.patch)

    def _route_controls(self) -> pn.Row:
        """Routes drawn over the patch view, and the route whose attention is shown (when
        the run keeps them apart)."""
        # Each button underlined in its route's colour on the patch view: the key to them.
        underlines = "".join(
            f".bk-btn-group > .bk-btn:nth-child({k + 1}) "
            f"{{ border-bottom: 3px solid {colour} !important; }}"
            for k, colour in enumerate(ROUTE_COLOURS)
        )
        drawn = pn.widgets.CheckButtonGroup.from_param(
            self.param.routes,
            name="",
            margin=(25, 5),
            css_classes=["mambapanel-routes"],
            stylesheets=[underlines],
        )
        # A Select cannot hold None: the menu holds the URL's words (merged, or a number).
        shown = pn.widgets.Select(label="attention of", width=110, css_classes=["mambapanel-route"])
        shown.param.watch(lambda event: setattr(self, "route", parse_route(event.new)), "value")
        self._routes_widgets = (drawn, shown)
        self.param.watch(lambda _: self._show_route_controls(), "route")
        self._show_route_controls()
        return pn.Row(drawn, shown, margin=0)

    def _show_route_controls(self) -> None:
        def encode(route: int | None) -> str:
            return format_route(route) or MERGED

        drawn, shown = self._routes_widgets
        drawn.visible = bool(self.param.routes.objects)
        choices = self.param.route.objects
        shown.param.update(
            options={MERGED if k is None else f"route {k}": encode(k) for k in choices},
            value=encode(self.route),
            visible=len(choices) > 1,
        )

    def _update_status(self) -> None:
        scatter = self.sides[0].scatter
        patch = "none" if self.patch is None else f"({self.patch[0]}, {self.patch[1]})"
        if scatter.mode == 1:
            blocks = [] if scatter.points is None else scatter.points.block[scatter.selected]
            selection = (
                f"{len(scatter.selected)} points (image, block) selected, "
                f"blocks {np.unique(blocks).tolist()}"
            )
        else:
            listed = " ".join(f"({r}, {c})" for r, c in self.selection[:STATUS_PATCHES])
            more = " …" if len(self.selection) > STATUS_PATCHES else ""
            selection = (
                f"{len(self.selection)} patches selected{': ' if listed else ''}{listed}{more}"
            )
        problems = "".join(f" · URL: {problem}" for problem in self.url_state.problems)
        queried = self.queried
        query = query_text(queried, self.direction, STATUS_PATCHES) if queried else "none"
        text = f"Clicked patch: {patch} · Selection: {selection} · Attention: {query}{problems}"
        self.status.object = f"<p>{escape(text)}</p>"
        name = f"{self.run}-{Address(self.stage, self.block).slug()}"
        self._downloads[0].filename = f"mambapanel-{name}.png"
        self._downloads[1].filename = f"selection-{name}.csv"

    # -- export, URL --------------------------------------------------------------------

    # The export module is imported on first use: it brings Pillow, and PNG export brings
    # Datashader, which a page does not need until a download button is pressed.

    def figures(self) -> bytes:
        """The figures shown as one PNG: a row per side (scatterplot, patches, image)."""
        from mambapanel.views import export

        return export.figures_png([export.side_figures(*side.views()) for side in self.shown])

    def selection_table(self) -> tuple[list[str], list[list[object]]]:
        """The selection of the left side as a table; see :func:`export.selection_table`."""
        from mambapanel.views import export

        return export.selection_table(self.sides[0].scatter, self.sides[0].patches)

    def selection_csv(self) -> str:
        """:meth:`selection_table` as CSV text, with a header line."""
        from mambapanel.views import export

        return export.csv_text(*self.selection_table())

    def sync_url(self, location: pn.io.location.Location) -> None:
        """Keep run, stage, block, method, patch, image, scale, query and direction in the
        URL query of ``location`` (``pn.state.location`` when served), so that a link
        reproduces the view."""
        self._url_synced = True
        self.url_state.attach(self)
        location.sync(self.url_state, list(UrlState.FIELDS))
