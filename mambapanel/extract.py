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

from mambapanel import attention, data, explain, models, store
from mambapanel.errors import OptionError

CHANNELS = ("mean", "absmean")  # how the D channels' matrices become one (run attr)
BATCH_SIZE = 8  # images per forward pass
FAITHFULNESS_IMAGES = 64  # images the perturbation test runs on, by default
SHARD_SIZE = 16  # images per task: the unit of resume, one float64 sum per block on disk


@dataclass(frozen=True)
class RunPlan:
    """What a run computes: its identity attrs (see :mod:`mambapanel.store`), layouts, and
    the maps its perturbation test compares."""

    attrs: dict[str, Any]
    layouts: list[store.StageLayout]
    tests: tuple[str, ...] = ()


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
    explanations: bool = True,
    faithfulness_images: int = FAITHFULNESS_IMAGES,
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
    explanations : store each image's relevance maps (rollout, attribution) and, for Vim,
        each block's CLS row and column; costs one backward pass per batch.
    faithfulness_images : run the perturbation test on the first this many images (0: none);
        costs 20 forward passes per image and map.
    """
    if channels not in CHANNELS:
        raise OptionError(f"channels must be one of {CHANNELS}, got {channels!r}")
    if dtype not in store.DTYPES:
        raise OptionError(f"dtype must be one of {store.DTYPES}, got {dtype!r}")
    if faithfulness_images < 0:
        raise OptionError(f"faithfulness_images must be 0 or more, got {faithfulness_images}")
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
        "explanations": explanations,
        "faithfulness_images": faithfulness_images if explanations else 0,
    }
    tests: tuple[str, ...] = ()
    if explanations:
        attrs["relevance_grid_height"], attrs["relevance_grid_width"] = grids[0]
        cls = (store.CLS_TEST,) if isinstance(network, models.Vim) else ()
        tests = (*store.EXPLANATIONS, *cls, store.RANDOM_TEST)
    return RunPlan(attrs, layouts, tests)


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
) -> torch.nn.Module:
    """One model per worker process, kept across its tasks."""
    model = build_model(name, checkpoint, order, seed)
    found = getattr(model, "checkpoint_sha256", None)
    if found != sha256:
        raise store.RunError(
            f"{checkpoint}: sha256 {found} differs from the run's checkpoint_sha256 {sha256}; "
            "the file changed since the run started"
        )
    # Inference only: explanations back-propagate through activations, never into weights.
    return model.requires_grad_(False)


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
    # Without padding, ceil_mode's edge windows are divided by the patches they cover.
    keys_pooled = pool_vectors(matrices, grid, factor)
    return pool_vectors(keys_pooled.transpose(1, 2), grid, factor).transpose(1, 2).contiguous()


def extract_shard(path: str | Path, shard: int, batch_size: int) -> int:
    """Compute shard ``shard`` of the run at ``path`` and write it (see ``store.write_shard``).

    The model is built once per process and reused. Matrices stream to the store batch by
    batch; only the shard's float64 sums (one L x L per block) stay in memory. With the run's
    ``explanations``, each batch also goes backward once from its predicted classes' logits
    (relevance maps, Vim's CLS rows and columns) and, for its first ``faithfulness_images``
    images, through the perturbation test.

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
        pixels = data.preprocess(pictures, attrs["image_size"])
        if attrs["explanations"]:
            with attention.capture(model, gradients=True) as cap:  # every block: rollout
                predicted = predict_and_backpropagate(model, pixels)
        else:
            with torch.no_grad(), attention.capture(model, blocks) as cap:
                model(pixels)
        for layout in run.layouts:
            for block in range(layout.n_blocks):
                matrices = cap.attention(stage=layout.stage, block=block, reduce=attrs["channels"])
                matrices = pool_attention(matrices, layout.full_grid, layout.pool)
                sums[layout.stage][block] += matrices.numpy().sum(0, dtype=np.float64)
                # Cast in torch: numpy's float16 cast was the bottleneck (same rounding).
                stored = matrices.to(getattr(torch, attrs["dtype"])).numpy()
                store.write_attention(path, layout.stage, block, start, stored)
        if attrs["explanations"]:
            write_explanations(path, run, model, cap, pixels, start, predicted)
    store.write_shard(path, shard, np.stack(thumbnails), sums)
    return len(images)


def predict_and_backpropagate(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """One forward pass that tracks gradients through the activations (not the weights), and
    the backward pass of the predicted classes' logits; returns int64(B,) the classes."""
    pixels = pixels.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(pixels)
        predicted = logits.argmax(1)
        logits.gather(1, predicted[:, None]).sum().backward()
    return predicted.detach()


def write_explanations(
    path: str | Path,
    run: store.RunInfo,
    model: torch.nn.Module,
    cap: attention.Capture,
    pixels: torch.Tensor,
    start: int,
    predicted: torch.Tensor,
) -> None:
    """The batch's relevance maps, Vim's CLS rows and columns, and the perturbation test of
    its images among the run's first ``faithfulness_images``, into the store."""
    attrs = run.attrs
    maps = explain.relevance_maps(cap, channels=attrs["channels"])
    relevance = torch.stack([maps[name] for name in store.EXPLANATIONS], 1)
    last_cls = None
    if isinstance(model, models.Vim):
        (layout,) = run.layouts
        for block in range(layout.n_blocks):
            rows = cap.cls_attention(0, block, reduce=attrs["channels"])
            if block == layout.n_blocks - 1:
                last_cls = rows[0].abs()
            pooled = [pool_vectors(v, layout.full_grid, layout.pool).numpy() for v in rows]
            store.write_cls(path, 0, block, start, *pooled)
    tested = [i for i in range(len(pixels)) if start + i < attrs["faithfulness_images"]]
    faithfulness = None
    if tested:
        faithfulness = np.full((len(pixels), len(run.tests), 2, len(store.FRACTIONS)), np.nan)
        grid = (attrs["relevance_grid_height"], attrs["relevance_grid_width"])
        for i in tested:
            candidates = {
                **{name: relevance[i, k] for k, name in enumerate(store.EXPLANATIONS)},
                store.CLS_TEST: None if last_cls is None else last_cls[i],
                store.RANDOM_TEST: torch.rand(
                    grid[0] * grid[1], generator=torch.Generator().manual_seed(start + i)
                ),
            }

            def score(images: torch.Tensor, i: int = i) -> torch.Tensor:
                return torch.softmax(model(images), -1)[:, predicted[i]]

            for t, name in enumerate(run.tests):
                curves = explain.perturbation_curves(
                    score, pixels[i], candidates[name].reshape(grid)
                )
                faithfulness[i, t] = np.stack(curves)
    store.write_explanations(
        path,
        start,
        predicted.numpy(),
        relevance.float().numpy(),
        None if faithfulness is None else faithfulness.astype(np.float32),
    )


def pool_vectors(values: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """Average r(B, ..., L) values over ``factor`` x ``factor`` patches of ``grid`` as
    :func:`pool_attention` does for one axis."""
    if factor == 1:
        return values
    height, width = grid
    windows = F.avg_pool2d(values.reshape(-1, 1, height, width), factor, ceil_mode=True)
    return windows.reshape(*values.shape[:-1], -1)
