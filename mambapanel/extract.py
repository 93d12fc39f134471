"""Extraction without Dask: plan a run (model, grids, store layout) and compute one shard of
its images into the store, on the CPU or a CUDA device. ``compute/extract.py`` decides where
these functions run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mambapanel import attention, data, explain, models, store
from mambapanel.attention.vim import split_cls
from mambapanel.errors import OptionError
from mambapanel.models.vim import VimScanInputs
from mambapanel.models.vmamba import ScanInputs
from mambapanel.overlap import HostCopy, Writer, to_host
from mambapanel.sketch import SKETCH_DIM, SKETCH_SEED
from mambapanel.storage import Location, location

CHANNELS = ("mean", "absmean")  # how the D channels' matrices become one (run attr)
BATCH_SIZE = 8  # images per forward pass
FAITHFULNESS_IMAGES = 64  # images the perturbation test runs on, by default
SHARD_SIZE = 16  # images per task: the unit of resume, one float64 sum per block on disk
KEEP_IMAGES = 64  # images whose full matrices a sketched run keeps (the image view)
DEVICES = ("cpu", "cuda")
PRECISIONS = ("float32", "bfloat16")  # of the model's forward and backward passes
BACKENDS = ("tiled", "triton")  # of the stored attention (attribution: always tiled)


@dataclass(frozen=True)
class RunPlan:
    """What a run computes: its identity attrs (see :mod:`mambapanel.store`), layouts, and
    the maps its perturbation test compares."""

    attrs: dict[str, Any]
    layouts: list[store.StageLayout]
    tests: tuple[str, ...] = ()
    # {stage: int(K, L)}: the patches each scan route visits, on the stage's full grid.
    routes: dict[int, np.ndarray] = field(default_factory=dict)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when this process sees a CUDA device, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in DEVICES:
        raise OptionError(f"device must be auto or one of {DEVICES}, got {device!r}")
    return device


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
    keep: str = "all",
    keep_images: int = KEEP_IMAGES,
    sketch_dim: int = SKETCH_DIM,
    device: str = "cpu",
    precision: str = "float32",
    backend: str = "tiled",
    by_route: bool = False,
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
    keep : "all" stores every image's matrices; "sketch" stores every image's count sketch
        (``sketch_dim`` numbers per block, :mod:`mambapanel.sketch`) and the matrices of
        the first ``keep_images`` images only.
    device : "cpu", "cuda" (the workers' first visible GPU) or "auto" (cuda when this
        process sees one).
    precision : "float32", or "bfloat16": the model's forward and backward passes under
        autocast (the attention is computed in float32 from what the scans read).
    backend : "tiled" or "triton" (a GPU kernel; the CPU runs it only under
        ``TRITON_INTERPRET=1``) for the stored attention; gradient x attention is tiled.
    by_route : also store, per stage and block, each route's image-mean matrix
        (``attention_mean_by_route``); they sum to ``attention_mean``.
    """
    if channels not in CHANNELS:
        raise OptionError(f"channels must be one of {CHANNELS}, got {channels!r}")
    if dtype not in store.DTYPES:
        raise OptionError(f"dtype must be one of {store.DTYPES}, got {dtype!r}")
    if faithfulness_images < 0:
        raise OptionError(f"faithfulness_images must be 0 or more, got {faithfulness_images}")
    if shard_size < 1 or batch_size < 1:
        raise OptionError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    device = resolve_device(device)
    if precision not in PRECISIONS:
        raise OptionError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if backend not in BACKENDS:
        raise OptionError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise OptionError(
            "--backend triton runs on a GPU (--device cuda); a CPU runs it only with "
            "TRITON_INTERPRET=1 set (slow: meant for tests)"
        )
    checkpoint = None if checkpoint is None else str(Path(checkpoint).resolve())
    network = build_model(model, checkpoint, order, None if checkpoint else seed)
    grids, states, routes = stage_grids(network, image_size)
    if backend == "triton" and channels == "absmean" and states > 1:
        raise OptionError(
            f"--backend triton reduces absmean only with one state per channel; {model} has "
            f"{states}: use --backend tiled or --channels mean"
        )
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
        "device": device,
        "precision": precision,
        "backend": backend,
        "by_route": bool(by_route),
    }
    tests: tuple[str, ...] = ()
    if explanations:
        attrs["relevance_grid_height"], attrs["relevance_grid_width"] = grids[0]
        cls = (store.CLS_TEST,) if isinstance(network, models.Vim) else ()
        tests = (*store.EXPLANATIONS, *cls, store.RANDOM_TEST)
    plan = RunPlan(attrs, layouts, tests, {stage: routes[stage] for stage in stages})
    return with_keep(plan, keep, keep_images, sketch_dim)


