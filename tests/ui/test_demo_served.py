"""The README's demo command ends in a served dashboard: `python -m compute demo` (on the
session's demo runs, which it reuses) serves the explorer and compare apps, and Chromium
shows the trained demo models' attention from the stored runs."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from demo_runs import NAMES, ROOT, demo_command
from playwright.sync_api import Page, expect
from served import ARTIFACTS, SERVER_START_TIMEOUT, free_port
from test_dashboard import TIMEOUT_MS, click_patch, figure, wait_for_figure

from mambapanel.views.data import RunData

pytestmark = [pytest.mark.ui, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def demo_server(demo_runs: Path):
    """`python -m compute demo ... --port P` until the module's tests are done."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "compute-demo-serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            demo_command(demo_runs, "--port", str(port)), cwd=ROOT, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"compute demo exited with {process.returncode}: {log.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/explorer", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"compute demo did not serve {base}/explorer: {log.read_text()}")
                time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)
    # Stopping the demo stops its server: nothing is left listening.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/explorer", timeout=5)
    text = log.read_text()
    for name in NAMES:
        assert f"{demo_runs / name}: complete, reused" in text


def test_demo_serves_the_explorer_with_every_demo_run(
    page: Page, demo_server: str, demo_runs: Path
) -> None:
    page.set_viewport_size({"width": 1400, "height": 1100})
    page.goto(f"{demo_server}/explorer?run=morton&stage=0&block=0&method=pca")
    menu = page.locator(".bk-input-group").filter(
        has=page.locator("label", has_text=re.compile("^run$"))
    )
    expect(menu.locator("option")).to_have_count(len(NAMES), timeout=TIMEOUT_MS)
    grid = wait_for_figure(
        page, "patch-view", lambda shown: shown["image"] is not None and len(shown["image"]) == 256,
        "the patch view should show stage 0's 16x16 grid",
    )  # fmt: skip
    shown = click_patch(page, grid, row=6, col=9)
    stored = RunData(demo_runs / "morton").attention_row(0, 0, (6, 9))
    shown_values = np.array(shown["image"], dtype=np.float32)
    np.testing.assert_array_equal(shown_values, np.abs(stored).ravel())  # strength |α|
    page.screenshot(path=ARTIFACTS / "demo-dashboard.png", full_page=True)
    # The Findings tab: the stored findings of every run, with the order matrix across runs.
    page.locator(".bk-tab", has_text="Findings").click()
    expect(page.get_by_text("Patch order across runs")).to_be_visible(timeout=TIMEOUT_MS)
    page.screenshot(path=ARTIFACTS / "demo-findings.png", full_page=True)


def test_demo_serves_the_compare_app(page: Page, demo_server: str) -> None:
    page.set_viewport_size({"width": 1400, "height": 1100})
    page.goto(f"{demo_server}/compare?stage=1&block=0&method=pca")
    figure(page, "patch-view")
    expect(page.locator(".mambapanel-error")).to_have_count(0)
