"""A dashboard served by a real ``panel serve`` subprocess for the browser tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"  # git-ignored: screenshots and server logs
SERVER_START_TIMEOUT = 60.0
COUNTED_SERVE = Path(__file__).with_name("counted_serve.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``panel serve dashboards/<app>.py --args ...`` on 127.0.0.1 and a free port.

    ``counted``: run by tests/ui/counted_serve.py, which answers :meth:`count`.
    ``script``: serve this file (a script or a notebook) instead of ``dashboards/<app>.py``;
    its name is the app's.
    """

    def __init__(
        self, app: str, run: str, *more_runs: str, counted: bool = False, script: Path | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/{app}"
        # A page's request runs its script; one that builds its dashboards there (a notebook
        # of Explorers) takes longer than a request's wait: then the server is up once
        # Bokeh's static files answer.
        static = f"http://127.0.0.1:{self.port}/static/js/bokeh.min.js"
        self.ready = self.url if script is None else static
        # One log per app and run name, replaced by the next session's.
        self.log = ARTIFACTS / f"panel-serve-{app}-{Path(run).name}.log"
        ARTIFACTS.mkdir(exist_ok=True)
        launcher = [str(COUNTED_SERVE)] if counted else ["-m", "panel"]
        command = [
            sys.executable, *launcher, "serve", str(script or ROOT / "dashboards" / f"{app}.py"),
            "--address", "127.0.0.1", "--port", str(self.port),
            "--allow-websocket-origin", f"127.0.0.1:{self.port}",
            "--args", run, *more_runs,
        ]  # fmt: skip
        answers = subprocess.PIPE if counted else None
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=answers,
                stdout=answers or log,
                stderr=log,
                text=True,
            )
        self._wait()

    def count(self) -> dict[str, int]:
        """Live sessions and Explorer objects once the sessions that no browser is connected
        to have ended (a ``counted`` server only)."""
        self.process.stdin.write("count\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def memory(self) -> int:
        """The server's resident memory, bytes."""
        return psutil.Process(self.process.pid).memory_info().rss

    def _wait(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"panel serve exited with {self.process.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(self.ready, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"panel serve did not answer {self.url} in {SERVER_START_TIMEOUT} s")

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
