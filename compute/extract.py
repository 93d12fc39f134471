"""`python -m compute extract`: plan, create or resume a run, one Dask task per shard of
images on a LocalCluster or a scheduler, a progress bar of images done, then the exact mean.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, LocalCluster, Worker, WorkerPlugin, as_completed
from tqdm import tqdm

from mambapanel import data, store
from mambapanel.extract import RunPlan, extract_shard, plan_run

# A stage above this size gets a --pool hint before the run starts.
LARGE_STAGE_BYTES = 2**30


class TorchThreads(WorkerPlugin):
    """Torch intra-op threads per worker: parallelism comes from Dask tasks (one per Dask
    thread), so torch keeps to one thread and workers do not oversubscribe the cores."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def setup(self, worker: Worker) -> None:
        import torch

        torch.set_num_threads(self.threads)


# The scheduler's HTTP server (dashboard_address=None does not turn it off): on loopback and
# a free port, so that two local clusters never collide and none listens beyond this machine.
LOCAL_HTTP = "127.0.0.1:0"


@contextmanager
def connect(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client of ``scheduler``, or of a LocalCluster of ``workers`` single-thread processes."""
    if scheduler is not None:
        with Client(scheduler) as client:
            client.register_plugin(TorchThreads())
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=LOCAL_HTTP
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(TorchThreads())
        yield client


def extract(
    out: str | Path,
    *,
    n: int | None = None,
    scheduler: str | None = None,
    workers: int = 2,
    progress: bool = True,
    **options: Any,
) -> Path:
    """Extract the hidden attention of ``n`` images (default all) into the run ``out``, or
    finish it.

    A new ``out`` is created; an existing one is resumed (its done images are kept) when
    its options match, and refused with every difference named when they do not.

    Parameters
    ----------
    scheduler : address of a Dask scheduler; default a LocalCluster of ``workers``
        single-thread processes.
    options : the keyword arguments of :func:`mambapanel.extract.plan_run` (model,
        checkpoint, order, image_source, image_size, stages, pool, reduce, dtype,
        shard_size, batch_size, seed).

    Returns
    -------
    The run's path, complete: :func:`mambapanel.store.open_run` opens it.
    """
    out = Path(out).resolve()
    plan = plan_run(**options)
    if out.exists():
        store.check_compatible(out, plan.attrs if n is None else {**plan.attrs, "n_images": n})
    else:
        selection = data.select_images(plan.attrs["image_source"], n)
        report_selection(selection)
        report_disk(out, plan, len(selection.images))
        store.create_run(
            out,
            images=[(image.image_id, image.label) for image in selection.images],
            layouts=plan.layouts,
            dtype=plan.attrs["dtype"],
            shard_size=plan.attrs["shard_size"],
            attrs={**plan.attrs, "skipped_files": selection.skipped},
            tests=plan.tests,
        )
    attrs = store.read_run(out).attrs
    pending = store.pending_shards(out)
    left = sum(len(store.shard_images(attrs, shard)) for shard in pending)
    print(
        f"{out}: {attrs['model']}, order {attrs['order']}, {attrs['n_images']} images of "
        f"{attrs['image_source']} at {attrs['image_size']} px; {attrs['n_images'] - left} "
        f"done, {left} to compute in {len(pending)} tasks",
        flush=True,
    )
    if pending:
        with tqdm(
            total=attrs["n_images"],
            initial=attrs["n_images"] - left,
            unit="image",
            disable=not progress,
        ) as bar:
            compute_shards(
                out,
                pending,
                batch_size=plan.attrs["batch_size"],
                scheduler=scheduler,
                workers=workers,
                on_done=bar.update,
            )
    store.finalise(out)
    print(f"{out}: complete", flush=True)
    if attrs["dtype"] == "float16":
        report_float16_range(out)
    return out


def compute_shards(
    out: Path,
    shards: Sequence[int],
    *,
    batch_size: int,
    scheduler: str | None,
    workers: int,
    on_done: Callable[[int], object],
) -> None:
    """Run ``extract_shard`` for every shard; ``on_done(k)`` as each finishes, k images."""
    with connect(scheduler, workers) as client:
        # pure=False: a fresh key per submission, so a scheduler that outlived an earlier
        # (killed) client never answers from a stale result.
        futures = [
            client.submit(extract_shard, str(out), shard, batch_size, pure=False)
            for shard in shards
        ]
        for future in as_completed(futures):
            on_done(future.result())


def report_selection(selection: data.Selection) -> None:
    """Print the files passed over and the images whose transparency is composited."""
    if selection.skipped:
        print(f"skipped {len(selection.skipped)} files of {selection.source}:")
        for line in selection.skipped:
            print(f"  {line}")
    if selection.composited:
        print(
            f"{len(selection.composited)} images have transparency: the model sees them laid "
            f"on the background RGB {data.BACKGROUND}: {', '.join(selection.composited)}"
        )


def report_disk(out: Path, plan: RunPlan, n_images: int) -> None:
    """Print the disk a run needs, per stage, with a --pool hint for large stages."""
    attrs = plan.attrs
    needed = store.bytes_needed(plan.layouts, n_images, attrs["dtype"], attrs["shard_size"])
    print(f"{'stage':>5} {'grid':>7} {'pool':>4} {'blocks':>6} {'attention':>10} {'scratch':>10}")
    for layout in plan.layouts:
        sizes = needed[layout.stage]
        grid = "x".join(map(str, layout.grid))
        print(
            f"{layout.stage:>5} {grid:>7} {layout.pool:>4} {layout.n_blocks:>6} "
            f"{_size(sizes['attention'] + sizes['attention_mean']):>10} "
            f"{_size(sizes['partial_sum']):>10}"
        )
    total = sum(sum(sizes.values()) for sizes in needed.values())
    scratch = sum(sizes["partial_sum"] for sizes in needed.values())
    free = shutil.disk_usage(_existing_parent(out)).free
    print(
        f"needs up to {_size(total)} uncompressed, of which {_size(scratch)} scratch sums "
        f"are freed at the end; {_size(free)} free"
    )
    for layout in plan.layouts:
        full = needed[layout.stage]["attention"]
        if full >= LARGE_STAGE_BYTES and min(layout.grid) >= 2:
            factor = layout.pool * 2
            print(
                f"hint: stage {layout.stage} needs {_size(full)}; --pool {layout.stage}:"
                f"{factor} averages {factor}x{factor} patches and needs about "
                f"{_size(full // 2**4)}"
            )
    if total > free:
        print("warning: the run may not fit on this disk; consider --pool or --stages")


def report_float16_range(out: Path) -> None:
    """Warn for stages whose attention lies below float16's normal range, where it keeps
    fewer than its 11 significant bits (random weights: |α| ~ 1e-6)."""
    tree = store.open_run(out)
    normal = float(np.finfo(np.float16).tiny)
    for stage in tree.attrs["stages"]:
        largest = float(abs(tree[store.stage_group(stage)]["attention_mean"]).max())
        if largest < normal:
            print(
                f"warning: stage {stage}: |attention_mean| <= {largest:.2g}, below float16's "
                f"normal range ({normal:.2g}); its per-image matrices lost precision (the mean "
                "is exact); --dtype float32 keeps it"
            )


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"
