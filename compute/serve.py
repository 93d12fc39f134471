"""`python -m compute serve`: the dashboard's two apps (``/explorer``, ``/compare``) over
stored runs, as a ``panel serve`` process that listens on 127.0.0.1 unless told otherwise.
``compute demo`` serves its runs through the same functions.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dashboards
from compute.arguments import PORT
from mambapanel import store
from mambapanel.errors import MambapanelError
from mambapanel.hosts import ALLOWED_HOSTS_VARIABLE, LOOPBACK_HOSTS
from mambapanel.storage import location

APPS = ("explorer", "compare")  # dashboards/<app>.py, served at /<app>
# The apps' folder: the checkout's, or the installed package's (they ship with it).
DASHBOARDS = Path(dashboards.__file__).resolve().parent
# Addresses that listen on every interface: no host name browsers could use follows from them.
WILDCARD_ADDRESSES = ("0.0.0.0", "::")
# Panel reads it from the environment, which (unlike the command line) other users of the
# machine cannot list. Not PANEL_BASIC_AUTH: Panel lower-cases that variable's password.
COOKIE_SECRET_VARIABLE = "PANEL_COOKIE_SECRET"


class ServeError(MambapanelError, ValueError):
    """Serving options that cannot work together."""


@dataclass(frozen=True)
class ServeOptions:
    """How the dashboard is served; ``--help`` of ``serve`` and ``demo`` reads its defaults."""

    port: int = 5006
    address: str = "127.0.0.1"
    # HOST or HOST:PORT names browsers reach the server by, beyond its address (and the
    # loopback names when the address is loopback).
    allow_websocket_origin: tuple[str, ...] = ()
    basic_auth: str | None = None
    cookie_secret: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    use_xheaders: bool = False

    @property
    def loopback(self) -> bool:
        """The address is reachable from this machine only."""
        if self.address == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.address).is_loopback
        except ValueError:  # a host name: whatever it resolves to may be reachable
            return False

    def allowed_hosts(self) -> list[str]:
        """The host names (``HOST`` any port, or ``HOST:PORT``) that pages and websockets
        are accepted for (:mod:`mambapanel.hosts`)."""
        hosts = list(self.allow_websocket_origin)
        if self.address not in WILDCARD_ADDRESSES:
            name = f"[{self.address}]" if ":" in self.address else self.address  # IPv6
            hosts.append(f"{name}:{self.port}")
        if self.loopback:
            hosts += [f"{name}:{self.port}" for name in LOOPBACK_HOSTS]
        return list(dict.fromkeys(hosts))

    def check(self) -> list[str]:
        """Refuse options that cannot work; return warnings for risky ones.

        Raises
        ------
        ServeError
            A wildcard address without a host name, or a key file without a certificate.
        """
        if self.address in WILDCARD_ADDRESSES and not self.allow_websocket_origin:
            raise ServeError(
                f"--address {self.address} listens on every interface, and pages are served "
                "only for host names the server is started for: name the one(s) browsers "
                f"will use, e.g. --allow-websocket-origin host.example.org:{self.port}"
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ServeError(f"--ssl-keyfile {self.ssl_keyfile} needs --ssl-certfile")
        warnings = []
        if not self.loopback and not self.basic_auth:
            warnings.append(
                f"warning: listening on {self.address} without --basic-auth: anyone who "
                f"reaches port {self.port} can read the runs"
            )
        if not self.loopback and self.basic_auth and not self.ssl_certfile:
            warnings.append(
                f"warning: --basic-auth on {self.address} without --ssl-certfile: the "
                "password crosses the network in clear unless a TLS proxy is in front"
            )
        return warnings

    def urls(self) -> list[str]:
        """Where the apps are, for the message printed at start."""
        scheme = "https" if self.ssl_certfile else "http"
        host = self.allowed_hosts()[0]
        if ":" not in host.rpartition("]")[2]:
            host = f"{host}:{self.port}"
        return [f"{scheme}://{host}/{app}" for app in APPS]


def serve_command(runs: Sequence[str | Path], options: ServeOptions) -> list[str]:
    """``panel serve`` of the apps with ``runs`` loaded (absolute paths, or URLs)."""
    command = [
        sys.executable, "-m", "panel", "serve",
        *(str(DASHBOARDS / f"{app}.py") for app in APPS),
        "--address", options.address, "--port", str(options.port),
    ]  # fmt: skip
    for flag, value in (
        ("--basic-auth", options.basic_auth),
        ("--ssl-certfile", options.ssl_certfile),
        ("--ssl-keyfile", options.ssl_keyfile),
    ):
        if value:
            command += [flag, value]
    if options.use_xheaders:
        command.append("--use-xheaders")
    return [*command, "--args", *(str(location(run)) for run in runs)]


def serve_environment(options: ServeOptions) -> dict[str, str]:
    """The server's environment: this one, with the allowed host names (read by Bokeh's
    websocket check and by :mod:`mambapanel.hosts`) and, with ``--basic-auth``, the cookie
    secret (a random one unless given: logins then end when the server stops)."""
    environment = {**os.environ, ALLOWED_HOSTS_VARIABLE: ",".join(options.allowed_hosts())}
    secret = options.cookie_secret or (secrets.token_hex(32) if options.basic_auth else None)
    if secret:
        environment[COOKIE_SECRET_VARIABLE] = secret
    return environment


def serve(runs: Sequence[str | Path], options: ServeOptions = ServeOptions()) -> None:
    """Serve the dashboard until stopped (Ctrl-C): this process becomes ``panel serve``, so
    a signal that stops it stops the server (no orphaned server).

    Raises
    ------
    ServeError
        See :meth:`ServeOptions.check`.
    mambapanel.store.RunError
        A run that is missing, not a run or incomplete.
    """
    for warning in options.check():
        print(warning, file=sys.stderr)
    for run in runs:
        store.open_run(run)
    print(f"serving {len(runs)} runs: {' and '.join(options.urls())} (Ctrl-C stops)", flush=True)
    command = serve_command(runs, options)
    environment = serve_environment(options)
    # `python -m panel` puts the working directory first on sys.path: the one holding the
    # packages that the apps import (a checkout or site-packages).
    os.chdir(DASHBOARDS.parent)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, environment)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serving options of ``serve`` and ``demo``."""
    defaults = ServeOptions()
    parser.add_argument(
        "--port", type=PORT, default=defaults.port, help=f"port (default {defaults.port})"
    )
    parser.add_argument(
        "--address",
        default=defaults.address,
        help=f"address to listen on (default {defaults.address}: this machine only; "
        f"{' or '.join(map(repr, WILDCARD_ADDRESSES))} for every interface: see the README "
        "first)",
    )
    parser.add_argument(
        "--allow-websocket-origin",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a host name browsers reach the server by (repeat for several; without a port, "
        "any port): pages and websockets are refused for other names (DNS rebinding). "
        "Always allowed: ADDRESS:PORT, and for a loopback address localhost, 127.0.0.1 and "
        "[::1] at PORT",
    )
    parser.add_argument(
        "--basic-auth",
        default=None,
        metavar="PASSWORD_OR_FILE",
        help="a password, or a JSON file {user: password} (keeps it out of the process "
        "list), asked for before the page and its websocket; use it with TLS",
    )
    parser.add_argument(
        "--cookie-secret",
        default=None,
        help="signs the login cookie of --basic-auth (default: a random one per start, so "
        "logins end when the server stops)",
    )
    parser.add_argument("--ssl-certfile", default=None, help="TLS certificate (PEM): https")
    parser.add_argument("--ssl-keyfile", default=None, help="its key, if not in the certfile")
    parser.add_argument(
        "--use-xheaders",
        action="store_true",
        help="behind a reverse proxy: take the client's address and scheme from its "
        "X-Real-Ip / X-Forwarded-For and X-Scheme / X-Forwarded-Proto headers",
    )


def options_from(args: argparse.Namespace) -> ServeOptions:
    """The :class:`ServeOptions` of parsed :func:`add_arguments` options."""
    return ServeOptions(
        port=args.port,
        address=args.address,
        allow_websocket_origin=tuple(args.allow_websocket_origin),
        basic_auth=args.basic_auth,
        cookie_secret=args.cookie_secret,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        use_xheaders=args.use_xheaders,
    )
