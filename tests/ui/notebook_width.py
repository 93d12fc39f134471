"""A page as narrow as a notebook's output area, for tests/ui/test_layout.py: an Explorer as
a cell's value (its own layout, no template) inside a column of WIDTH pixels;
``?compare=blocks`` compares two blocks.

``panel serve tests/ui/notebook_width.py --args RUN``
"""

import sys

import panel as pn

from mambapanel.views.explorer import Explorer

WIDTH = 800  # pixels: JupyterLab's output area beside its file browser

compare = pn.state.session_args.get("compare", [b"none"])[0].decode()
pn.Column(
    Explorer(sys.argv[1:], compare=compare), width=WIDTH, css_classes=["notebook-output"]
).servable(title="mambapanel in a notebook's width")
