"""The dashboard: ``panel serve dashboards/explorer.py --args RUN [RUN ...]``.

Explore one or more stored runs (made by ``python -m compute extract`` and ``reduce``);
with several, the header's run menu switches between them. Binds to localhost unless
told otherwise (see the README's Dashboard section before exposing it).
"""

import sys

from mambapanel.views.serve import served

served(sys.argv[1:]).servable(title="mambapanel explorer")