def with_keep(
    plan: RunPlan, keep: str, keep_images: int = KEEP_IMAGES, sketch_dim: int = SKETCH_DIM
) -> RunPlan:
    """``plan`` keeping ``keep`` of the per-image matrices (see :func:`plan_run`)."""
    if keep not in store.KEEPS:
        raise OptionError(f"keep must be one of {store.KEEPS}, got {keep!r}")
    if keep_images < 0 or sketch_dim < 1:
        raise OptionError(
            f"keep_images must be >= 0 and sketch_dim >= 1, got {keep_images}, {sketch_dim}"
        )
    attrs = {**plan.attrs, "keep": keep}
    for name in ("keep_images", "sketch_dim", "sketch_seed"):
        attrs.pop(name, None)
    if keep == "sketch":  # with "all", the run records every image (store.create_run)
        attrs.update(keep_images=keep_images, sketch_dim=sketch_dim, sketch_seed=SKETCH_SEED)
    else:
        attrs.update(sketch_dim=None, sketch_seed=None)
    return replace(plan, attrs=attrs)


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
    name: str,
    checkpoint: str | None,
    order: str,
    seed: int | None,
    sha256: str | None,
    device: str,
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
    return model.requires_grad_(False).to(device)


def checkpoint_copy(checkpoint: str, sha256: str, content: bytes) -> str:
    """A local file holding ``content`` (a checkpoint the client sent, as ``checkpoint``'s
    bytes), made once per machine and named by its hash; its path."""
    folder = Path(tempfile.gettempdir(), "mambapanel-checkpoints")
    target = folder / f"{sha256}{''.join(Path(checkpoint).suffixes[-1:])}"
    if not target.exists():
        if hashlib.sha256(content).hexdigest() != sha256:
            raise store.RunError(
                f"{checkpoint}: the bytes sent to this worker do not hash to the run's "
                f"checkpoint_sha256 {sha256}"
            )
        folder.mkdir(exist_ok=True)
        partial = folder / f".{target.name}.{os.getpid()}"
        partial.write_bytes(content)
        os.replace(partial, target)  # two workers of one machine may write it at once
    return str(target)


def stage_grids(
    model: torch.nn.Module, image_size: int
) -> tuple[dict[int, tuple[int, int]], int, dict[int, np.ndarray]]:
    """Token grid (H, W) of every stage at ``image_size``, the scans' state size N, and each
    stage's scan routes as patches (:func:`patch_routes`), measured by one forward pass."""
    first_blocks = [(stage, 0) for stage in range(len(model.depths))]
    with torch.no_grad(), attention.capture(model, first_blocks) as cap:
        model(torch.zeros(1, 3, image_size, image_size))
    grids = {stage: cap.inputs(stage, block).grid for stage, block in first_blocks}
    routes = {stage: patch_routes(cap.inputs(stage, block)) for stage, block in first_blocks}
    return grids, cap.inputs(0, 0).A.shape[-1], routes


def patch_routes(inputs: ScanInputs | VimScanInputs) -> np.ndarray:
    """int64(K, P): the patch (row-major) each route of a scan visits at each step; a Vim
    mixer's routes over tokens with its CLS token left out."""
    routes = inputs.routes.cpu()
    if isinstance(inputs, VimScanInputs):
        routes = routes[routes != inputs.cls_token].view(len(routes), -1)
    return routes.numpy().astype(np.int64)


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


