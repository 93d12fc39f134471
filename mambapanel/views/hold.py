"""Stream callbacks that update several plots at once, with the Bokeh document held."""

from __future__ import annotations

import functools
from collections.abc import Callable

import panel as pn


def held(callback: Callable[..., None]) -> Callable[..., None]:
    """``callback`` run with the current document's events held and its model graph frozen:
    the plots it updates (scatter highlight, patch grid, image) are sent together and the
    document re-indexes its models once instead of once per plot."""

    @functools.wraps(callback)
    def run(**kwargs: object) -> None:
        with pn.io.hold(freeze=True):
            callback(**kwargs)

    return run
