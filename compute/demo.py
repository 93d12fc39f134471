"""`python -m compute demo`: the embedded default, end to end.

For each demo checkpoint (one ``vmamba-micro`` per patch order and two ``vim-micro``, trained
by ``tools/train_demo.sh`` on scikit-learn's digits and shipped in ``mambapanel/checkpoints``):
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
# Demo name (the run's directory under --runs) -> (model, order) of its checkpoint.
DEMO_MODELS = {
    **{
        order: ("vmamba-micro", order)
        for order in ("cross", "diagonal", "morton", "spiral", "hilbert", "bidirectional")
    },
    "vim-bidirectional": ("vim-micro", "bidirectional"),
    "vim-morton": ("vim-micro", "morton"),
}
DEMO_IMAGES = 64
DEMO_METHODS = ("pca", "tsne", "umap")


class DemoError(MambapanelError, ValueError):
    """A demo that cannot be built (a missing checkpoint, a run made with other options)."""


def checkpoint(name: str) -> Path:
    """The committed checkpoint of demo model ``name`` (a key of :data:`DEMO_MODELS`)."""
    if name not in DEMO_MODELS:
        raise DemoError(f"no demo model {name!r}; the demo models: {', '.join(DEMO_MODELS)}")
    model, order = DEMO_MODELS[name]
    path = CHECKPOINTS / f"{model}-{order}.pth"
    if not path.is_file():
        raise DemoError(
            f"{path}: no demo checkpoint for {name!r}; `bash tools/train_demo.sh` trains "
            "them (a few minutes each on 2 cores)"
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
    names: Sequence[str] = tuple(DEMO_MODELS),
    n: int = DEMO_IMAGES,
    methods: Sequence[str] = DEMO_METHODS,
    workers: int = 2,
    progress: bool = True,
) -> list[Path]:
    """Make (or reuse) one run per demo model under ``runs_dir`` (named as the model is in
    :data:`DEMO_MODELS`), reduced and with findings.

    Returns the runs' paths, in the order of ``names``.
    """
    from compute.cluster import connect
    from compute.extract import extract
    from mambapanel.findings.report import report

    runs_dir = Path(runs_dir).resolve()
    checkpoints = {name: checkpoint(name) for name in names}  # all missing ones fail first
    runs = {name: runs_dir / name for name in names}
    # Each checkpoint's metadata (file hash, training size), read once.
    metas = {name: models.read_state_dict(path)[1] for name, path in checkpoints.items()}
    to_extract = [
        name
        for name in names
        if not _complete(runs[name], checkpoints[name], metas[name]["sha256"], n)
    ]
    for name in names:
        if name not in to_extract:
            print(f"{runs[name]}: complete, reused", flush=True)
    if to_extract:
        # One LocalCluster for every run: its start-up is paid once.
        with connect(None, workers) as client:
            for name in to_extract:
                model, order = DEMO_MODELS[name]
                try:
                    extract(
                        runs[name],
                        n=n,
                        scheduler=client.scheduler.address,
                        progress=progress,
                        model=model,
                        checkpoint=str(checkpoints[name]),
                        order=order,
                        image_source="demo",
                        image_size=metas[name]["config"]["image_size"],
                    )
                except store.RunError as err:
                    raise DemoError(
                        f"{err}\n(the demo run {runs[name]} was made with other options or "
                        "another checkpoint: delete it, or give another --runs directory)"
                    ) from err
    paths = [runs[name] for name in names]
    reduce_all(paths, methods, workers=workers, progress=progress)
    report(paths, runs_dir / "findings")
    return paths


def _reduced(run: Path, methods: Sequence[str]) -> bool:
    """Every stage of ``run`` stores embeddings for every one of ``methods``."""
    tree = store.open_run(run)
    for stage in tree.attrs["stages"]:
        group = tree[store.stage_group(stage)]
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
