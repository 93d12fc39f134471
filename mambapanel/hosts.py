"""Which host names a served dashboard answers to; ``dashboards/*.py`` refuse any other.

A web page whose domain is re-pointed at this machine (DNS rebinding) asks for the dashboard
under its own name. Its websocket then counts as same-origin (Tornado accepts an Origin equal
to the Host header before Bokeh's origin allowlist is consulted), so without this check that
page receives the document and the runs in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Panel and Bokeh are imported where used: the command line reads the names
    import panel as pn

# Bokeh's own setting for the websocket-origin allowlist; `python -m compute serve` sets it, so
# that the websocket check and the Host check read one list.
ALLOWED_HOSTS_VARIABLE = "BOKEH_ALLOW_WS_ORIGIN"
# Without that list (a plain `panel serve`): loopback names, any port. A rebinding page is
# always asked for under its own domain, never under one of these.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
DEFAULT_PORTS = {"http": 80, "https": 443}


def allowed_hosts() -> list[str]:
    """``HOST`` (any port) or ``HOST:PORT`` patterns: :data:`ALLOWED_HOSTS_VARIABLE`, else
    :data:`LOOPBACK_HOSTS`."""
    from bokeh.settings import settings

    return settings.allowed_ws_origin() or list(LOOPBACK_HOSTS)


def host_allowed(host: str, protocol: str, allowed: Sequence[str]) -> bool:
    """Whether a Host header (``name``, ``name:port``, ``[v6]:port``; without a port, the
    default port of ``protocol``) matches one of the ``allowed`` patterns."""
    from bokeh.server.util import check_allowlist

    if ":" not in host.rpartition("]")[2]:
        host = f"{host}:{DEFAULT_PORTS.get(protocol, 80)}"
    return check_allowlist(host.lower(), allowed)


def refusal() -> pn.pane.Str | None:
    """A page saying that the request's host name is refused, in a served session asked for
    under a name not in :func:`allowed_hosts`; None otherwise (and outside a served session:
    a notebook, a test)."""
    import panel as pn

    doc = pn.state.curdoc
    context = doc.session_context if doc is not None else None
    request = context.request if context is not None else None
    if request is None or host_allowed(request.host, request.protocol, allowed_hosts()):
        return None
    # The real request's host, not the Host header of the session token's payload, which a
    # client may forge. Str escapes it: the name is the client's.
    return pn.pane.Str(
        f"mambapanel: refused. This server was not started for the host name "
        f"{request.host!r}. To serve the dashboard under that name, start it with "
        f"`python -m compute serve RUN ... --allow-websocket-origin {request.host}`."
    )
