"""Stream callbacks that update several plots at once, with the Bokeh document held."""

from __future__ import annotations

import functools
from collections.abc import Callable

import panel as pn


def held(callback: Callable[..., None], *, freeze: bool = True) -> Callable[..., None]:
    """``callback`` run with the current document's events held, so that the plots it
    updates (scatter highlight, patch grid, image) are sent together.

    ``freeze`` also freezes the document's model graph: Bokeh then re-indexes its models
    once, after the callback, instead of once per plot that HoloViews redraws. The
    re-indexing walks every model of the page (tens of milliseconds), even when nothing
    was redrawn: a callback that only writes figures in place (a selection,
    :mod:`mambapanel.views.inplace`) is faster without it.
    """

    @functools.wraps(callback)
    def run(**kwargs: object) -> None:
        with pn.io.hold(freeze=freeze):
            callback(**kwargs)

    return run
