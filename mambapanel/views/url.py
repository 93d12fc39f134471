"""URL state: an Explorer's run, stage, block, method, patch, image, colour scale and routes as
plain query values (``?run=cross&stage=1&block=0&method=tsne&patch=3,4&image=2&scale=signed
&routes=0,2&route=1``), so that a link reproduces a view. ``block=all`` is Mode 1; an empty
``patch`` is no clicked patch; ``scale=linear`` (links made before the signed scale) is
``strength``; ``routes`` lists the routes drawn, ``route`` is the route whose attention is
shown (absent or ``merged``: all of them).
"""

from __future__ import annotations

from typing import Any

import param

from mambapanel.address import block_text, parse_block
from mambapanel.views.style import OLD_SCALES


def format_patch(patch: tuple[int, int] | None) -> str:
    return "" if patch is None else f"{patch[0]},{patch[1]}"


def parse_patch(text: object) -> tuple[int, int] | None:
    """``"row,col"`` as (row, col); ``""`` as None. Raises ValueError otherwise."""
    if text in ("", None):
        return None
    row, col = (int(part) for part in str(text).split(","))
    return row, col


MERGED = "merged"  # the attention of every route together (route None)


def format_routes(routes: list[int]) -> str:
    return ",".join(map(str, routes))


def parse_routes(text: object) -> list[int]:
    """``"0,2"`` as [0, 2]; ``""`` as []. Raises ValueError otherwise."""
    return [int(part) for part in str(text or "").split(",") if part != ""]


def format_route(route: int | None) -> str:
    """A route as the URL holds it; merged (None) is left out, as most runs have no other."""
    return "" if route is None else str(route)


def parse_route(text: object) -> int | None:
    """``""`` or ``merged`` as None, a number as that route. Raises ValueError otherwise."""
    return None if str(text or MERGED) == MERGED else int(str(text))


def parse_scale(text: object) -> str:
    """A colour scale's name; an earlier name as its successor (``linear``: ``strength``)."""
    return OLD_SCALES.get(str(text), str(text))


class UrlState(param.Parameterized):
    """The query values of a view. Untyped: they hold what a URL holds until
    :meth:`apply` checks them against the runs, in dependency order (a run's stages, a
    stage's blocks and methods, its grid for the patch)."""

    FIELDS = ("run", "stage", "block", "method", "patch", "image", "scale", "routes", "route")

    run = param.Parameter(doc="Name of the run.")
    stage = param.Parameter(doc="Stage number.")
    block = param.Parameter(doc="Block number, or 'all' for Mode 1.")
    method = param.Parameter(doc="Reduction method: pca, tsne or umap.")
    patch = param.Parameter(doc="The clicked patch as 'row,col', or '' for none.")
    image = param.Parameter(doc="Index of the image in the run.")
    scale = param.Parameter(doc="Colour scale: strength, signed or log (linear: strength).")
    routes = param.Parameter(doc="The routes drawn over the patch view as '0,2', '' for none.")
    route = param.Parameter(doc="The route whose attention is shown; '' or 'merged': all.")
    problems = param.List(default=[], item_type=str, doc="Values of the last URL not applied.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._explorer: Any = None
        self._busy = False

    def attach(self, explorer: Any) -> None:
        """Follow ``explorer`` (an Explorer) both ways, starting from its current state."""
        self._explorer = explorer
        self.read()
        explorer.param.watch(lambda *_: self.read(), list(self.FIELDS))
        # After Location's own watcher (precedence 0), so that the corrections of apply()
        # reach the URL last.
        self.param.watch(lambda *_: self.apply(), list(self.FIELDS), precedence=1)

    def read(self) -> None:
        """Take the explorer's values."""
        if self._busy:
            return
        explorer = self._explorer
        self._busy = True
        try:
            self.param.update(
                run=explorer.run,
                stage=explorer.stage,
                block=block_text(explorer.block),
                method=explorer.method,
                patch=format_patch(explorer.patch),
                image=explorer.image,
                scale=explorer.scale,
                routes=format_routes(explorer.routes),
                route=format_route(explorer.route),
            )
        finally:
            self._busy = False

    def apply(self) -> None:
        """Set the explorer from these values; what does not fit the runs is left as it was
        and listed in ``problems``."""
        if self._busy:
            return
        explorer = self._explorer
        problems: list[str] = []
        self._busy = True
        try:
            for name, parse in (
                ("run", str),
                ("stage", int),
                ("block", lambda text: parse_block(str(text))),
                ("method", str),
                ("image", int),
                ("patch", parse_patch),
                ("scale", parse_scale),
                ("routes", parse_routes),
                ("route", parse_route),
            ):
                problem = self._set(explorer, name, getattr(self, name), parse)
                if problem:
                    problems.append(problem)
        finally:
            self._busy = False
        self.problems = problems
        self.read()

    @staticmethod
    def _set(explorer: Any, name: str, text: object, parse: Any) -> str | None:
        """Set one value; the reason when it does not fit."""
        if text is None:
            return
        try:
            value = parse(text)
            if name == "patch" and value is not None:
                height, width = explorer.data.grid(explorer.stage)
                if not (0 <= value[0] < height and 0 <= value[1] < width):
                    raise ValueError(f"outside the {height}x{width} grid")
            if name == "route" and value is not None and value not in explorer.param.route.objects:
                run = explorer.data
                if not run.by_route:  # the store's words: why, and what to do
                    run.check_route(explorer.stage, value)
                raise ValueError(f"the run has routes {explorer.param.route.objects[1:]}")
            setattr(explorer, name, value)
        except (ValueError, TypeError) as err:  # a RunError is a ValueError
            return f"{name}={text} ignored ({err})"
        return None
