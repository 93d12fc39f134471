"""The Explorer in a notebook as a user meets it: a real ``jupyter lab`` (this venv's kernel)
driven in Chromium, with every address off 127.0.0.1 refused as on a machine without
internet; and ``panel serve`` of a notebook holding two Explorers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from notebooks import explorer_cells, notebook, write
from playwright.sync_api import Locator, Page, expect
from served import ARTIFACTS, ROOT, Server, free_port
from test_dashboard import FIGURE_JS

from mambapanel.views.notebook import HINT_CLASS, HINT_SECONDS

pytestmark = [pytest.mark.ui, pytest.mark.timeout(600)]

TIMEOUT_MS = 120_000  # a kernel imports Panel, HoloViews and the views on a busy machine
TOKEN = "mambapanel-test"
OFFLINE = re.compile(r"^https?://(?!127\.0\.0\.1[:/])")  # the CDN, Jupyter's news, ...
# The index-th Bokeh figure of that name in the page (one per output showing it), as
# test_dashboard.FIGURE_JS gives it; null until drawn.
FIGURE_AT_JS = f"""([name, index]) => window.Bokeh === undefined ? null
  : ({FIGURE_JS})(name, index)"""
SCROLL_JS = """([name, index]) => [...Bokeh.index.all_views()]
  .filter((v) => v.model.name === name)[index].el.scrollIntoView()"""


class Lab:
    """``jupyter lab`` on 127.0.0.1 and a free port, serving ``root``, with a token, no
    browser, Jupyter's settings and runtime files under ``home``, the app exposed to the page
    (``window.jupyterapp``) to run a notebook's cells, and the kernel of this Python."""

    def __init__(self, root: Path, home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = ARTIFACTS / "jupyter-lab.log"
        ARTIFACTS.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "IPYTHONDIR": str(home / "ipython"),
        }
        env.pop("PANEL_INLINE", None)  # each notebook says itself whether BokehJS is inline
        # Not used here: a faster start. (A Python literal: the command line evaluates it.)
        extensions = {
            "panel.io.jupyter_server_extension": False,
            "jupyter_lsp": False,
            "jupyter_server_terminals": False,
        }
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True", f"--ServerApp.jpserver_extensions={extensions}",
        ]  # fmt: skip
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"jupyter lab exited: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={TOKEN}", timeout=5):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        self.stop()
        pytest.fail(f"jupyter lab did not answer in 120 s: {self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()  # shuts its kernels down
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def lab(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One JupyterLab for the module, serving two notebooks of an Explorer shown in two
    cells: ``inline.ipynb`` (BokehJS inline) and ``cdn.ipynb`` (``pn.extension()``)."""
    root = tmp_path_factory.mktemp("lab")
    write(notebook(*explorer_cells(small_run)), root / "inline.ipynb")
    write(notebook(*explorer_cells(small_run, inline=False)), root / "cdn.ipynb")
    server = Lab(root, tmp_path_factory.mktemp("jupyter-home"))
    yield server
    server.stop()


def run_notebook(page: Page, lab: Lab, name: str) -> None:
    """Open ``name`` in JupyterLab, offline, and run all its cells once its kernel is up."""
    page.route(OFFLINE, lambda route: route.abort())
    page.set_viewport_size({"width": 1400, "height": 1400})
    page.goto(f"{lab.url}/lab/tree/{name}?reset&token={TOKEN}")
    page.wait_for_function(
        """() => {
          const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
          const kernel = panel && panel.sessionContext && panel.sessionContext.session
            && panel.sessionContext.session.kernel;
          return kernel && kernel.connectionStatus === "connected";
        }""",
        timeout=TIMEOUT_MS,
    )
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def figure(page: Page, name: str, index: int) -> dict:
    """The ``index``-th figure ``name``, scrolled into view, once drawn."""
    page.wait_for_function(
        f"(a) => ({FIGURE_AT_JS})(a) !== null", arg=[name, index], timeout=TIMEOUT_MS
    )
    page.evaluate(SCROLL_JS, [name, index])
    return page.evaluate(FIGURE_AT_JS, [name, index])


def click_patch(page: Page, index: int, row: int, col: int, status: Locator) -> None:
    """Click patch (row, col) of the ``index``-th patch view until ``status`` names it: a
    click while the page still lays itself out may land beside the figure."""
    for _ in range(TIMEOUT_MS // 5000):
        grid = figure(page, "patch-view", index)
        (x0, x1), (y0, y1) = grid["x"], grid["y"]
        page.mouse.click(
            grid["left"] + (col - x0) / (x1 - x0) * grid["width"],
            grid["top"] + (y1 - row) / (y1 - y0) * grid["height"],
        )
        try:
            expect(status).to_contain_text(f"Clicked patch: ({row}, {col})", timeout=5000)
            return
        except AssertionError:
            continue
    expect(status).to_contain_text(f"Clicked patch: ({row}, {col})")


def test_an_explorer_in_two_cells_draws_and_a_click_updates_both(lab, page, artifacts):
    """BokehJS inline: both outputs draw, no hint; a click on a patch of the second cell's
    patch view shows the attention from it and names it in the status line of both cells."""
    run_notebook(page, lab, "inline.ipynb")
    figure(page, "patch-view", 0)
    assert figure(page, "patch-view", 1)["title"] == "stage 1: 0 selected patches"
    statuses = page.locator(".mambapanel-status p")
    expect(statuses).to_have_count(2)
    click_patch(page, 1, 2, 3, statuses.nth(1))
    for index in range(2):
        expect(statuses.nth(index)).to_contain_text("Clicked patch: (2, 3)", timeout=TIMEOUT_MS)
        page.wait_for_function(
            f"(a) => ({FIGURE_AT_JS})(a).title === 'block 0: attention from (2, 3)'",
            arg=["patch-view", index],
            timeout=TIMEOUT_MS,
        )
    # The hint was removed by its script as soon as it ran: BokehJS was there.
    expect(page.locator(f".{HINT_CLASS}")).to_have_count(0)
    page.screenshot(path=artifacts / "notebook-lab-inline.png")


def test_without_bokehjs_each_output_says_how_to_load_it(lab, page, artifacts):
    """``pn.extension()`` offline: BokehJS never loads; each Explorer output shows the hint
    (after its grace period) instead of staying blank."""
    run_notebook(page, lab, "cdn.ipynb")
    hints = page.locator(f".{HINT_CLASS}")
    expect(hints).to_have_count(2, timeout=TIMEOUT_MS)
    for index in range(2):
        expect(hints.nth(index)).to_be_visible(timeout=HINT_SECONDS * 1000 + TIMEOUT_MS)
        expect(hints.nth(index)).to_contain_text("pn.extension(inline=True)")
    assert page.evaluate("() => window.Bokeh === undefined")
    page.screenshot(path=artifacts / "notebook-lab-offline.png")


@pytest.fixture(scope="module")
def served_notebook(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``panel serve page.ipynb``: a notebook of two servable Explorers of the small run, the
    first at stage 2, the second at stage 1, block 0."""
    page = tmp_path_factory.mktemp("served") / "page.ipynb"
    cells = [
        "import panel as pn\n\nfrom mambapanel.views import Explorer\n\npn.extension()",
        f"Explorer({str(small_run)!r}, stage=2).servable()",
        f"Explorer({str(small_run)!r}, stage=1, block=0).servable()",
    ]
    server = Server("page", str(small_run), script=write(notebook(*cells), page))
    yield server
    server.stop()


def query(page: Page) -> dict[str, str]:
    """The page's URL query."""
    return dict(urllib.parse.parse_qsl(page.evaluate("() => window.location.search")[1:]))


def test_a_served_notebook_of_two_explorers_keeps_the_first_ones_view_in_the_url(
    served_notebook, page, artifacts
):
    """The first Explorer of the page opens at the URL's stage, block and patch and keeps
    them there; the second opens at its own and leaves the URL alone."""
    page.set_viewport_size({"width": 1400, "height": 1100})
    # The notebook's cells run for the page's request: longer than playwright's default wait.
    page.goto(f"{served_notebook.url}?stage=2&block=1&patch=1,1", timeout=TIMEOUT_MS)
    first, second = figure(page, "patch-view", 0), figure(page, "patch-view", 1)
    titles = {first["title"], second["title"]}
    assert titles == {"block 1: attention from (1, 1)", "stage 1: 0 selected patches"}, titles
    statuses = page.locator(".mambapanel-status p")
    expect(statuses.nth(0)).to_contain_text("Clicked patch: (1, 1)")
    expect(statuses.nth(1)).to_contain_text("Clicked patch: none")
    index = 1 if second["title"].startswith("stage 1") else 0  # the second Explorer's
    click_patch(page, index, 5, 6, statuses.nth(1))
    assert {key: query(page).get(key) for key in ("stage", "block", "patch")} == {
        "stage": "2",
        "block": "1",
        "patch": "1,1",
    }  # the second Explorer's click is not the page's
    click_patch(page, 1 - index, 0, 1, statuses.nth(0))
    page.wait_for_function(
        "() => new URLSearchParams(window.location.search).get('patch') === '0,1'",
        timeout=TIMEOUT_MS,
    )
    assert query(page)["stage"] == "2"
    page.screenshot(path=artifacts / "notebook-served.png", full_page=True)
