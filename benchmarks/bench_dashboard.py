"""Responsiveness of the dashboard (a script, not a test). Four figures, with targets:

1. lasso -> patch view, p² = 3,136 points (Mode 2 of a stage-0 block at 224 px): server
   time from a Lasso stream event to the updated patch grid, scatter highlight and status,
   all Bokeh models updated (target <= 100 ms);
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
   that instead of meanwhile. The ratio of 5 to 3 is printed.

    python benchmarks/bench_dashboard.py                  # builds a stage-0 run (~30 s)
    python benchmarks/bench_dashboard.py --run runs/NAME  # any run with a 56x56 stage 0

The events are fired in this process on an Explorer rendered into a Bokeh document (as a
served session does; the stream callbacks hold it as they do there); not timed are the
websocket and the browser's drawing. The machine's load average is printed with each
figure: on a shared machine, compare figures taken at similar load.
"""

from __future__ import annotations

import argparse
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
from bokeh.document import Document
from panel.io.state import set_curdoc
from playwright.sync_api import sync_playwright

from mambapanel.views import Explorer, RunData
from mambapanel.views.data import Embedding

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DRAWN_JS = """() => ["scatterplot", "patch-view", "image-view"].every(
  (name) => [...Bokeh.index.all_views()].some((v) => v.model.name === name))"""


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

    def n_blocks(self, stage: int) -> int:
        return self._n_blocks

    def grid(self, stage: int) -> tuple[int, int]:
        return 7, 7

    full_grid = grid

    def pool(self, stage: int) -> int:
        return 1

    def methods(self, stage: int) -> list[str]:
        return ["pca"]

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


def first_render_time(runs: list[Path], script: Path = ROOT / "dashboards/explorer.py") -> float:
    """Seconds from starting ``panel serve script`` on ``runs`` to the three figures of the
    first drawn in Chromium."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}/{script.stem}"
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "panel", "serve", str(script), "--port",
             str(port), "--address", "127.0.0.1", "--allow-websocket-origin",
             f"127.0.0.1:{port}", "--args", *map(str, runs)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            # Knock until the server listens; a page request before that would fail, and
            # one that times out would start a second session.
            while True:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.perf_counter() - started > 60:
                    raise TimeoutError(f"panel serve is not listening on port {port}")
                time.sleep(0.02)
            page.goto(url, timeout=60_000)
            page.wait_for_function(DRAWN_JS, timeout=60_000, polling=20)
            return time.perf_counter() - started
        finally:
            server.terminate()
            server.wait()
            browser.close()


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


def report(name: str, times: list[float], target: float, unit: str = "ms") -> None:
    scale = 1000 if unit == "ms" else 1
    median, worst = statistics.median(times), max(times)
    verdict = "meets" if median <= target else "MISSES"
    print(
        f"{name}: median {median * scale:.{0 if unit == 'ms' else 2}f} {unit}, "
        f"max {worst * scale:.{0 if unit == 'ms' else 2}f} {unit} over {len(times)} "
        f"({verdict} the {target * scale:g} {unit} target; {load()})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run with a 56x56 stage 0 (default: build)")
    parser.add_argument("--repeat", type=int, default=20, help="lasso events per case")
    parser.add_argument("--renders", type=int, default=3, help="served first renders per case")
    args = parser.parse_args()
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, panel {pn.__version__}, "
          f"{load()}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        run = args.run or stage0_run(Path(workdir))
        explorer = Explorer(run, stage=0, block=0)
        points = len(explorer.sides[0].scatter.points)
        report(f"lasso -> patch view, p² = {points}", lasso_times(explorer, args.repeat), 0.1)
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


if __name__ == "__main__":
    main()
