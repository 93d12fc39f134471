"""Browser tests: Debian's Chromium driven by pytest-playwright against real ``panel serve``
subprocesses on 127.0.0.1. A missing Chromium fails the tests (``bash tools/setup.sh``
installs it); it never skips them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from served import ARTIFACTS, Server

CHROMIUM = Path("/usr/bin/chromium")
# Headless in a container without a GPU or a network: no sandbox (root in CI), no GPU, and
# none of Chromium's background downloads and updates.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """pytest-playwright's launch options, with Debian's Chromium instead of a download."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the browser tests need Debian's chromium; install it with "
            "`bash tools/setup.sh` (as root) or `apt-get install chromium`"
        )
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/`` at the repository root (git-ignored): screenshots to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def explorer_server(small_run: Path) -> Iterator[Server]:
    server = Server("explorer", str(small_run))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def base_url() -> None:
    """No base URL: the tests open full URLs of their servers. Replaces pytest-playwright's
    fallback fixture, a method of a plugin class that pytest 9 deprecates (an error here)."""
    return None