@dataclass
class ShardTotals:
    """What a shard accumulates over its batches before ``store.write_shard``: per stage,
    the float64 sum of its images' matrices (numpy on the CPU, where numpy sums them ~5x
    faster than torch; torch on a GPU), in a by-route run each route's too, and, in a
    sketched run, every image's sketches."""

    run: store.RunInfo
    images: range
    device: torch.device
    sums: dict[int, Any] = field(default_factory=dict)
    sketches: dict[int, torch.Tensor] = field(default_factory=dict)
    route_sums: dict[int, Any] = field(default_factory=dict)  # (n_blocks, K, L, L)

    def __post_init__(self) -> None:
        sketched = self.run.attrs["keep"] == "sketch"
        for layout in self.run.layouts:
            shape = (layout.n_blocks, layout.patches, layout.patches)
            self.sums[layout.stage] = self._zeros(shape)
            if self.run.attrs["by_route"]:
                routes = self.run.routes[layout.stage]
                self.route_sums[layout.stage] = self._zeros((shape[0], len(routes), *shape[1:]))
            if sketched:
                width = self.sketch(layout).out_features
                self.sketches[layout.stage] = torch.full(
                    (len(self.images), layout.n_blocks, width), float("nan"), device=self.device
                )

    def _zeros(self, shape: tuple[int, ...]) -> Any:
        if self.device.type == "cpu":
            return np.zeros(shape, np.float64)
        return torch.zeros(shape, dtype=torch.float64, device=self.device)

    def sketch(self, layout: store.StageLayout):
        attrs = self.run.attrs
        return store.sketch_of(layout, attrs["sketch_dim"], attrs["sketch_seed"])

    def add(
        self,
        layout: store.StageLayout,
        block: int,
        start: int,
        matrices: torch.Tensor,
        by_route: torch.Tensor | None = None,
    ):
        """Add the batch of images from ``start`` on: r(b, L, L) float32 on the device, and
        in a by-route run each route's, r(b, K, L, L)."""
        self._sum_into(self.sums[layout.stage][block], matrices)
        if by_route is not None:
            self._sum_into(self.route_sums[layout.stage][block], by_route)
        if self.sketches:
            offset = start - self.images.start
            sketched = self.sketch(layout)(matrices)
            self.sketches[layout.stage][offset : offset + len(matrices), block] = sketched

    def _sum_into(self, total: Any, matrices: torch.Tensor) -> None:
        """total += Σ over the batch (axis 0) of ``matrices``, in float64."""
        if self.device.type == "cpu":
            total += matrices.numpy().sum(0, dtype=np.float64)
        else:
            total += matrices.sum(0, dtype=torch.float64)

    def on_host(self) -> tuple[dict[int, np.ndarray], ...]:
        """(sums, sketches, route_sums) as numpy arrays."""

        def host(value: Any) -> np.ndarray:
            return value.cpu().numpy() if isinstance(value, torch.Tensor) else value

        return tuple(
            {stage: host(value) for stage, value in arrays.items()}
            for arrays in (self.sums, self.sketches, self.route_sums)
        )


