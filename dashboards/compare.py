"""Side-by-side comparison: ``python -m compute serve RUN [RUN ...]`` serves it beside the
explorer (or ``panel serve dashboards/compare.py --address 127.0.0.1 --args RUN ...``).

One run: two blocks of it (block 0 and the stage's last block) with the same patch
selected. Several runs (e.g. the same model with orders cross and morton): the same block
of two of them, the first two to begin with; the sidebar's ``run`` and ``run (right)`` menus
pick any two. Everything else is the Explorer of ``dashboards/explorer.py``, host check
included.
"""

import sys

from mambapanel.hosts import refusal
from mambapanel.views.serve import served

runs = sys.argv[1:]
compare = "runs" if len(runs) > 1 else "blocks"
(refusal() or served(runs, compare=compare, block=0)).servable(title="mambapanel compare")
