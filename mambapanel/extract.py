"""Extraction without Dask: plan a run (model, grids, store layout) and compute one shard of
its images into the store. ``compute/extract.py`` decides where these functions run.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mambapanel import attention, data, models, store
from mambapanel.errors import OptionError

CHANNELS = ("mean", "absmean")  # how the D channels' matrices become one (run attr)
BATCH_SIZE = 8  # images per forward pass
SHARD_SIZE = 16  # images per task: the unit of resume, one float64 sum per block on disk


@dataclass(frozen=True)
class RunPlan:
    """What a run computes: its identity attrs (see :mod:`mambapanel.store`) and layouts."""

    attrs: dict[str, Any]
    layouts: list[store.StageLayout]


def plan_run(
    *,
    model: str,
    checkpoint: str | Path | None = None,
    order: str | None = None,
    image_source: str = "demo",
    image_size: int = 224,
    stages: Sequence[int] | None = None,
    pool: int | Mapping[int, int] | None = None,
    channels: str = "mean",
    dtype: str = "float32",
    shard_size: int = SHARD_SIZE,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
) -> RunPlan:
    """Build the model once to resolve its order and checkpoint hash and to measure the
    token grid of every stage at ``image_size``; check the options against it.

    Parameters
    ----------
    stages : stage indices to store; default all.
    pool : k for every stored stage, or {stage: k}: stage s is stored averaged over k x k
        patches (default 1, full size).
    seed : seeds the random weights when there is no checkpoint (every worker builds the
        same model from it).
    """
    if channels not in CHANNELS:
        raise OptionError(f"channels must be one of {CHANNELS}, got {channels!r}")
    if dtype not in store.DTYPES:
        raise OptionError(f"dtype must be one of {store.DTYPES}, got {dtype!r}")
    if shard_size < 1 or batch_size < 1:
        raise OptionError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    checkpoint = None if checkpoint is None else str(Path(checkpoint).resolve())
    network = build_model(model, checkpoint, order, None if checkpoint else seed)
    grids = stage_grids(network, image_size)
    stages = sorted(set(range(len(network.depths)) if stages is None else stages))
    pool = {stage: pool for stage in stages} if isinstance(pool, int) else dict(pool or {})
    unknown = sorted(set(stages).union(pool) - set(grids))
    if unknown:
        raise OptionError(
            f"{model} has stages {sorted(grids)}; asked for stage(s) {unknown} (--stages/--pool)"
        )
    layouts = []
    for stage in stages:
        factor = pool.get(stage, 1)
        if not 1 <= factor <= min(grids[stage]):
            raise OptionError(
                f"pool factor {factor} for stage {stage} must lie in 1..{min(grids[stage])} "
                f"(its grid is {grids[stage][0]}x{grids[stage][1]} at {image_size} px)"
            )
        layouts.append(store.StageLayout(stage, network.depths[stage], grids[stage], factor))
    attrs = {
        "model": model,
        # Without the family, which the name gives: runs made before Vim stay resumable.
        "model_config": json.dumps(
            {k: v for k, v in models.CONFIGS[model].items() if k != "family"}, sort_keys=True
        ),
        "checkpoint": checkpoint,
        "checkpoint_sha256": getattr(network, "checkpoint_sha256", None),
        "seed": None if checkpoint else seed,
        "order": network.order,
        "image_source": data.resolve_source(image_source),
        "image_size": image_size,
        **store.layout_attrs(layouts),
        "channels": channels,
        "dtype": dtype,
        "shard_size": shard_size,
        "batch_size": batch_size,
    }
    return RunPlan(attrs, layouts)


def build_model(
    name: str, checkpoint: str | None, order: str | None, seed: int | None
) -> models.VSSM:
    """``models.build``, with random weights drawn from ``seed`` when there is no checkpoint
    (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return models.build(name, order=order, checkpoint=checkpoint)


@functools.lru_cache(maxsize=1)
def _worker_model(
    name: str, checkpoint: str | None, order: str, seed: int | None, sha256: str | None
) -> models.VSSM:
    """One model per worker process, kept across its tasks."""
    model = build_model(name, checkpoint, order, seed)
    found = getattr(model, "checkpoint_sha256", None)
    if found != sha256:
        raise store.RunError(
            f"{checkpoint}: sha256 {found} differs from the run's checkpoint_sha256 {sha256}; "
            "the file changed since the run started"
        )
    return model


def stage_grids(model: torch.nn.Module, image_size: int) -> dict[int, tuple[int, int]]:
    """Token grid (H, W) of every stage at ``image_size``, measured by one forward pass."""
    first_blocks = [(stage, 0) for stage in range(len(model.depths))]
    with torch.no_grad(), attention.capture(model, first_blocks) as cap:
        model(torch.zeros(1, 3, image_size, image_size))
    return {stage: cap.inputs(stage, block).grid for stage, block in first_blocks}


def pool_attention(matrices: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """Average attention matrices over ``factor`` x ``factor`` patches, of queries and keys.

    pooled[I, J] = mean of α[i, j] over the query patches i of window I and the key patches
    j of window J. Windows tile the grid from the top-left; at the bottom and right edges of
    a grid not divisible by ``factor`` they are smaller and average what they cover.

    Parameters
    ----------
    matrices : r(B, L, L)
        Row-major patches of ``grid`` = (H, W), L = H * W.

    Returns
    -------
    r(B, l, l), l = ceil(H / factor) * ceil(W / factor), row-major on the pooled grid.
    """
    if factor == 1:
        return matrices
    height, width = grid

    def pool_keys(x: torch.Tensor) -> torch.Tensor:  # (B, M, L) -> (B, M, l)
        # Without padding, ceil_mode's edge windows are divided by the patches they cover.
        windows = F.avg_pool2d(x.reshape(-1, 1, height, width), factor, ceil_mode=True)
        return windows.reshape(*x.shape[:-1], -1)

    keys_pooled = pool_keys(matrices)
    return pool_keys(keys_pooled.transpose(1, 2)).transpose(1, 2).contiguous()


def extract_shard(path: str | Path, shard: int, batch_size: int) -> int:
    """Compute shard ``shard`` of the run at ``path`` and write it (see ``store.write_shard``).

    The model is built once per process and reused. Matrices stream to the store batch by
    batch; only the shard's float64 sums (one L x L per block) stay in memory.

    Returns
    -------
    The number of images written.
    """
    run = store.read_run(path)
    attrs = run.attrs
    if attrs["complete"]:
        raise store.RunError(f"{path}: the run is complete; its shards are not recomputed")
    model = _worker_model(
        attrs["model"],
        attrs["checkpoint"],
        attrs["order"],
        attrs["seed"],
        attrs["checkpoint_sha256"],
    )
    images = store.shard_images(attrs, shard)
    blocks = [(layout.stage, block) for layout in run.layouts for block in range(layout.n_blocks)]
    sums = {
        layout.stage: np.zeros((layout.n_blocks, layout.patches, layout.patches), np.float64)
        for layout in run.layouts
    }
    thumbnails = []
    for start in range(images.start, images.stop, batch_size):
        batch = range(start, min(start + batch_size, images.stop))
        pictures = [data.open_image(attrs["image_source"], run.image_ids[i]) for i in batch]
        thumbnails += [data.thumbnail(picture, store.THUMBNAIL_SIZE) for picture in pictures]
        with torch.no_grad(), attention.capture(model, blocks) as cap:
            model(data.preprocess(pictures, attrs["image_size"]))
            for layout in run.layouts:
                for block in range(layout.n_blocks):
                    matrices = cap.attention(
                        stage=layout.stage, block=block, reduce=attrs["channels"]
                    )
                    matrices = pool_attention(matrices, layout.full_grid, layout.pool)
                    sums[layout.stage][block] += matrices.numpy().sum(0, dtype=np.float64)
                    # Cast in torch: numpy's float16 cast was the bottleneck (same rounding).
                    stored = matrices.to(getattr(torch, attrs["dtype"])).numpy()
                    store.write_attention(path, layout.stage, block, start, stored)
    store.write_shard(path, shard, np.stack(thumbnails), sums)
    return len(images)
