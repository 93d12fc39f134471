"""The Explorer as a notebook cell's output: a plain-HTML hint that shows where BokehJS did
not load.

Panel's notebook output is a placeholder that Bokeh's JavaScript fills. Bokeh and Panel's
JavaScript come from the output of ``pn.extension()``, which loads them from a CDN unless
given ``inline=True`` (or ``PANEL_INLINE=1`` in the kernel's environment), so on a machine
that cannot reach the CDN every output stayed blank and said nothing. :func:`with_bokeh_hint`
puts a note before the placeholder: plain HTML, shown by any front end, and a script that
removes it as soon as Bokeh and Panel's JavaScript are there (at once where they were loaded
inline, within a second or so where the CDN answers). Where no script runs (a notebook viewer
that shows the stored HTML), the output is blank as well, and the note says why.
"""

from __future__ import annotations

import uuid

from panel.io.notebook import EXEC_MIME

HINT_CLASS = "mambapanel-bokeh-hint"
HINT_TEXT = (
    "BokehJS did not load, so the mambapanel Explorer cannot be drawn. pn.extension() loads "
    "it from a CDN: on a machine without internet, run pn.extension(inline=True) (or start "
    "Jupyter with PANEL_INLINE=1) and run the cells again."
)
# Shown only after a grace period (the CDN's answer), unless the script removed it by then;
# the animation's delay is the grace. Without CSS or scripts (a sanitised output) it shows.
HINT_SECONDS = 2
HINT_HTML = """<div id="{id}" class="{cls}" style="padding: 6px 10px; margin: 4px 0; \
border: 1px solid #d9534f; border-radius: 4px; color: #a94442; background: #fdf0ef; \
font-family: sans-serif; font-size: 13px; visibility: hidden; \
animation: {cls}-show 0s linear {seconds}s forwards">{text}</div>
<style>@keyframes {cls}-show {{ to {{ visibility: visible; }} }}</style>
<script type="application/javascript">
(function () {{
  var missing = 0;  // checks that did not find the note (not inserted yet, or removed)
  function check() {{
    var hint = document.getElementById("{id}");
    if (hint !== null && window.Bokeh !== undefined && window.Bokeh.Panel !== undefined) {{
      hint.remove();
    }} else if (hint !== null || missing++ < 40) {{
      setTimeout(check, 250);  // until Bokeh loads, or the output is gone
    }}
  }}
  check();
}})();
</script>
"""


def bokeh_hint_html() -> str:
    """The note and the script that removes it once BokehJS (with Panel's models) loaded."""
    return HINT_HTML.format(
        id=f"{HINT_CLASS}-{uuid.uuid4().hex}", cls=HINT_CLASS, seconds=HINT_SECONDS, text=HINT_TEXT
    )


def with_bokeh_hint(bundle: tuple[dict, dict] | None) -> tuple[dict, dict] | None:
    """Panel's notebook output ``(data, metadata)`` with the hint before its placeholder.
    Outputs that are not Bokeh placeholders (ipywidgets, VS Code's) are left as they are."""
    if bundle is None:
        return None
    data, metadata = bundle
    if EXEC_MIME not in data or "text/html" not in data:
        return bundle
    return {**data, "text/html": bokeh_hint_html() + data["text/html"]}, metadata
