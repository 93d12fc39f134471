"""What a view could not read from its run (a chunk file deleted or cut short, a damaged
``zarr.json``): named in a message above the view, which draws what it could read, so that
neither a blank figure nor a traceback is all the user sees and the rest of the page works.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import TypeVar

import panel as pn

from mambapanel.store import RunError

T = TypeVar("T")


class Problems:
    """The reads of one view that failed, by what was read; :attr:`pane` shows them."""

    def __init__(self) -> None:
        self.pane = pn.pane.Alert(
            alert_type="danger", visible=False, css_classes=["mambapanel-view-problem"]
        )
        self.found: dict[str, str] = {}

    def read(self, what: str, read: Callable[[], T], fallback: T) -> T:
        """``read()``, or ``fallback`` where the run is damaged there (the message is
        shown until a read of ``what`` succeeds)."""
        try:
            value = read()
        except RunError as err:
            self.found[what] = str(err)
            self._show()
            return fallback
        self.forget(what)
        return value

    def forget(self, what: str) -> None:
        """``what`` is no longer read (the view shows something else)."""
        if self.found.pop(what, None) is not None:
            self._show()

    def _show(self) -> None:
        # Escaped: a path is not markup. The pane is Markdown, whose paragraphs are blank lines.
        text = "\n\n".join(escape(problem) for problem in self.found.values())
        self.pane.param.update(object=text, visible=bool(self.found))