class BlockAttention:
    """Each block's attention of one batch, computed once and put to every use: the
    matrices of the run's kept images to the store (through ``writer``), their float64 sum
    and sketches into ``totals``, a Vim's CLS row and column to the store; and the token-order
    matrix returned, for the rollout (:func:`mambapanel.explain.relevance_maps`).
    """

    def __init__(
        self,
        where: Location,
        run: store.RunInfo,
        cap: attention.Capture,
        start: int,
        totals: ShardTotals,
        writer: Writer,
    ) -> None:
        self.where, self.run, self.cap, self.start = where, run, cap, start
        self.totals, self.writer = totals, writer
        self.layouts = {layout.stage: layout for layout in run.layouts}
        self.done: set[tuple[int, int]] = set()
        self.last_cls: torch.Tensor | None = None  # |from CLS| of a Vim's last block

    def __call__(self, stage: int, block: int) -> torch.Tensor:
        """The item attention of (stage, block), r(b, T, T), after storing what the run keeps
        of it; the channel mode is the run's."""
        attrs = self.run.attrs
        by_route = attrs["by_route"] and stage in self.layouts
        items = self.cap.item_attention(
            stage, block, reduce=attrs["channels"], backend=attrs["backend"], by_route=by_route
        )
        routed = None
        if by_route:  # r(b, K, T, T): the merge is their sum (design.md, section 3)
            routed, items = items, items.sum(1)
        if stage not in self.layouts:  # a stage the run does not store (rollout only)
            return items
        inputs = self.cap.inputs(stage, block)
        layout = self.layouts[stage]
        patches = items
        if hasattr(inputs, "cls_token"):  # Vim: the CLS token's row and column apart
            patches, from_cls, to_cls = split_cls(items, inputs.cls_token)
            routed = None if routed is None else split_cls(routed, inputs.cls_token)[0]
            if attrs["explanations"]:
                pooled = [
                    to_host(pool_vectors(v, layout.full_grid, layout.pool).contiguous())
                    for v in (from_cls, to_cls)
                ]
                self._write(store.write_cls, stage, block, self.start, *pooled)
                if block == layout.n_blocks - 1:
                    self.last_cls = from_cls.abs()
        matrices = pool_attention(patches, layout.full_grid, layout.pool)
        if routed is not None:
            b, K, L, _ = routed.shape
            pooled = pool_attention(routed.reshape(b * K, L, L), layout.full_grid, layout.pool)
            routed = pooled.reshape(b, K, *pooled.shape[1:])
        self.totals.add(layout, block, self.start, matrices, routed)
        kept = max(0, min(len(matrices), attrs["keep_images"] - self.start))
        if kept:
            # Cast on the device: half the bytes to copy, and numpy's float16 cast is slower.
            stored = matrices[:kept].to(getattr(torch, attrs["dtype"])).contiguous()
            self._write(store.write_attention, stage, block, self.start, to_host(stored))
        self.done.add((stage, block))
        return items

    def _write(self, write, *arguments) -> None:
        """``write(where, *arguments)`` on the writer, host copies waited for and unpacked."""

        def run() -> None:
            values = [a.wait().numpy() if isinstance(a, HostCopy) else a for a in arguments]
            write(self.where, *values)

        self.writer.submit(run)

    def finish(self) -> None:
        """Store every block the run keeps that no one has asked for yet."""
        for layout in self.run.layouts:
            for block in range(layout.n_blocks):
                if (layout.stage, block) not in self.done:
                    self(layout.stage, block)


def extract_shard(
    path: str | Path | Location, shard: int, batch_size: int, checkpoint: bytes | None = None
) -> int:
    """Compute shard ``shard`` of the run at ``path`` and write it (see ``store.write_shard``).

    The model is built once per process and reused, on the run's device. Each block's
    attention is computed once per batch: the kept images' matrices stream to the store
    (written while the next block and batch compute, on a GPU), and only the shard's float64
    sums (one L x L per block) and sketches stay in memory. With the run's ``explanations``,
    each batch also goes backward once from its predicted classes' logits (relevance maps,
    Vim's CLS rows and columns) and, for its first ``faithfulness_images`` images, through
    the perturbation test.

    Parameters
    ----------
    checkpoint : bytes, optional
        The run's checkpoint file, sent by the client to workers that may not see its path.

    Returns
    -------
    The number of images written.
    """
    where = location(path)
    run = store.read_run(where)
    attrs = run.attrs
    if attrs["complete"]:
        raise store.RunError(f"{where}: the run is complete; its shards are not recomputed")
    device = torch.device(attrs["device"])
    checkpoint_file = attrs["checkpoint"]
    if checkpoint is not None:
        checkpoint_file = checkpoint_copy(checkpoint_file, attrs["checkpoint_sha256"], checkpoint)
    model = _worker_model(
        attrs["model"],
        checkpoint_file,
        attrs["order"],
        attrs["seed"],
        attrs["checkpoint_sha256"],
        attrs["device"],
    )
    images = store.shard_images(attrs, shard)
    totals = ShardTotals(run, images, device)
    blocks = [(layout.stage, block) for layout in run.layouts for block in range(layout.n_blocks)]
    thumbnails = []
    # On a GPU the writes of a batch overlap the next one's compute; on the CPU every core
    # already computes, and a writer thread would only compete with it.
    with Writer(depth=2 if device.type == "cuda" else 0) as writer:
        for start in range(images.start, images.stop, batch_size):
            batch = range(start, min(start + batch_size, images.stop))
            pictures = [data.open_image(attrs["image_source"], run.image_ids[i]) for i in batch]
            thumbnails += [data.thumbnail(picture, store.THUMBNAIL_SIZE) for picture in pictures]
            pixels = data.preprocess(pictures, attrs["image_size"]).to(device)
            # Only the model's passes run in the run's precision: the attention is computed
            # in float32 from what the scans read (autocast would lower its products too).
            if attrs["explanations"]:
                with attention.capture(model, gradients=True) as cap:  # every block
                    predicted = predict_and_backpropagate(model, pixels, attrs["precision"])
                store_blocks = BlockAttention(where, run, cap, start, totals, writer)
                write_explanations(where, run, model, cap, pixels, start, predicted,
                                   store_blocks, writer)  # fmt: skip
            else:
                with (
                    torch.no_grad(),
                    attention.capture(model, blocks) as cap,
                    autocast(device, attrs["precision"]),
                ):
                    model(pixels)
                store_blocks = BlockAttention(where, run, cap, start, totals, writer)
            store_blocks.finish()
    sums, sketches, route_sums = totals.on_host()
    store.write_shard(where, shard, np.stack(thumbnails), sums, sketches, route_sums)
    return len(images)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The model's passes in ``precision`` (bfloat16: autocast), nothing for float32."""
    if precision == "float32":
        yield
        return
    with torch.autocast(device.type, dtype=getattr(torch, precision)):
        yield


