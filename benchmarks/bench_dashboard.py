"""Responsiveness of the dashboard (a script, not a test). Four figures, with targets:

1. lasso -> patch view, p² = 3,136 points (Mode 2 of a stage-0 block at 224 px): server
   time from a Lasso stream event to the updated patch grid, scatter highlight and status,
   all Bokeh models updated (target <= 100 ms); then a query of 50 patches (a 5 x 10 box
   dragged on the patch grid, a BoundsXY event) in each direction, ``from`` (rows of
   ``attention_mean``) and ``to`` (columns): to the patch grid of a PatchView alone
   (target <= 100 ms), and to the Explorer's patch grid, image view and status (the image
   view reads its image's whole matrix in either direction, one chunk per image and
   block, as a click does; no target), and the first query of columns of a block (which
   reads its whole matrix; no target);
2. lasso -> views, 1,000,000 inter-block points (Mode 1; a synthetic embedding of 125,000
   images x 8 blocks, since no run here has that many): the same path, Datashader
   re-shading the selected points (target <= 300 ms);
3. ``panel serve`` start -> first render of a stage-0 run in headless Chromium: the page is
   polled until the scatterplot, patch and image figures are drawn (target <= 5 s);
4. the same with six runs on the command line (the first one shown): runs are opened when
   first shown, so this should match 3;
5. 3 again, with the dashboard built by the script itself (``dashboard(...).servable()``),
   as dashboards/explorer.py did before ``mambapanel.views.serve``: the page is then sent
   only after the imports and the build, and the browser loads Bokeh's JavaScript after
   that instead of meanwhile. The ratio of 5 to 3 is printed;
6. the Overview tab (:mod:`mambapanel.views.overview`) of a served run of 4 stages x 8 blocks
   x 250 images (2,000 Mode 1 points per stage; stage 0 56 x 56): from the click on the tab,
   1 s after the page is drawn (a served page draws the tab in the background once it is
   drawn: :func:`mambapanel.views.overview.overview_tab`), to its figures drawn in headless
   Chromium, the stage overview's with their 2,000 points
   each (and the block overview's 32 maps beside them) (target <= 1 s); and the server's
   CPU seconds to build and render the tab, the part of it that a loaded machine stretches;
7. the block overview's update for a new patch, 8 blocks at p² = 3,136 (stage 0 of that run)
   and the same image location in the 3 other stages: server time from the new patch to the
   maps' Bokeh models updated, the rows read from the store (target <= 300 ms);
8. ``--sessions N`` (instead of 1-7): N users at once on one server of the six demo runs,
   each in a browser context of its own: load (first render: page request to the three
   figures drawn), click a patch at once (did it land on the patch aimed at?), change
   stage, close; ``--rounds`` times. Per round: how many were drawn, the median and the
   longest first render, the server's and the whole machine's CPU seconds, and the
   server's resident memory once the closed sessions have ended (targets: all drawn,
   longest first render <= 10 s, memory after the last round within 20 MB of after the
   first). Then, on the same (warm) server, users one at a time: the CPU seconds one first
   render costs the browser (every process this script started but the server: Chromium
   and its driver) and the server, and the least time N first renders at once then take on
   this machine's cores: N x (browser + server) / cores, as if nothing else ran and no
   core were ever idle. Where that bound exceeds 10 s the target cannot be met with the
   browsers on the server's machine, whatever the server does.

    python benchmarks/bench_dashboard.py                  # builds a stage-0 run (~30 s)
    python benchmarks/bench_dashboard.py --run runs/NAME  # any run with a 56x56 stage 0
    python benchmarks/bench_dashboard.py --overview-run runs/overview  # kept from an earlier
    python benchmarks/bench_dashboard.py --sessions 10    # builds the demo runs (~4 min)
    python benchmarks/bench_dashboard.py --sessions 10 --demo-runs demo-runs

The events are fired in this process on an Explorer rendered into a Bokeh document (as a
served session does; the stream callbacks hold it as they do there); not timed are the
websocket and the browser's drawing (in 1, 2 and 7). The machine's load average is printed with each
figure: on a shared machine, compare figures taken at similar load. In 6 the browsers run
on the server's machine and share its cores with it. The run of 6 and 7 is made by the
store's own functions from synthetic attention (:func:`overview_run`, ~1 min): no model
here has 8 blocks at 56 x 56.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import panel as pn
import psutil
from bokeh.document import Document
from panel.io.state import set_curdoc
from playwright.async_api import Browser, async_playwright
from playwright.async_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from compute.demo import DEMO_MODELS
from mambapanel import store
from mambapanel.reduce import reduce_run
from mambapanel.views import Explorer, RunData
from mambapanel.views.data import Embedding, SharedReads
from mambapanel.views.overview import Overview
from mambapanel.views.patch import PatchView

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DRAWN_JS = """() => window.Bokeh !== undefined && ["scatterplot", "patch-view", "image-view"]
  .every((name) => [...Bokeh.index.all_views()].some((v) => v.model.name === name))"""
# The patch view's frame in page pixels and its title; the scatterplot's title.
PATCH_VIEW_JS = """() => {
  const view = [...Bokeh.index.all_views()].find((v) => v.model.name === "patch-view");
  const canvas = view.canvas_view.el.getBoundingClientRect();
  return {left: canvas.left + view.frame.bbox.left, top: canvas.top + view.frame.bbox.top,
          width: view.frame.bbox.width, height: view.frame.bbox.height,
          title: view.model.title.text};
}"""
SCATTER_TITLE_JS = """() => [...Bokeh.index.all_views()].find(
  (v) => v.model.name === "scatterplot").model.title.text"""
# The Overview tab's stage overview, drawn: one figure per stage with all its points.
STAGES_DRAWN_JS = """([stages, points]) => window.Bokeh !== undefined && stages.every((stage) =>
  [...Bokeh.index.all_views()].some((v) => v.model.name === `stage-overview-${stage}`
    && v.frame.bbox.width > 0 && v.model.renderers.some(
      (r) => r.data_source && r.data_source.data.x && r.data_source.data.x.length === points)))"""
# The run of the overview figures: stages of 8 blocks, 250 images (2,000 Mode 1 points each).
OVERVIEW_GRIDS = (56, 28, 14, 7)
OVERVIEW_BLOCKS, OVERVIEW_IMAGES = 8, 250
# The demo runs of --sessions: the six VMamba ones, as in the load test of issue 10.
VMAMBA_DEMOS = [name for name, (model, _) in DEMO_MODELS.items() if model.startswith("vmamba")]
RENDER_TIMEOUT_MS = 120_000  # a page not drawn by then counts as not drawn
SESSIONS_END_S = 20  # closed sessions end within 16 s (see users_at_once), then a collection


class SyntheticRun(RunData):
    """A stand-in run held in memory: ``n_images`` x ``n_blocks`` Mode 1 points in one
    Gaussian cluster per block, a 7 x 7 grid, random attention; nothing on disk."""

    def __init__(self, n_images: int, n_blocks: int, seed: int = 0) -> None:
        self.path, self.name = Path("synthetic"), "synthetic"
        self._rng = np.random.default_rng(seed)
        self._n_images, self._n_blocks = n_images, n_blocks
        centres = self._rng.normal(scale=8.0, size=(n_blocks, 2))
        points = centres + self._rng.normal(size=(n_images, n_blocks, 2))
        image, block = np.divmod(np.arange(n_images * n_blocks), n_blocks)
        flat = points.reshape(-1, 2)
        self._points = Embedding(flat[:, 0], flat[:, 1], image=image, block=block)
        self._ids = [f"image{i:06d}" for i in range(n_images)]

    def open(self) -> SyntheticRun:
        return self

    stages = property(lambda self: [0])
    image_ids = property(lambda self: self._ids)
    order = property(lambda self: "cross")
    has_cls = property(lambda self: False)
    explanations = property(lambda self: [])
    by_route = property(lambda self: False)

    def n_blocks(self, stage: int) -> int:
        return self._n_blocks

    def grid(self, stage: int) -> tuple[int, int]:
        return 7, 7

    full_grid = grid

    def pool(self, stage: int) -> int:
        return 1

    def methods(self, stage: int) -> list[str]:
        return ["pca"]

    def routes(self, stage: int) -> None:
        return None  # no routes recorded: the Explorer offers none

    def inter_embedding(self, stage: int, method: str) -> Embedding:
        return self._points

    def intra_embedding(self, stage: int, block: int, method: str) -> Embedding:
        row, col = np.divmod(np.arange(49), 7)
        x, y = self._rng.normal(size=(2, 49))
        return Embedding(x, y, row=row, col=col)

    def attention_row(self, stage: int, block: int, patch: tuple[int, int]) -> np.ndarray:
        return self._rng.random((7, 7), dtype=np.float32)

    def image_attention_row(self, stage, block, image, patch) -> np.ndarray:
        return self._rng.random((7, 7), dtype=np.float32)

    def thumbnail(self, image: int) -> np.ndarray:
        return np.zeros((64, 64, 3), dtype=np.uint8)


def stage0_run(workdir: Path) -> Path:
    """A real run of stage 0 at 224 px (56 x 56 patches, 2 images) with PCA embeddings."""
    run = workdir / "stage0"
    for command in (
        ["extract", "--model", "vmamba-micro", "--images", "photos", "--n", "2", "--size", "224",
         "--stages", "0", "--workers", "1", "--out", str(run)],
        ["reduce", str(run), "--methods", "pca"],
    ):  # fmt: skip
        subprocess.run([sys.executable, "-m", "compute", *command], check=True, cwd=ROOT)
    return run


def demo_runs(workdir: Path) -> Path:
    """The six VMamba runs of ``python -m compute demo`` (:data:`VMAMBA_DEMOS`; about 4
    minutes on 2 cores)."""
    runs = workdir / "demo-runs"
    command = ["demo", "--no-serve", "--runs", str(runs), "--models", ",".join(VMAMBA_DEMOS)]
    subprocess.run([sys.executable, "-m", "compute", *command], check=True, cwd=ROOT)
    return runs


def overview_run(workdir: Path) -> Path:
    """A run of 4 stages (grids 56, 28, 14, 7) x 8 blocks x 250 images, written by the store's
    own functions: the mean attention of each block decays with the distance along its own
    route (row-major or column-major, a decay per block), each image keeps a sketch near its
    block's centre, and ``reduce`` adds the PCA embeddings (2,000 Mode 1 points per stage)."""
    run = workdir / "overview"
    layouts = [store.StageLayout(stage, OVERVIEW_BLOCKS, (side, side)) for stage, side in
               enumerate(OVERVIEW_GRIDS)]  # fmt: skip
    images = [(f"image{index:03d}.png", "") for index in range(OVERVIEW_IMAGES)]
    attrs = {"model": "synthetic", "order": "cross", "keep": "sketch", "keep_images": 0,
             "sketch_dim": 64, "sketch_seed": 0}  # fmt: skip
    store.create_run(
        run, images=images, layouts=layouts, dtype="float16", shard_size=OVERVIEW_IMAGES,
        attrs=attrs,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    thumbnails = np.zeros((OVERVIEW_IMAGES, 64, 64, 3), np.uint8)
    for layout in layouts:
        side = layout.grid[0]
        row, col = np.divmod(np.arange(side * side), side)
        sums = np.empty((OVERVIEW_BLOCKS, side * side, side * side))
        for block in range(OVERVIEW_BLOCKS):
            step = row * side + col if block % 2 == 0 else col * side + row
            lag = (step[:, None] - step[None, :]).astype(np.float64)
            decay = np.exp(-np.abs(lag) / (1 + block) / side * 4)
            sums[block] = OVERVIEW_IMAGES * np.where(lag >= 0, decay, -0.1 * decay)
        centres = rng.normal(scale=6.0, size=(OVERVIEW_BLOCKS, 64))
        sketches = centres + rng.normal(size=(OVERVIEW_IMAGES, OVERVIEW_BLOCKS, 64))
        store.write_shard(
            run, 0, thumbnails, {layout.stage: sums}, {layout.stage: sketches.astype(np.float32)}
        )
        del sums
    store.finalise(run)
    reduce_run(run, methods=("pca",), progress=False)
    return run


def overview_first_draw(run: Path) -> float:
    """Seconds from a click on the Overview tab of a served page of ``run`` to the stage
    overview drawn with all its points (and the block overview built with it)."""
    data = RunData(run)
    points = len(data.image_ids) * data.n_blocks(0)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        port = free_port()
        server = start_server(ROOT / "dashboards/explorer.py", [run], port)
        try:
            page.goto(f"http://127.0.0.1:{port}/explorer?stage=0&block=0", timeout=60_000)
            page.wait_for_function(DRAWN_JS, timeout=60_000, polling=20)
            page.wait_for_timeout(1000)  # the page settled: nothing else is being drawn
            started = time.perf_counter()
            page.locator(".bk-tab", has_text="Overview").click()
            page.wait_for_function(
                STAGES_DRAWN_JS, arg=[data.stages, points], timeout=60_000, polling=20
            )
            return time.perf_counter() - started
        finally:
            server.terminate()
            server.wait()
            browser.close()


def overview_build_seconds(run: Path, repeats: int) -> list[float]:
    """CPU seconds of the server to build and render the Overview tab of stage 0 (reads,
    figures, Bokeh models): what a click on the tab costs the server, apart from the load."""
    explorer = Explorer(run, stage=0, block=0)
    seconds = []
    for repeat in range(repeats + 1):  # one warm-up: the embeddings read once per process
        started = time.process_time()
        pn.panel(Overview(explorer)).get_root(Document())
        if repeat >= 1:
            seconds.append(time.process_time() - started)
    return seconds


def block_overview_times(run: Path, repeats: int, seed: int = 0) -> list[float]:
    """Seconds per new patch of the block overview of stage 0 (its blocks, and the same image
    location in the other stages): random patches, rows read from the store, every map's
    Bokeh models written."""
    explorer = Explorer(run, stage=0, block=0)
    overview = Overview(explorer)
    document = Document()
    document.add_root(pn.panel(overview).get_root(document))
    grid = explorer.data.grid(0)
    rng = np.random.default_rng(seed)
    times = []
    with set_curdoc(document):
        for repeat in range(repeats + 2):  # two warm-ups
            patch = (int(rng.integers(grid[0])), int(rng.integers(grid[1])))
            started = time.perf_counter()
            with pn.io.hold(document):
                overview.blocks.patch = patch
            if repeat >= 2:
                times.append(time.perf_counter() - started)
    return times


def lasso_times(explorer: Explorer, repeats: int, seed: int = 0) -> list[float]:
    """Seconds per Lasso event on the left scatterplot: random 40-gons around random points."""
    document = Document()
    document.add_root(explorer.__panel__().get_root(document))
    scatter = explorer.sides[0].scatter
    rng = np.random.default_rng(seed)
    spread = np.array([np.ptp(scatter.points.x), np.ptp(scatter.points.y)])
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    times = []
    with set_curdoc(document):
        for repeat in range(repeats + 2):  # two warm-ups: imports, Numba compilation
            centre_index = rng.integers(len(scatter.points))
            centre = np.array([scatter.points.x[centre_index], scatter.points.y[centre_index]])
            radius = spread * rng.uniform(0.05, 0.25)
            polygon = centre + radius * np.c_[np.cos(angles), np.sin(angles)]
            started = time.perf_counter()
            scatter.lasso.event(geometry=polygon)
            if repeat >= 2:
                times.append(time.perf_counter() - started)
    return times


def query_times(view: Explorer | PatchView, direction: str, repeats: int) -> list[float]:
    """Seconds per box of 5 x 10 patches (50 query patches) dragged at random on the patch
    grid of ``view`` (an Explorer's left one, or a PatchView alone), in ``direction``."""
    document = Document()
    document.add_root(pn.panel(view).get_root(document))
    view.direction = direction
    patches = view.sides[0].patches if isinstance(view, Explorer) else view
    height, width = patches.run.grid(patches.stage)
    rng = np.random.default_rng(0)
    times = []
    with set_curdoc(document):
        for repeat in range(repeats + 2):  # two warm-ups: the first draws attention anew
            row, col = rng.integers(height - 4), rng.integers(width - 9)
            started = time.perf_counter()
            patches.box.event(bounds=(col - 0.4, row - 0.4, col + 9.4, row + 4.4))
            if repeat >= 2:
                times.append(time.perf_counter() - started)
            assert len(patches.query) == 50
    return times


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(script: Path, runs: list[Path], port: int, *options: str) -> subprocess.Popen:
    """``panel serve script --args runs`` on 127.0.0.1:``port``, listening when returned."""
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "panel", "serve", str(script), "--port", str(port),
         "--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}",
         *options, "--args", *map(str, runs)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Knock until the server listens; a page request before that would fail, and one that
    # times out would start a second session.
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return server
        if time.perf_counter() - started > 60:
            server.terminate()
            raise TimeoutError(f"panel serve is not listening on port {port}")
        time.sleep(0.02)


def first_render_time(runs: list[Path], script: Path = ROOT / "dashboards/explorer.py") -> float:
    """Seconds from starting ``panel serve script`` on ``runs`` to the three figures of the
    first drawn in Chromium."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        port = free_port()
        started = time.perf_counter()
        server = start_server(script, runs, port)
        try:
            page.goto(f"http://127.0.0.1:{port}/{script.stem}", timeout=60_000)
            page.wait_for_function(DRAWN_JS, timeout=60_000, polling=20)
            return time.perf_counter() - started
        finally:
            server.terminate()
            server.wait()
            browser.close()


async def one_user(browser: Browser, url: str, user: int, grid: tuple[int, int]) -> dict:
    """One user of ``--sessions``: load, click a patch at once, change stage to 1, close.
    Their first render (seconds; None if not drawn) and whether the click landed on the
    patch aimed at."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1100})
    page = await context.new_page()
    height, width = grid
    row, col = divmod(user * 37 % (height * width), width)
    started = time.perf_counter()
    try:
        await page.goto(url, timeout=RENDER_TIMEOUT_MS)
        await page.wait_for_function(DRAWN_JS, timeout=RENDER_TIMEOUT_MS, polling=50)
        first_render = time.perf_counter() - started
        frame = await page.evaluate(PATCH_VIEW_JS)
        await page.mouse.click(
            frame["left"] + (col + 0.5) * frame["width"] / width,
            frame["top"] + (row + 0.5) * frame["height"] / height,
        )
        await page.wait_for_function(
            f"() => ({PATCH_VIEW_JS})().title.includes('attention from')",
            timeout=RENDER_TIMEOUT_MS,
        )
        title = (await page.evaluate(PATCH_VIEW_JS))["title"]
        stage = page.locator(".bk-input-group").filter(has=page.get_by_text("stage", exact=True))
        await stage.locator("select").select_option("1")
        await page.wait_for_function(
            f"() => ({SCATTER_TITLE_JS})().includes('stage 1')", timeout=RENDER_TIMEOUT_MS
        )
        return {"first_render": first_render, "hit": title.endswith(f"from ({row}, {col})")}
    except PlaywrightError:  # not drawn, or not answered, in RENDER_TIMEOUT_MS
        return {"first_render": None, "hit": False}
    finally:
        await context.close()


def browser_cpu(server: psutil.Process) -> float:
    """CPU seconds of the processes this script started, but ``server``, that are alive:
    the browser (Chromium's processes) and its driver."""
    total = 0.0
    for process in psutil.Process().children(recursive=True):
        if process.pid == server.pid:
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:  # ended between the list and the read
            continue
        total += times.user + times.system
    return total


async def one_at_a_time(
    browser: Browser, url: str, server: psutil.Process, users: int, repeats: int = 3
) -> None:
    """``--sessions``, last: ``repeats`` users one after the other, each first render's CPU
    seconds in the browser and the server, and the bound they set for ``users`` at once."""
    renders, costs = [], []
    for _ in range(repeats):
        context = await browser.new_context(viewport={"width": 1400, "height": 1100})
        browser_before, server_before = browser_cpu(server), sum(server.cpu_times()[:2])
        started = time.perf_counter()
        page = await context.new_page()
        await page.goto(url, timeout=RENDER_TIMEOUT_MS)
        await page.wait_for_function(DRAWN_JS, timeout=RENDER_TIMEOUT_MS, polling=50)
        renders.append(time.perf_counter() - started)
        costs.append(
            (browser_cpu(server) - browser_before, sum(server.cpu_times()[:2]) - server_before)
        )
        await context.close()
        await asyncio.sleep(SESSIONS_END_S)
    in_browser = statistics.median(cost[0] for cost in costs)
    in_server = statistics.median(cost[1] for cost in costs)
    cores = psutil.cpu_count()
    bound = users * (in_browser + in_server) / cores
    print(
        f"one user at a time ({repeats}): first render {spread(renders)}; per first render "
        f"the browser {in_browser:.1f} CPU s, the server {in_server:.1f} CPU s (medians); "
        f"{users} at once need at least {users} x {in_browser + in_server:.1f} / {cores} "
        f"cores = {bound:.1f} s before the last is drawn "
        f"({'the 10 s target is out of reach here' if bound > 10 else 'within the 10 s target'}"
        f"; {load()})",
        flush=True,
    )


def spread(seconds: list[float]) -> str:
    if not seconds:
        return "none drawn"
    return f"median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s"


def busy_seconds() -> float:
    """CPU seconds this machine has spent on anything but idling, since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


async def users_at_once(runs: list[Path], users: int, rounds: int) -> None:
    """``--sessions``: ``users`` at once on one server, ``rounds`` times (see the module)."""
    port = free_port()
    # Sessions whose browser has left end a second after --unused-session-lifetime (15 s,
    # Bokeh's default, kept: a browser that connects later than that loses its session).
    server = start_server(
        ROOT / "dashboards/explorer.py", runs, port, "--check-unused-sessions", "1000"
    )
    process = psutil.Process(server.pid)
    url = f"http://127.0.0.1:{port}/explorer?stage=0&block=0&method=pca"
    grid = RunData(runs[0]).grid(0)
    renders, memory = [], []
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for round_ in range(1, rounds + 1):
                started = time.perf_counter()
                server_cpu, machine = sum(process.cpu_times()[:2]), busy_seconds()
                results = await asyncio.gather(
                    *(one_user(browser, url, user, grid) for user in range(users))
                )
                wall = time.perf_counter() - started
                server_cpu = sum(process.cpu_times()[:2]) - server_cpu
                machine = busy_seconds() - machine
                drawn = [r["first_render"] for r in results if r["first_render"] is not None]
                renders += drawn
                hits = sum(r["hit"] for r in results)
                await asyncio.sleep(SESSIONS_END_S)
                memory.append(process.memory_info().rss)
                print(
                    f"{users} users at once, round {round_}: drawn {len(drawn)}/{users}, first "
                    f"render {spread(drawn)}; "
                    f"clicks on the patch aimed at {hits}/{users}; server {server_cpu:.1f} "
                    f"CPU s, machine {machine:.1f} CPU s in {wall:.1f} s; server memory "
                    f"{memory[-1] / 2**20:.0f} MiB once the sessions ended ({load()})",
                    flush=True,
                )
            await one_at_a_time(browser, url, process, users)
            await browser.close()
    finally:
        server.terminate()
        server.wait()
    growth = (memory[-1] - memory[0]) / 2**20
    verdict = "meets" if len(renders) == users * rounds and max(renders) <= 10 else "MISSES"
    print(
        f"{users} users at once, {rounds} rounds: drawn {len(renders)}/{users * rounds}, first "
        f"render {spread(renders)} ({verdict} the all drawn, 10 s target); memory after "
        f"round {rounds} - after round 1: {growth:+.1f} MiB "
        f"({'meets' if abs(growth) <= 20 else 'MISSES'} the 20 MB target)",
        flush=True,
    )


def aliases(run: Path, workdir: Path, n: int) -> list[Path]:
    """``n`` names for one run (symbolic links), so that a dashboard lists ``n`` runs."""
    links = []
    for index in range(n):
        link = workdir / f"run{index}"
        link.symlink_to(run.resolve(), target_is_directory=True)
        links.append(link)
    return links


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def report(name: str, times: list[float], target: float | None, unit: str = "ms") -> None:
    scale = 1000 if unit == "ms" else 1
    median, worst = statistics.median(times), max(times)
    verdict = "meets" if target is not None and median <= target else "MISSES"
    against = "no target" if target is None else f"{verdict} the {target * scale:g} {unit} target"
    print(
        f"{name}: median {median * scale:.{0 if unit == 'ms' else 2}f} {unit}, "
        f"max {worst * scale:.{0 if unit == 'ms' else 2}f} {unit} over {len(times)} "
        f"({against}; {load()})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run with a 56x56 stage 0 (default: build)")
    parser.add_argument("--repeat", type=int, default=20, help="lasso events per case")
    parser.add_argument("--renders", type=int, default=3, help="served first renders per case")
    parser.add_argument(
        "--overview-run", type=Path, help="the run of 6 and 7 (default: build, see above)"
    )
    parser.add_argument("--sessions", type=int, help="users at once (8 only; see above)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --sessions users")
    parser.add_argument(
        "--demo-runs", type=Path, help="runs of `python -m compute demo` (default: build the six)"
    )
    args = parser.parse_args()
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, panel {pn.__version__}, "
          f"{load()}", flush=True)  # fmt: skip
    if args.sessions:
        with tempfile.TemporaryDirectory() as workdir:
            demo = args.demo_runs or demo_runs(Path(workdir))
            runs = [demo / name for name in VMAMBA_DEMOS]
            asyncio.run(users_at_once(runs, args.sessions, args.rounds))
        return
    with tempfile.TemporaryDirectory() as workdir:
        run = args.run or stage0_run(Path(workdir))
        explorer = Explorer(run, stage=0, block=0)
        points = len(explorer.sides[0].scatter.points)
        report(f"lasso -> patch view, p² = {points}", lasso_times(explorer, args.repeat), 0.1)
        for direction in ("from", "to"):
            alone = PatchView(run=RunData(run), stage=0, block=0)
            report(
                f"box of 50 patches -> patch grid alone, {direction}, p² = {points}",
                query_times(alone, direction, args.repeat),
                0.1,
            )
            views = Explorer(run, stage=0, block=0)
            times = query_times(views, direction, args.repeat)
            report(f"box of 50 patches -> views, {direction}, p² = {points}", times, None)
        # The first query of columns of a block reads its whole matrix (kept transposed).
        unread = RunData(run, shared=SharedReads(max_bytes=2**30))
        started = time.perf_counter()
        unread.query_attention(0, 0, [(row, 0) for row in range(50)], "to")
        print(
            f"first query of columns of a block, p² = {points} (reads it): "
            f"{(time.perf_counter() - started) * 1000:.0f} ms ({load()})",
            flush=True,
        )
        synthetic = Explorer(SyntheticRun(125_000, 8), stage=0, block=None)
        points = len(synthetic.sides[0].scatter.points)
        report(
            f"lasso -> views, {points:,} inter-block points",
            lasso_times(synthetic, args.repeat),
            0.3,
        )
        in_script = Path(workdir) / "script" / "explorer.py"
        in_script.parent.mkdir()
        in_script.write_text(
            "import sys\nfrom mambapanel.views import dashboard\n"
            "dashboard(sys.argv[1:]).servable()\n"
        )
        cases = {
            "1 run": ([run], ROOT / "dashboards/explorer.py"),
            "6 runs": (aliases(Path(run), Path(workdir), 6), ROOT / "dashboards/explorer.py"),
            "1 run, built in the script": ([run], in_script),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.renders):  # interleaved: every case sees the same load
            for name, (runs, script) in cases.items():
                times[name].append(first_render_time(runs, script))
        for name in cases:
            report(f"panel serve -> first render (stage 0, {name})", times[name], 5.0, unit="s")
        ratio = statistics.median(times["1 run, built in the script"]) / statistics.median(
            times["1 run"]
        )
        print(f"first render, built in the script / served: {ratio:.2f}x", flush=True)
        overview = args.overview_run or overview_run(Path(workdir))
        report(
            f"Overview tab -> stage overview drawn ({len(OVERVIEW_GRIDS)} stages x "
            f"{OVERVIEW_BLOCKS * OVERVIEW_IMAGES:,} points)",
            [overview_first_draw(overview) for _ in range(args.renders)],
            1.0,
            unit="s",
        )
        report(
            "Overview tab, server CPU to build and render it",
            overview_build_seconds(overview, args.renders),
            1.0,
            unit="s",
        )
        report(
            f"block overview, new patch: {OVERVIEW_BLOCKS} blocks at p² = "
            f"{OVERVIEW_GRIDS[0] ** 2:,} (+ {len(OVERVIEW_GRIDS) - 1} stages at the location)",
            block_overview_times(overview, args.repeat),
            0.3,
        )


if __name__ == "__main__":
    main()
