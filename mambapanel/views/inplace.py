"""Figures redrawn in place: HoloViews builds a figure once, and the frequent small changes
(a selection, a clicked patch) are written into the Bokeh models it made for the element.

Why: a HoloViews update of a figure re-evaluates its elements, ranges, axes and options and
then has Bokeh re-walk the whole page's model graph (``hold_render`` freezes the document
and thawing recomputes it): for a lasso, most of its time (benchmarks/RESULTS.md). Writing
a few data columns, a title and a colour range leaves the model graph alone. The element
each view builds from its state stays the one description of the figure: a view writes
what that element would hold, and ``tests/test_views.py`` checks the result against a
fresh render.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import panel as pn

Plot = Any  # a HoloViews ElementPlot (holoviews.plotting.bokeh.element.ElementPlot)


class Drawn:
    """The plots HoloViews made of one element, one per document the element is shown in
    (a page, or each notebook output of it), redrawn in place by ``draw``.

    Parameters
    ----------
    draw : (plot) -> None
        Writes the view's current state into ``plot``'s Bokeh models
        (``plot.handles["source"]``, ``["glyph"]``, ``["color_mapper"]``, ``plot.state``).
    """

    def __init__(self, draw: Callable[[Plot], None]) -> None:
        self.draw = draw
        self.plots: list[Plot] = []
        drawn = weakref.ref(self)

        def hook(plot: Plot, element: object) -> None:
            if (alive := drawn()) is not None:
                alive.keep(plot)

        # What ``.opts(hooks=[drawn.hook])`` takes. It holds this Drawn weakly: HoloViews
        # keeps an element's options, hooks included, in its global option tree until the
        # element is collected, and a hook that held the view (as a bound method would)
        # kept the element alive through the view, and so every served session ever opened.
        self.hook: Callable[[Plot, object], None] = hook

    def keep(self, plot: Plot) -> None:
        """Keep ``plot`` and draw the current state into it, since the element may have
        been built before the last change (what :attr:`hook` does)."""
        if plot not in self.plots:
            self.plots.append(plot)
        self.draw(plot)

    def redraw(self) -> None:
        """Write the current state into every plot kept; held, so that a served page (or a
        notebook's comm) gets the changes together."""
        for plot in self.plots:
            document = plot.state.document
            if document is None:  # made, not (yet) shown
                self.draw(plot)
                continue
            with pn.io.hold(document, comm=plot.comm):
                self.draw(plot)


def write_columns(plot: Plot, **columns: np.ndarray) -> None:
    """Replace data columns of ``plot``'s glyph, named by glyph property (``x``, ``size``,
    ``image``, ``left``, ...): HoloViews chooses the data source's column names."""
    glyph, source = plot.handles["glyph"], plot.handles["source"]
    source.data.update({_field(getattr(glyph, name)): value for name, value in columns.items()})


def _field(spec: object) -> str:
    """The column name of a glyph property mapped to a column (a str, or a Bokeh Field)."""
    return spec if isinstance(spec, str) else spec.field
