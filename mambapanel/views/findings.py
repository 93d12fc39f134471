"""The Findings view: the study's findings in numbers for one or more runs, as
``python -m compute findings`` stored them (tables, and the locality profiles as curves).
It reads stored findings only; computing them needs the patch orders (torch).
"""

from __future__ import annotations

from html import escape

import holoviews as hv
import panel as pn
import param
import xarray as xr

from mambapanel.findings.metrics import relative_profile
from mambapanel.findings.record import Findings
from mambapanel.findings.tables import LEGEND, ORDER_INTRODUCTION, order_section, run_sections
from mambapanel.store import RunError
from mambapanel.views.data import RunData, RunsLike, load_runs
from mambapanel.views.style import block_colours, figure_pane, named

PROFILES = (
    ("locality", "pairs", "grid_distance", "grid distance (Chebyshev, patches)"),
    ("sequence_locality", "sequence_pairs", "sequence_distance", "sequence distance (steps)"),
)
CURVES_FRAME = (360, 220)  # each locality figure's plotting area: its shape
LEGEND_ROWS = 10  # blocks per legend column: a deep stage's legend stays the frame's height


def missing(run: RunData) -> pn.pane.Markdown:
    """What a run without stored findings shows: the command that adds them."""
    return pn.pane.Markdown(
        f"**{run.name}**: no stored findings; `python -m compute findings {run.path}` adds them."
    )


def locality_curves(dataset: xr.Dataset, stage: int) -> list[hv.Overlay]:
    """Mean attention by grid and by sequence distance (÷ the mean; distance ≥ 1), one curve
    per block (:func:`mambapanel.findings.metrics.relative_profile`): a figure per profile the
    run stores, named ``findings-<profile>`` in the page."""
    colours = block_colours(dataset.sizes["block"])
    plots = []
    for profile, pairs, name, label in PROFILES:
        if profile not in dataset:
            continue
        curves = [
            hv.Curve(
                relative_profile(values, dataset[pairs].values),
                hv.Dimension(name, label=label),
                hv.Dimension("relative_attention", label="mean |α| ÷ mean"),
                label=f"block {block}",
            ).opts(color=colours[index])
            for index, (block, values) in enumerate(
                zip(dataset["block"].values, dataset[profile].values, strict=True)
            )
        ]
        plots.append(
            hv.Overlay(curves).opts(
                title=f"stage {stage}: attention by {label.split(' (')[0]}",
                frame_width=CURVES_FRAME[0],
                frame_height=CURVES_FRAME[1],
                # Outside the frame: with many blocks a legend inside hides the curves.
                legend_position="right",
                legend_cols=-(-len(curves) // LEGEND_ROWS),
                show_grid=True,
                hooks=[named(f"findings-{profile}", fit=True)],
            )
        )
    return plots


class FindingsView(pn.viewable.Viewer):
    """Stored findings of one or more runs: per run, block separation and early vs late, and
    for the chosen stage the per-block and order tables and the locality curves; with runs
    of several orders, the cross-run order matrix.

    Parameters
    ----------
    runs : a run's path, a ``RunData``, a sequence of them, or a mapping {name: path}

    Raises
    ------
    mambapanel.store.RunError
        No run given, or the same run twice. A run that cannot be opened, or whose findings
        cannot be read, is named in its tab instead.
    """

    stage = param.Selector(
        default=None,
        allow_None=True,
        check_on_set=True,
        doc="Stage whose tables and curves are shown (None: no run has stored findings).",
    )

    def __init__(self, runs: RunsLike, **params) -> None:
        super().__init__()
        self.runs: dict[str, RunData] = load_runs(runs)
        # Why a run's findings cannot be read (the run cannot be opened, or they were written
        # by another version): said in its tab, while the other runs' are shown.
        self.problems: dict[str, str] = {}
        self.findings: dict[str, Findings | None] = {}
        for name, run in self.runs.items():
            try:
                self.findings[name] = run.findings()
            except (RunError, ValueError) as err:
                self.findings[name], self.problems[name] = None, str(err)
        stored = [f for f in self.findings.values() if f is not None]
        stages = sorted({stage for f in stored for stage in f.stages})
        self.param.stage.objects = stages
        self.param.update(stage=stages[0] if stages else None, **params)
        # One tab per run, kept across stage changes (so is the tab shown).
        self.tabs = pn.Tabs(*map(self._tab, self.runs.values()), dynamic=True)

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(
            pn.pane.Markdown("### Findings"),
            pn.widgets.Select.from_param(self.param.stage, width=120),
            pn.param.ParamMethod(self.across_runs),
            self.tabs,
            pn.pane.Markdown(LEGEND, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    @param.depends("stage")
    def across_runs(self) -> pn.pane.Markdown:
        """The order matrix of the stage, when runs of several orders have findings (else
        empty)."""
        stored = [f for f in self.findings.values() if f is not None]
        section = order_section(stored, self.stage, level=5) if self.stage is not None else []
        heading = ["#### Patch order across runs", ORDER_INTRODUCTION] if section else []
        return pn.pane.Markdown("\n\n".join([*heading, *section]), sizing_mode="stretch_width")

    def _tab(self, run: RunData) -> tuple[str, pn.viewable.Viewable]:
        findings = self.findings[run.name]
        if run.name in self.problems:
            shown = pn.pane.Alert(escape(self.problems[run.name]), alert_type="danger")
        elif findings is None:
            shown = missing(run)
        else:
            shown = pn.panel(pn.bind(run_panel, findings, self.param.stage))
        return run.name, shown


def run_panel(findings: Findings, stage: int) -> pn.Column:
    """One run's tables (:func:`mambapanel.findings.tables.run_sections`) for ``stage``, and its
    locality curves."""
    text = "\n\n".join(run_sections(findings, [stage], level=4))
    parts = [pn.pane.Markdown(text, sizing_mode="stretch_width")]
    dataset = findings.stages.get(stage)
    if dataset is not None:
        # A pane per figure in a Row, not one hv.Layout (nor a FlexBox): Bokeh drew the figures
        # of either, shown when their tab opens, with frames of zero width and the axis labels
        # on top of each other.
        # Each as wide as its share of the row (the page's width), its frame of the shape
        # CURVES_FRAME.
        curves = [figure_pane(plot, fit_width=True) for plot in locality_curves(dataset, stage)]
        parts.append(pn.Row(*curves, sizing_mode="stretch_width"))
    return pn.Column(*parts, sizing_mode="stretch_width")
