"""`python -m compute serve`, the README's serving command, as a real `panel serve` process:
it listens on loopback only, refuses pages asked for under another host name (DNS
rebinding) to a real Bokeh websocket client, and passes --basic-auth through intact. Also its
options as data, and the README's serving lines."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.cookiejar
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from bokeh.protocol import Protocol
from bokeh.protocol.receiver import Receiver
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from compute.serve import ServeError, ServeOptions, serve_command, serve_environment
from mambapanel.hosts import host_allowed

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 60.0
IMAGE_ID = "china.jpg"  # an image of the small run: in the document's image menu


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(run: Path, *options: str) -> tuple[subprocess.Popen, int]:
    """`python -m compute serve RUN --port P ...`, once it answers on 127.0.0.1:P."""
    port = free_port()
    command = [sys.executable, "-m", "compute", "serve", str(run), "--port", str(port), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/explorer", timeout=5)
            return process, port
        except urllib.error.HTTPError:  # answered (a login redirect's 403, say): it is up
            return process, port
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    stop(process)
    pytest.fail(f"compute serve did not answer on port {port}: {process.stdout.read()}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=20)
    process.stdout.close()


@pytest.fixture(scope="module")
def server(small_run: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    process, port = start(small_run)
    yield process, port
    stop(process)


@pytest.mark.slow
def test_the_server_listens_on_loopback_only(server):
    process, port = server  # the process became `panel serve` (exec): same pid
    listening = {
        (connection.laddr.ip, connection.laddr.port)
        for connection in psutil.Process(process.pid).net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    }
    assert listening == {("127.0.0.1", port)}


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


async def received(port: int, app: str, host: str, wanted: str, seconds: float) -> str:
    """What a websocket client of ``/app`` receives, as a browser would be sent it for a
    page loaded from ``http://host/app`` (Host and Origin ``host``; ``host`` resolving to
    127.0.0.1, as a rebinding page's domain does): the document, then its changes until
    ``wanted`` appears or ``seconds`` pass. JSON text of every message."""
    page = urllib.request.Request(f"http://127.0.0.1:{port}/{app}", headers={"Host": host})
    with urllib.request.urlopen(page, timeout=30) as response:
        token = re.search(r'"token":"([^"]+)"', response.read().decode()).group(1)
    request = HTTPRequest(
        f"ws://127.0.0.1:{port}/{app}/ws", headers={"Host": host, "Origin": f"http://{host}"}
    )
    socket = await websocket_connect(request, subprotocols=["bokeh", token])
    protocol = Protocol()
    receiver = Receiver(protocol)
    while await receiver.consume(await socket.read_message()) is None:  # the server's ACK
        pass
    pull = protocol.create("PULL-DOC-REQ")
    for part in (pull.header_json, pull.metadata_json, pull.content_json):
        await socket.write_message(part)
    texts, deadline = [], time.monotonic() + seconds
    while wanted not in "".join(texts) and (left := deadline - time.monotonic()) > 0:
        try:
            fragment = await asyncio.wait_for(socket.read_message(), left)
        except TimeoutError:
            break
        message = await receiver.consume(fragment)
        if message is not None:
            texts.append(json.dumps(message.content))
    socket.close()
    # Until the server answers the close (read_message then gives None): tornado closes the
    # connection's socket only then, and one left open when this loop ends is reported, as a
    # ResourceWarning, in whatever test the collector runs next.
    with contextlib.suppress(TimeoutError):
        while await asyncio.wait_for(socket.read_message(), 10) is not None:
            pass
    return "".join(texts)


@pytest.mark.slow
@pytest.mark.parametrize("app", ["explorer", "compare"])
def test_a_page_asked_for_under_another_host_name_gets_no_run(server, app):
    _, port = server
    # The server's own name: the run arrives (after the loading indicator).
    own = asyncio.run(received(port, app, f"127.0.0.1:{port}", IMAGE_ID, seconds=60))
    assert IMAGE_ID in own
    # A rebinding page's name: a refusal, and nothing of the run.
    other = asyncio.run(received(port, app, f"evil.example:{port}", IMAGE_ID, seconds=5))
    assert "This server was not started for the host name" in other  # (HTML-escaped)
    assert f"--allow-websocket-origin evil.example:{port}" in other
    assert IMAGE_ID not in other


@pytest.mark.slow
def test_basic_auth_reaches_panel_intact_and_guards_page_and_websocket(small_run):
    process, port = start(small_run, "--basic-auth", "Mixed-Case-Secret")
    base = f"http://127.0.0.1:{port}"
    cookies = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))

    def landing(url: str, password: str | None = None) -> str:
        form = password and urllib.parse.urlencode({"username": "u", "password": password})
        with opener.open(url, form and form.encode(), timeout=30) as response:
            return response.url

    def websocket_status(token: str, cookie: str = "") -> int:
        # A plain upgrade request, closed here: tornado's client leaves its socket open
        # when the handshake is refused.
        headers = {**UPGRADE, "Sec-WebSocket-Protocol": f"bokeh, {token}", "Cookie": cookie}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", "/explorer/ws", headers=headers)
            return connection.getresponse().status
        finally:
            connection.close()

    try:
        assert landing(f"{base}/explorer").startswith(f"{base}/login")
        assert websocket_status("t") == 403
        # Panel lower-cases a password given in its environment; on the command line it is
        # kept as given.
        assert landing(f"{base}/login", "mixed-case-secret").startswith(f"{base}/login")
        assert not landing(f"{base}/login", "Mixed-Case-Secret").startswith(f"{base}/login")
        assert landing(f"{base}/explorer") == f"{base}/explorer"  # logged in
        with opener.open(f"{base}/explorer", timeout=30) as response:
            token = re.search(r'"token":"([^"]+)"', response.read().decode()).group(1)
        cookie = "; ".join(f"{c.name}={c.value}" for c in cookies)
        assert websocket_status(token, cookie) == 101  # the page's own socket, logged in
        assert websocket_status(token) == 403  # the same token without the login
        # A random cookie secret, in the server's environment: not in the process list.
        server = psutil.Process(process.pid)
        assert "--cookie-secret" not in server.cmdline()
        assert len(server.environ()["PANEL_COOKIE_SECRET"]) == 64
    finally:
        stop(process)


def test_the_command_line_and_environment_of_the_server(tmp_path):
    command = serve_command([tmp_path / "run", "s3://bucket/run"], ServeOptions())
    assert command[command.index("--address") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5006"
    assert [Path(part).name for part in command if part.endswith(".py")] == [
        "explorer.py",
        "compare.py",
    ]
    assert command[command.index("--args") + 1 :] == [str(tmp_path / "run"), "s3://bucket/run"]
    environment = serve_environment(ServeOptions())
    allowed = "127.0.0.1:5006,localhost:5006,[::1]:5006"
    assert environment["BOKEH_ALLOW_WS_ORIGIN"] == allowed
    assert environment.get("PANEL_COOKIE_SECRET") == os.environ.get("PANEL_COOKIE_SECRET")

    options = ServeOptions(basic_auth="users.json", cookie_secret="s3cret", port=8000)
    command = serve_command(["run"], options)
    assert command[command.index("--basic-auth") + 1] == "users.json"
    assert "s3cret" not in command  # in the environment: other users can list command lines
    assert serve_environment(options)["PANEL_COOKIE_SECRET"] == "s3cret"
    random_secrets = {serve_environment(ServeOptions(basic_auth="pw"))["PANEL_COOKIE_SECRET"]}
    random_secrets.add(serve_environment(ServeOptions(basic_auth="pw"))["PANEL_COOKIE_SECRET"])
    assert len(random_secrets) == 2

    tls = ServeOptions(ssl_certfile="cert.pem", ssl_keyfile="key.pem", use_xheaders=True)
    command = serve_command(["run"], tls)
    assert command[command.index("--ssl-keyfile") + 1] == "key.pem" and "--use-xheaders" in command
    assert tls.urls()[0] == "https://127.0.0.1:5006/explorer"


def test_exposed_options_are_refused_or_warned_about():
    with pytest.raises(ServeError, match=r"--address 0\.0\.0\.0 listens on every interface"):
        ServeOptions(address="0.0.0.0").check()
    with pytest.raises(ServeError, match=r"--ssl-keyfile key\.pem needs --ssl-certfile"):
        ServeOptions(ssl_keyfile="key.pem").check()
    exposed = ServeOptions(address="0.0.0.0", allow_websocket_origin=("host.example.org",))
    assert exposed.allowed_hosts() == ["host.example.org"]
    assert exposed.urls() == [
        "http://host.example.org:5006/explorer",
        "http://host.example.org:5006/compare",
    ]
    [warning] = exposed.check()
    assert "listening on 0.0.0.0 without --basic-auth" in warning
    [warning] = ServeOptions(address="192.168.1.5", basic_auth="pw").check()
    assert "without --ssl-certfile: the password crosses the network in clear" in warning
    direct = ServeOptions(address="192.168.1.5", basic_auth="pw", ssl_certfile="cert.pem")
    assert direct.check() == []
    assert direct.allowed_hosts() == ["192.168.1.5:5006"]
    assert ServeOptions(address="::1").allowed_hosts()[0] == "[::1]:5006"


@pytest.mark.parametrize(
    ("host", "protocol", "allowed", "expected"),
    [
        ("127.0.0.1:5006", "http", ["127.0.0.1:5006"], True),
        ("LOCALHOST:5006", "http", ["localhost:5006"], True),
        ("evil.example:5006", "http", ["127.0.0.1:5006", "localhost:5006"], False),
        ("127.0.0.1:5007", "http", ["127.0.0.1:5006"], False),
        ("host.example.org", "https", ["host.example.org:443"], True),  # the default port
        ("host.example.org", "http", ["host.example.org:443"], False),
        ("host.example.org:8443", "https", ["host.example.org"], True),  # any port
        ("[::1]:5006", "http", ["[::1]:5006"], True),
        ("[::1]", "http", ["[::1]:5006"], False),
    ],
)
def test_host_names_against_the_allowed_ones(host, protocol, allowed, expected):
    assert host_allowed(host, protocol, allowed) is expected


def test_the_readme_serves_with_compute_serve_or_on_loopback():
    """Every serving line of the README's shell blocks binds loopback: `compute serve` does
    unless given --address, a plain `panel serve` must say --address 127.0.0.1."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    # One line per command (continuation lines joined), comments dropped.
    lines = [
        line.partition("#")[0]
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
    ]
    plain = [line for line in lines if "panel serve" in line]
    assert plain and all("--address 127.0.0.1" in line for line in plain)
    served = [line for line in lines if "-m compute serve" in line]
    assert len(served) >= 2
    for line in served:
        address = re.search(r"--address (\S+)", line)
        assert address is None or "--basic-auth" in line, line
