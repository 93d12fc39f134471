"""`python -m compute demo`: the embedded default, end to end.

For each demo checkpoint (one ``vmamba-micro`` per patch order, trained by
``tools/train_demo.sh`` on scikit-learn's digits and shipped in ``mambapanel/checkpoints``):
extract a run on held-out digits through the Dask pipeline, reduce it (PCA, t-SNE, UMAP),
add the findings, then serve the dashboard with every run loaded (:mod:`compute.serve`).
Runs that are already complete are reused; a run that was interrupted is resumed.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

import mambapanel
from mambapanel import models, store
from mambapanel.errors import MambapanelError

CHECKPOINTS = Path(mambapanel.__file__).resolve().parent / "checkpoints"  # package data
DEMO_MODEL = "vmamba-micro"
DEMO_ORDERS = ("cross", "diagonal", "morton", "spiral", "hilbert", "bidirectional")
DEMO_IMAGES = 64
DEMO_METHODS = ("pca", "tsne", "umap")


class DemoError(MambapanelError, ValueError):
    """A demo that cannot be built (a missing checkpoint, a run made with other options)."""


def checkpoint(order: str) -> Path:
    """The committed demo checkpoint of ``order``."""
    path = CHECKPOINTS / f"{DEMO_MODEL}-{order}.pth"
    if not path.is_file():
        raise DemoError(
            f"{path}: no demo checkpoint for order {order!r}; `bash tools/train_demo.sh` "
            "trains them (about 3 minutes each on 2 cores)"
        )
    return path


def _complete(run: Path, checkpoint: Path, sha256: str, n: int) -> bool:
    """``run`` is finished and made from ``checkpoint`` (whose file hash is ``sha256``) with
    ``n`` images; a finished run of another checkpoint or size is an error (it is not
    silently reused)."""
    try:
        attrs = store.read_run(run).attrs
    except store.RunError:
        return False
    if not attrs.get("complete"):
        return False
    if attrs["checkpoint_sha256"] != sha256 or attrs["n_images"] != n:
        raise DemoError(
            f"{run}: a demo run of {attrs['n_images']} images made from checkpoint "
            f"{attrs['checkpoint_sha256'][:12]}, not of {n} images from {checkpoint.name} "
            f"({sha256[:12]}): delete it, or give another --runs directory"
        )
    return True


def build(
    runs_dir: str | Path,
    *,
    orders: Sequence[str] = DEMO_ORDERS,
    n: int = DEMO_IMAGES,
    methods: Sequence[str] = DEMO_METHODS,
    workers: int = 2,
    progress: bool = True,
) -> list[Path]:
    """Make (or reuse) one run per order under ``runs_dir``, reduced and with findings.

    Returns the runs' paths, in ``orders``' order.
    """
    from compute.extract import connect, extract
    from mambapanel.findings.report import report

    runs_dir = Path(runs_dir).resolve()
    checkpoints = {order: checkpoint(order) for order in orders}  # all missing ones fail first
    runs = {order: runs_dir / order for order in orders}
    # Each checkpoint's metadata (file hash, training size), read once.
    metas = {order: models.read_state_dict(path)[1] for order, path in checkpoints.items()}
    to_extract = [
        o for o in orders if not _complete(runs[o], checkpoints[o], metas[o]["sha256"], n)
    ]
    for order in orders:
        if order not in to_extract:
            print(f"{runs[order]}: complete, reused", flush=True)
    if to_extract:
        # One LocalCluster for every run: its start-up is paid once.
        with connect(None, workers) as client:
            for order in to_extract:
                try:
                    extract(
                        runs[order],
                        n=n,
                        scheduler=client.scheduler.address,
                        progress=progress,
                        model=DEMO_MODEL,
                        checkpoint=str(checkpoints[order]),
                        order=order,
                        image_source="demo",
                        image_size=metas[order]["config"]["image_size"],
                    )
                except store.RunError as err:
                    raise DemoError(
                        f"{err}\n(the demo run {runs[order]} was made with other options or "
                        "another checkpoint: delete it, or give another --runs directory)"
                    ) from err
    reduce_all([runs[order] for order in orders], methods, workers=workers, progress=progress)
    report([runs[order] for order in orders], runs_dir / "findings")
    return [runs[order] for order in orders]


def _reduced(run: Path, methods: Sequence[str]) -> bool:
    """Every stage of ``run`` stores embeddings for every one of ``methods``."""
    tree = store.open_run(run)
    for stage in tree.attrs["stages"]:
        group = tree[f"stage{stage}"]
        if "method" not in group.coords or set(methods) - set(group["method"].values):
            return False
    return True


def reduce_all(
    runs: Sequence[Path], methods: Sequence[str], *, workers: int, progress: bool
) -> None:
    """``reduce_run`` of every run, ``workers`` runs at a time in separate processes (each
    embedding is single-threaded); methods already stored are kept."""
    from mambapanel.reduce import reduce_run

    runs = [run for run in runs if not _reduced(run, methods)]
    if not runs:
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    processes = max(1, min(workers, len(runs)))
    with (
        ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool,
        tqdm(total=len(runs), desc="reduce", unit="run", disable=not progress) as bar,
    ):
        futures = [
            pool.submit(reduce_run, str(run), methods=tuple(methods), progress=False)
            for run in runs
        ]
        for future in as_completed(futures):
            future.result()
            bar.update()