def predict_and_backpropagate(
    model: torch.nn.Module, pixels: torch.Tensor, precision: str = "float32"
) -> torch.Tensor:
    """One forward pass that tracks gradients through the activations (not the weights), in
    ``precision``, and the backward pass of the predicted classes' logits; returns int64(B,)
    the classes."""
    pixels = pixels.clone().requires_grad_(True)
    with torch.enable_grad():
        with autocast(pixels.device, precision):
            logits = model(pixels).float()
        predicted = logits.argmax(1)
        logits.gather(1, predicted[:, None]).sum().backward()
    return predicted.detach()


def write_explanations(
    path: str | Path | Location,
    run: store.RunInfo,
    model: torch.nn.Module,
    cap: attention.Capture,
    pixels: torch.Tensor,
    start: int,
    predicted: torch.Tensor,
    blocks: BlockAttention,
    writer: Writer,
) -> None:
    """The batch's relevance maps (their rollout from the matrices ``blocks`` computes and
    stores), Vim's CLS rows and columns (stored by ``blocks``), and the perturbation test of
    its images among the run's first ``faithfulness_images``, into the store."""
    attrs = run.attrs
    maps = explain.relevance_maps(cap, channels=attrs["channels"], attention=blocks)
    blocks.finish()  # before the last block's CLS row is read below
    relevance = torch.stack([maps[name] for name in store.EXPLANATIONS], 1)
    last_cls = blocks.last_cls
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
                with torch.no_grad(), autocast(images.device, attrs["precision"]):
                    logits = model(images).float()
                return torch.softmax(logits, -1)[:, predicted[i]]

            # In the run's batches; the unperturbed image is scored once, not per map and order.
            batch = attrs["batch_size"]
            clean = score(pixels[i : i + 1]).item()
            for t, name in enumerate(run.tests):
                curves = explain.perturbation_curves(
                    score,
                    pixels[i],
                    candidates[name].reshape(grid).to(pixels.device),
                    batch=batch,
                    clean=clean,
                )
                faithfulness[i, t] = np.stack(curves)
    results = (
        predicted.cpu().numpy(),
        relevance.float().cpu().numpy(),
        None if faithfulness is None else faithfulness.astype(np.float32),
    )
    writer.submit(lambda: store.write_explanations(path, start, *results))


def pool_vectors(values: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """Average r(B, ..., L) values over ``factor`` x ``factor`` patches of ``grid`` as
    :func:`pool_attention` does for one axis."""
    if factor == 1:
        return values
    height, width = grid
    windows = F.avg_pool2d(values.reshape(-1, 1, height, width), factor, ceil_mode=True)
    return windows.reshape(*values.shape[:-1], -1)
