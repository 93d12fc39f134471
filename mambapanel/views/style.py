"""Conventions shared by the views and the PNG export: colours (so that an exported figure
looks like the one on screen), the colour scales of attention (strength, signed, log), and
the names of the Bokeh figures.
"""

from __future__ import annotations

from collections.abc import Callable

# Registers HoloViews' Bokeh backend, which `.opts(...)` needs before anything is displayed
# (what `hv.extension("bokeh")` does, minus the notebook output). Every module that draws
# imports this one.
import holoviews.plotting.bokeh  # noqa: F401
import numpy as np
import panel as pn
from bokeh.models import CustomJS
from bokeh.palettes import Category10_10
from holoviews.plotting.util import bokeh_palette_to_palette

ATTENTION_CMAP = "YlOrRd"  # the paper's light-yellow (weak) to dark-red (strong)
SIGNED_CMAP = "RdBu_r"  # signed attention: blue negative, white zero, red positive
COLUMN_CMAP = "viridis"  # Mode 2 scatterplot: colour = column
GREY = "#d9d9d9"  # a patch that is not selected
RED = "#d62728"  # a selected patch
OUTLINE = "#2166ac"  # the clicked patch: blue stands out on yellow and on red
HIGHLIGHT = "#000000"  # selected scatterplot points
# Hidden attention is signed. strength: |α| (the study's scale); signed: α on a diverging map
# centred at zero with symmetric limits; log: log |α|.
SCALES = ("strength", "signed", "log")
SCALE_LABELS = {"strength": "strength |α|", "signed": "signed α", "log": "log |α|"}
# Earlier names of the scales (in links made before): linear coloured the signed values on
# the strength map, which drew the most negative as the weakest.
OLD_SCALES = {"linear": "strength"}
# The height of buttons and button groups, as Panel's stylesheets draw them. Given, not left
# to the stylesheets: a browser draws the figures before a busy server has sent them, and a
# button that grew when they came moved every figure below it (the patch view by a third of
# a patch row, enough for a click to land on the wrong patch).
BUTTON_HEIGHT = 31
MENU_HEIGHT = 54  # a labelled menu (Select), likewise
SLIDER_HEIGHT = 37  # a labelled slider, likewise


def block_colours(n_blocks: int) -> list[str]:
    """One distinct colour per block: Category10, then Glasbey's categorical palette
    (colorcet's ``glasbey_category10`` past its first ten). colorcet is imported only for
    more than ten blocks: its import is a noticeable part of a first render."""
    palette = list(Category10_10)
    if n_blocks > len(palette):
        import colorcet

        palette += colorcet.palette["glasbey_category10"][len(palette) :]
    return [palette[block % len(palette)] for block in range(n_blocks)]


def hex_colours(cmap: str, n: int = 256) -> list[str]:
    """``n`` colours of the named Bokeh palette, interpolated as HoloViews resolves the name.

    The views hand HoloViews these lists, not names: resolving a name makes HoloViews list
    every colormap provider, which imports colorcet.
    """
    return bokeh_palette_to_palette(cmap, ncolors=n)


def attention_cmap(scale: str) -> list[str]:
    """The colours of attention on ``scale`` (one of :data:`SCALES`)."""
    return hex_colours(SIGNED_CMAP if scale == "signed" else ATTENTION_CMAP)


def scaled(values: np.ndarray, scale: str) -> np.ndarray:
    """Attention as coloured: ``strength`` |α|, ``signed`` the values as they are, ``log``
    |α| for a log colour scale, with exact zeros as NaN (no colour)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if scale == "signed":
        return values
    if scale == "strength":
        return np.abs(values)
    magnitude = np.abs(values).astype(np.float64)
    magnitude[magnitude == 0] = np.nan
    return magnitude


def colour_limits(values: np.ndarray, scale: str = "strength") -> tuple[float, float]:
    """(low, high) of the finite values, symmetric about zero on the ``signed`` scale (so
    that zero is the map's centre); a constant or empty input gets a unit-wide range so that
    a colour mapper never divides by zero."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    if scale == "signed":
        largest = float(np.abs(finite).max()) or 1.0
        return -largest, largest
    low, high = float(finite.min()), float(finite.max())
    if low == high:
        return (low / 2, low * 2) if low > 0 else (low - 0.5, high + 0.5)
    return low, high


def figure_pane(element: object, fit_width: bool = False) -> pn.pane.HoloViews:
    """A view's figure (a HoloViews element) as a pane whose axes are its own, as wide as
    its container with ``fit_width`` (a figure named with ``fit_width``, see :func:`named`).

    Panel links the axes of HoloViews panes of equal dimensions across a page; the two sides
    of a compare page then shared one extent, the first drawn: a Mode 1 scatterplot's after a
    block opened on either side, a 16x16 patch grid beside an 8x8 one.
    """
    sizing = {"sizing_mode": "stretch_width"} if fit_width else {}
    return pn.pane.HoloViews(element, linked_axes=False, **sizing)


# Keeps a figure's frame height at ``ratio`` times its frame width (``inner_width``, which the
# browser sets on each layout): run on a new width, and when the server sends the frame height
# HoloViews gives a figure on an update.
FIT_JS = """
const height = Math.round(cb_obj.inner_width * ratio);
if (cb_obj.inner_width > 0 && cb_obj.frame_height !== height) cb_obj.frame_height = height;
"""
FIT_NAME = "mambapanel-fit-width"


def fit_width(figure: object) -> None:
    """Make a Bokeh figure sized by its frame as wide as its container, its frame as high
    for its width as the frame it was given (so that a patch grid keeps square patches at
    any width). Idempotent: a hook runs on every update of a figure."""
    ratio = figure.frame_height / figure.frame_width if figure.frame_width else None
    figure.frame_width = None
    figure.sizing_mode = "stretch_width"
    for callback in figure.js_property_callbacks.get("change:inner_width", []):
        if callback.name == FIT_NAME:
            if ratio is not None:
                callback.args = {"ratio": ratio}
            return
    callback = CustomJS(name=FIT_NAME, args={"ratio": ratio}, code=FIT_JS)
    figure.js_on_change("inner_width", callback)
    figure.js_on_change("frame_height", callback)


def named(name: str, webgl: bool = False, fit: bool = False) -> Callable[[object, object], None]:
    """A HoloViews hook for a figure sized by its frame (``frame_width``, ``frame_height``).

    It names the Bokeh figure, so that a browser (and a browser test) can find each view's
    figure in the document: ``scatterplot``, ``patch-view``, ``image-view``. It leaves the
    figure's sizing mode unset: HoloViews marks a frame-sized figure "fixed", which Bokeh's
    validation reports as a W-1005 warning since its width and height are computed from the
    frame, not given. And it draws on a canvas unless ``webgl``: HoloViews asks for WebGL
    everywhere, which pays only for many glyphs; a browser without a GPU emulates it, and a
    served page's three figures then took 0.2 s longer to appear (benchmarks/RESULTS.md).

    With ``fit``, the figure takes its container's width instead, and its frame keeps the
    shape of the frame HoloViews was given (:func:`fit_width`); show it in a
    ``figure_pane(element, fit_width=True)``.
    """

    def hook(plot: object, _: object) -> None:
        figure = plot.state
        figure.name = name
        figure.output_backend = "webgl" if webgl else "canvas"
        if fit:
            fit_width(figure)
        else:
            figure.sizing_mode = None

    return hook
