"""Side-by-side comparison: ``panel serve dashboards/compare.py --args RUN [RUN_B]``.

One run: two blocks of it (block 0 and the stage's last block) with the same patch
selected. Two runs (e.g. the same model with orders cross and morton): the same block of
each. Everything else is the Explorer of ``dashboards/explorer.py``.
"""

import sys

from mambapanel.views import dashboard

runs = sys.argv[1:]
compare = "runs" if len(runs) > 1 else "blocks"
dashboard(runs, compare=compare, block=0).servable(title="mambapanel compare")
