"""URL state: an Explorer's run, stage, block, method, patch, image, colour scale, query
patches and their direction, and routes as plain query values
(``?run=cross&stage=1&block=0&method=tsne&patch=3,4&image=2&scale=signed&query=3,4;5,6&dir=to
&routes=0,2&route=1``), so that a link reproduces a view. ``block=all`` is Mode 1; an empty
``patch`` is no clicked patch, an empty ``query`` none; ``scale=linear`` (links made before
the signed scale) is ``strength``; ``routes`` lists the routes drawn, ``route`` is the route
whose attention is shown (absent or ``merged``: all of them).
"""

from __future__ import annotations

import weakref
from typing import Any

import param
from bokeh.document import Document

from mambapanel.address import block_text, parse_block
from mambapanel.views.background import in_session
from mambapanel.views.data import DIRECTIONS
from mambapanel.views.style import OLD_SCALES

# The Explorer's parameter of a field, where its name differs.
EXPLORER_NAMES = {"dir": "direction"}


def format_patch(patch: tuple[int, int] | None) -> str:
    return "" if patch is None else f"{patch[0]},{patch[1]}"


def parse_patch(text: object) -> tuple[int, int] | None:
    """``"row,col"`` as (row, col); ``""`` as None. Raises ValueError otherwise."""
    if text in ("", None):
        return None
    row, col = (int(part) for part in str(text).split(","))
    return row, col


def format_patches(patches: list[tuple[int, int]]) -> str:
    return ";".join(format_patch(patch) for patch in patches)


def parse_patches(text: object) -> list[tuple[int, int]]:
    """``"row,col;row,col"`` as [(row, col), ...], sorted, without repeats; ``""`` as [].
    Raises ValueError otherwise."""
    return sorted({parse_patch(part) for part in str(text or "").split(";") if part})


def parse_direction(text: object) -> str:
    if text not in DIRECTIONS:
        raise ValueError(f"not one of {', '.join(DIRECTIONS)}")
    return str(text)


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


# The served pages (Bokeh documents) whose URL an Explorer keeps already.
_owned: weakref.WeakSet[Document] = weakref.WeakSet()


def owns_url(doc: Document | None, wanted: bool | None = None) -> bool:
    """Whether a view shown now in ``doc`` keeps its state in the page's URL: only in a
    served session (a notebook's cell has no URL of its own), and, unless ``wanted`` says
    (True, False), only the first view to ask in that page. One that does claims the page."""
    if wanted is False or not in_session(doc):
        return False
    if wanted is None and doc in _owned:
        return False
    _owned.add(doc)
    return True


class UrlState(param.Parameterized):
    """The query values of a view. Untyped: they hold what a URL holds until
    :meth:`apply` checks them against the runs, in dependency order (a run's stages, a
    stage's blocks and methods, its grid for the patch)."""

    FIELDS = (
        "run",
        "stage",
        "block",
        "method",
        "patch",
        "image",
        "scale",
        "query",
        "dir",
        "routes",
        "route",
    )

    run = param.Parameter(doc="Name of the run.")
    stage = param.Parameter(doc="Stage number.")
    block = param.Parameter(doc="Block number, or 'all' for Mode 1.")
    method = param.Parameter(doc="Reduction method: pca, tsne or umap.")
    patch = param.Parameter(doc="The clicked patch as 'row,col', or '' for none.")
    image = param.Parameter(doc="Index of the image in the run.")
    scale = param.Parameter(doc="Colour scale: strength, signed or log (linear: strength).")
    query = param.Parameter(doc="The query patches as 'row,col;row,col', or '' for none.")
    dir = param.Parameter(doc="The query's attention: from (rows) or to (columns).")
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
        attributes = [EXPLORER_NAMES.get(name, name) for name in self.FIELDS]
        explorer.param.watch(lambda *_: self.read(), attributes)
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
                query=format_patches(explorer.query),
                dir=explorer.direction,
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
                ("query", parse_patches),  # after patch: a query replaces the clicked patch
                ("dir", parse_direction),
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
            if name in ("patch", "query") and value:
                height, width = explorer.data.grid(explorer.stage)
                for row, col in [value] if name == "patch" else value:
                    if not (0 <= row < height and 0 <= col < width):
                        where = "" if name == "patch" else f"({row}, {col}) "
                        raise ValueError(f"{where}outside the {height}x{width} grid")
            if name == "route" and value is not None and value not in explorer.param.route.objects:
                run = explorer.data
                if not run.by_route:  # the store's words: why, and what to do
                    run.check_route(explorer.stage, value)
                raise ValueError(f"the run has routes {explorer.param.route.objects[1:]}")
            setattr(explorer, EXPLORER_NAMES.get(name, name), value)
        except (ValueError, TypeError) as err:  # a RunError is a ValueError
            return f"{name}={text} ignored ({err})"
        return None
