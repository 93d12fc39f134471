"""The dashboard: ``python -m compute serve RUN [RUN ...]`` serves it on 127.0.0.1 (a plain
``panel serve dashboards/explorer.py --address 127.0.0.1 --args RUN ...`` too; without
``--address``, panel serve listens on every interface).

Explore one or more stored runs (made by ``python -m compute extract`` and ``reduce``);
with several, the sidebar's run menu switches between them. A page asked for under a host
name the server was not started for is refused (:mod:`mambapanel.hosts`); see the README's
Dashboard section before exposing it.
"""

import sys

from mambapanel.hosts import refusal
from mambapanel.views.serve import served

(refusal() or served(sys.argv[1:])).servable(title="mambapanel explorer")
