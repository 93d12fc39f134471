"""What ``panel serve dashboards/...`` shows: an Explorer of the runs named on the command
line, or, when one cannot be opened, the reason in the page instead of a traceback; and
what of it goes into the served page's sidebar and main area.
"""

from __future__ import annotations

from collections.abc import Sequence

import panel as pn

from mambapanel.store import RunError
from mambapanel.views.explorer import Explorer

USAGE = "panel serve dashboards/explorer.py --args RUN [RUN ...]"


def dashboard(paths: Sequence[str], **params: object) -> pn.viewable.Viewable:
    """An :class:`Explorer` of the runs at ``paths`` with ``params`` (e.g. ``compare``), or
    an error message naming the run that could not be opened and why."""
    try:
        return Explorer(list(paths), **params)
    except RunError as err:
        return pn.Column(
            pn.pane.Markdown("### mambapanel: cannot open the run"),
            # Str, not Markdown: a path's underscores and asterisks are not formatting.
            pn.pane.Str(str(err), css_classes=["mambapanel-error"]),
            pn.pane.Str(f"usage: {USAGE}"),
        )


def dashboard_parts(
    paths: Sequence[str], **params: object
) -> tuple[list[pn.viewable.Viewable], list[pn.viewable.Viewable]]:
    """The :func:`dashboard` of ``paths`` and ``params`` as (sidebar, main) of a served
    page's template: an Explorer's controls and its views; an error message in main."""
    shown = dashboard(paths, **params)
    if isinstance(shown, Explorer):
        return shown.sidebar(), shown.main()
    return [], [shown]
