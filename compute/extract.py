"""`python -m compute extract`: plan, create or resume a run, one Dask task per shard of
images on a local cluster (CPU processes, or one per GPU) or a scheduler, a progress bar of
images done, then the exact mean.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client
from tqdm import tqdm

from compute.cluster import (
    SEND_CHECKPOINT_BYTES,
    check_workers_reach,
    check_workers_see,
    connect,
    run_tasks,
    workers_device,
)
from mambapanel import data, store
from mambapanel.extract import (
    KEEP_IMAGES,
    RunPlan,
    extract_shard,
    plan_run,
    resolve_device,
    with_keep,
)
from mambapanel.sketch import SKETCH_DIM
from mambapanel.storage import Location, location

# A stage above this size gets a --pool hint before the run starts.
LARGE_STAGE_BYTES = 2**30
# --keep's default: every image's matrices while they take less than this (decimal 10 GB,
# estimated before the run starts), else sketches and the first --keep-images' matrices.
KEEP_ALL_BELOW_BYTES = 10 * 10**9


def extract(
    out: str | Path | Location,
    *,
    n: int | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    keep: str | None = None,
    keep_images: int = KEEP_IMAGES,
    sketch_dim: int = SKETCH_DIM,
    device: str = "auto",
    command: str | None = None,
    **options: Any,
) -> Location:
    """Extract the hidden attention of ``n`` images (default all) into the run ``out``, or
    finish it.

    A new ``out`` is created; an existing one is resumed (its done images are kept) when
    its options match, and refused with every difference named when they do not.

    Parameters
    ----------
    out : a local path, or an ``s3://`` / ``gs://`` URL (with ``storage_options``)
    scheduler : address of a Dask scheduler; default a local cluster of ``workers``
        single-thread processes (CPU: 2; CUDA: one per GPU).
    keep : "all" or "sketch"; default: all when every image's matrices are estimated to take
        less than 10 GB, else sketch; an existing run's own.
    device : "auto" (cuda when every worker sees a GPU; an existing run's own), "cpu", "cuda"
    command : the command line that resumes this run, named if the scheduler is lost
    options : the keyword arguments of :func:`mambapanel.extract.plan_run` (model,
        checkpoint, order, image_source, image_size, stages, pool, channels, dtype,
        shard_size, batch_size, seed, explanations, faithfulness_images, precision, backend,
        by_route).

    Returns
    -------
    The run's location, complete: :func:`mambapanel.store.open_run` opens it.
    """
    where = location(out, storage_options)
    stored = store.read_run(where).attrs if _is_run(where) else None
    if stored is not None:  # what was left to the defaults is the run's own
        keep = keep or stored["keep"]
        device = stored["device"] if device == "auto" else device
    local_device = resolve_device(device) if scheduler is None else device
    plan = plan_run(
        **options,
        keep=keep or "all",
        keep_images=keep_images,
        sketch_dim=sketch_dim,
        device="cpu" if local_device == "auto" else local_device,
    )
    if stored is not None and stored["complete"]:
        _check_resume(where, plan, n)
        return _finish(where)
    with connect(scheduler, workers, device=local_device, command=command) as client:
        if scheduler is not None:  # the workers' devices, not this machine's
            plan = dataclasses.replace(
                plan, attrs={**plan.attrs, "device": workers_device(client, device)}
            )
        if stored is not None:
            _check_resume(where, plan, n)
        else:
            selection = data.select_images(plan.attrs["image_source"], n)
            report_selection(selection)
            if keep is None:
                plan = with_keep(
                    plan, choose_keep(plan, len(selection.images)), keep_images, sketch_dim
                )
            report_disk(where, plan, len(selection.images), default_keep=keep is None)
            store.create_run(
                where,
                images=[(image.image_id, image.label) for image in selection.images],
                layouts=plan.layouts,
                dtype=plan.attrs["dtype"],
                shard_size=plan.attrs["shard_size"],
                attrs={**plan.attrs, "skipped_files": selection.skipped},
                tests=plan.tests,
                routes=plan.routes,
            )
        attrs = store.read_run(where).attrs
        pending = store.pending_shards(where)
        left = sum(len(store.shard_images(attrs, shard)) for shard in pending)
        print(
            f"{where}: {attrs['model']}, order {attrs['order']}, {attrs['n_images']} images of "
            f"{attrs['image_source']} at {attrs['image_size']} px on {attrs['device']}, keep "
            f"{attrs['keep']}; {attrs['n_images'] - left} done, {left} to compute in "
            f"{len(pending)} tasks",
            flush=True,
        )
        if pending:
            checkpoint = share_checkpoint(client, where, attrs)
            with tqdm(
                total=attrs["n_images"],
                initial=attrs["n_images"] - left,
                unit="image",
                disable=not progress,
            ) as bar:
                compute_shards(
                    client,
                    where,
                    pending,
                    batch_size=attrs["batch_size"],
                    checkpoint=checkpoint,
                    on_done=bar.update,
                )
    return _finish(where)


def _is_run(where: Location) -> bool:
    return where.exists("zarr.json") if not where.is_local else where.path.exists()


def _check_resume(where: Location, plan: RunPlan, n: int | None) -> None:
    store.check_compatible(where, plan.attrs if n is None else {**plan.attrs, "n_images": n})


def _finish(where: Location) -> Location:
    store.finalise(where)
    print(f"{where}: complete", flush=True)
    if store.read_run(where).attrs["dtype"] == "float16":
        report_float16_range(where)
    return where


def choose_keep(plan: RunPlan, n_images: int) -> str:
    """--keep's default for a new run of ``n_images``: "all" while every image's matrices
    are estimated below :data:`KEEP_ALL_BELOW_BYTES`, else "sketch"."""
    attrs = plan.attrs
    needed = store.bytes_needed(plan.layouts, n_images, attrs["dtype"], attrs["shard_size"])
    matrices = sum(sizes["attention"] for sizes in needed.values())
    return "all" if matrices < KEEP_ALL_BELOW_BYTES else "sketch"


def share_checkpoint(client: Client, where: Location, attrs: dict[str, Any]) -> Any:
    """Make the run's inputs available to the workers and check that they are.

    A checkpoint up to :data:`SEND_CHECKPOINT_BYTES` is sent by content (a future every task
    takes; None without a checkpoint); a larger one, the image folder and a local run must
    be visible to every worker at the same path, and a run at a URL reachable from each.
    """
    visible = {}
    if where.is_local:
        visible["the run"] = str(where.path / "zarr.json")
    else:
        check_workers_reach(client, where)
    if attrs["image_source"] not in data.PACKAGED_SOURCES:
        visible["the images"] = attrs["image_source"]
    checkpoint = attrs["checkpoint"]
    content = None
    if checkpoint is not None:
        if Path(checkpoint).stat().st_size <= SEND_CHECKPOINT_BYTES:
            content = client.scatter(Path(checkpoint).read_bytes(), broadcast=True)
        else:
            visible["the checkpoint"] = checkpoint
    check_workers_see(client, visible)
    return content


def compute_shards(
    client: Client,
    where: Location,
    shards: Sequence[int],
    *,
    batch_size: int,
    checkpoint: Any = None,
    on_done: Callable[[int], object] = lambda images: None,
) -> None:
    """Run ``extract_shard`` for every shard; ``on_done(k)`` as each finishes, k images."""
    run_tasks(
        client,
        extract_shard,
        [(where, shard, batch_size, checkpoint) for shard in shards],
        on_done,
    )


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


def route_count(plan: RunPlan) -> int:
    """K, the routes a by-route run stores apart (0: none)."""
    return len(next(iter(plan.routes.values()))) if plan.attrs["by_route"] else 0


def report_disk(
    out: str | Path | Location, plan: RunPlan, n_images: int, *, default_keep: bool = False
) -> None:
    """Print the disk a run needs, per stage, what it keeps of the per-image matrices (and
    whether that is --keep's default, ``default_keep``, or asked for), and a --pool hint for
    large stages of a run that keeps them all."""
    out = location(out)
    attrs = plan.attrs
    sketched = attrs["keep"] == "sketch"
    needed = store.bytes_needed(
        plan.layouts,
        n_images,
        attrs["dtype"],
        attrs["shard_size"],
        keep_images=attrs["keep_images"] if sketched else None,
        sketch_dim=attrs["sketch_dim"] if sketched else None,
        routes=route_count(plan),
    )
    every = store.bytes_needed(plan.layouts, n_images, attrs["dtype"], attrs["shard_size"])
    print(
        f"{'stage':>5} {'grid':>7} {'pool':>4} {'blocks':>6} {'attention':>10} {'sketch':>10} "
        f"{'scratch':>10}"
    )
    for layout in plan.layouts:
        sizes = needed[layout.stage]
        grid = "x".join(map(str, layout.grid))
        print(
            f"{layout.stage:>5} {grid:>7} {layout.pool:>4} {layout.n_blocks:>6} "
            f"{_size(sizes['attention'] + sizes['attention_mean']):>10} "
            f"{_size(sizes['sketch']) if sketched else '-':>10} "
            f"{_size(sizes['partial_sum']):>10}"
        )
    total = sum(sum(sizes.values()) for sizes in needed.values())
    scratch = sum(sizes["partial_sum"] for sizes in needed.values())
    free = shutil.disk_usage(_existing_parent(out.path)).free if out.is_local else None
    print(
        f"needs up to {_size(total)} uncompressed, of which {_size(scratch)} scratch sums "
        f"are freed at the end" + ("" if free is None else f"; {_size(free)} free")
    )
    matrices = _size(sum(sizes["attention"] for sizes in every.values()))
    threshold = f"{KEEP_ALL_BELOW_BYTES / 1e9:.0f} GB"
    if default_keep:
        why = f"the default: {'at least' if sketched else 'below'} {threshold} of matrices"
    else:
        why = "--keep"
    if sketched:
        print(
            f"keep sketch ({why}): every image's matrices would take {matrices}; the run keeps a "
            f"sketch of {attrs['sketch_dim']} numbers per image and block (Algorithm 1 "
            f"reduces those) and the matrices of the first {attrs['keep_images']} images "
            "(the image view)"
        )
    else:
        print(
            f"keep all ({why}): every image's matrices, {matrices} (without --keep, runs whose "
            f"matrices take {threshold} or more keep sketches)"
        )
        for layout in plan.layouts:
            full = needed[layout.stage]["attention"]
            if full >= LARGE_STAGE_BYTES and min(layout.grid) >= 2:
                factor = layout.pool * 2
                print(
                    f"hint: stage {layout.stage} needs {_size(full)}; --pool {layout.stage}:"
                    f"{factor} averages {factor}x{factor} patches and needs about "
                    f"{_size(full // 2**4)}; --keep sketch keeps sketches instead"
                )
    if free is not None and total > free:
        print("warning: the run may not fit on this disk; consider --keep sketch or --pool")


def report_float16_range(out: Location) -> None:
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
