"""The run store: one zarr v3 store per extraction run, read as an ``xarray.DataTree``.
Create, write regions, resume, finalise and validate a run; plain functions, no Dask.

Schema (``format`` "mambapanel-run", ``format_version`` 1)
------------------------------------------------------------
Root group
    attrs
        format, format_version, mambapanel_version, created (UTC, ISO 8601), complete,
        model, model_config (JSON string), checkpoint, checkpoint_sha256 (both null for
        random weights), seed (of the random weights; null with a checkpoint), order,
        image_source ("demo" or an absolute directory), image_size, n_images, skipped_files
        (["image_id: reason", ...]), channels ("mean" | "absmean": how the attention of
        the D channels became one matrix; runs of mambapanel 0.1 call it ``reduce``), dtype
        ("float16" | "float32"), stages ([s, ...]), pool (one factor per stage in
        ``stages``), shard_size (images per task), batch_size (images per forward pass),
        explanations (bool: the arrays below marked (E) are stored), faithfulness_images
        (the perturbation test ran on the first this many images), relevance_grid_height,
        relevance_grid_width (the first stage's full grid, where relevance maps live),
        keep ("all" | "sketch": what is kept of the per-image matrices), keep_images (the
        first this many images have their matrices in ``attention``: all of them with
        ``keep`` "all"), sketch_dim, sketch_seed (of the sketches (S); null without),
        device ("cpu" | "cuda": where the workers computed), precision ("float32" |
        "bfloat16": of the model's forward and backward passes), backend ("tiled" |
        "triton": of the attention), by_route (bool: the arrays marked (R) are stored).
        Runs made before an attr existed read as :func:`run_attrs` fills it in.
    image       (image,) int64              index coordinate 0 .. n-1
    image_id    (image,) str                coordinate: the file's path relative to the source
    label       (image,) str                coordinate: its class folder, "" in a flat folder
    thumbnail   (image, y, x, rgb) uint8    the model's centre crop at 64 px
    done        (image,) bool               the image's matrices, sums and thumbnail are written
    explanation (explanation,) str          (E) "rollout", "attribution" (mambapanel.explain)
    predicted   (image,) int64              (E) the class the model predicts: its logit is
                                            the one explained
    relevance   (image, explanation, patch) f32  (E) each image's relevance map of each
                                            explanation over the relevance grid, row-major
    test        (test,) str                 (E) the maps tested: the methods, "cls" (Vim: the
                                            last block's attention from CLS, |.|), "random"
    removal     (removal,) str              (E) "most", "least": which patches go first
    fraction    (fraction,) f64             (E) share of patches removed, 0 .. 0.9
    faithfulness (image, test, removal, fraction) f32  (E) the predicted class's probability
                                            with those patches removed (NaN: not tested)
Group ``stage{s}`` for every s in ``stages``
    attrs
        stage, n_blocks, pool, grid_height, grid_width (the stored grid, after pooling),
        full_grid_height, full_grid_width (the model's grid at this stage)
    block       (block,) int64              index coordinate
    query, key  (query,), (key,) int64      index coordinates: row-major patch of the stored grid
    query_row, query_col   (query,) int64   that query patch's row and column
    key_row, key_col       (key,) int64     (xarray allows one coordinate per name, hence the
                                            prefixes; `sel(query=i)` or `where(query_row == r)`)
    attention       (image, block, query, key) float16 | float32, NaN until written; only
                    images below ``keep_images`` are ever written (the others stay NaN)
    sketch          (image, block, component) f32  (S) the count sketch of each image's
                    matrix, flattened (:mod:`mambapanel.sketch`): Algorithm 1 reduces these
                    instead of ``attention``. Stage attrs ``sketch_features`` (its width:
                    min(sketch_dim, L²)) and ``sketch_exact`` (true when L² <= sketch_dim:
                    the sketch is the matrix itself, row-major)
    attention_mean  (block, query, key) float32: the exact mean over images, NaN until final
    route           (route,) int64          (R) index coordinate: the scan routes of the order
    routes          (route, step) int64     the patch each route visits at each step, row-major
                    on the stage's full (unpooled) grid; the patches of a Vim's token routes
                    (its CLS token left out). Absent in runs made before it was recorded
    attention_mean_by_route (block, route, query, key) float32  (R) the exact mean over images
                    of the matrix each route's scan applies, in patch space (for Vim: as it
                    enters the merge, halved); summed over routes it is ``attention_mean``
                    (design.md, section 3), NaN until final
    attention_from_cls (image, block, key) f32   (E, Vim) the CLS token's row: attention from
                    CLS to each patch; attention_to_cls (image, block, query) its column
    partial_sum     (shard, block, query, key) float64: scratch while extracting, one sum per
                    shard; removed when the run is finalised (what a kill during that
                    removal leaves, the next finalise or open removes)
    partial_sum_by_route (shard, block, route, query, key) float64  (R) the same scratch for
                    ``attention_mean_by_route``
Group ``findings`` (added by ``python -m compute findings``; absent before)
    attrs: findings_version, mambapanel_version, created, order, compared_orders, seeds
    ``findings/stage{s}`` per stage: the study's findings in numbers (block separation,
    self/row/column shares, row/column purity, order shares, locality profiles), one small
    dataset; its variables are listed in the docstring of :mod:`mambapanel.findings`,
    which writes and reads them (``write_findings``, ``read_findings``).

(S): stored when ``keep`` is "sketch" (format_version 2; runs without are version 1).
(R): stored when ``by_route`` is true (``compute extract --by-route``); readers that do not
know them ignore them, so the format version is unchanged.

Chunks: ``attention`` (1, 1, L, L), one image-block per chunk; ``sketch`` (shard_size,
n_blocks, width), one shard's per chunk; ``attention_mean``
(1, Q, L) with Q = all L rows when a block is at most 4 MiB, else as many rows as fit in
4 MiB, so one query row is always one chunk (``attention_mean_by_route`` (1, 1, Q, L));
``partial_sum`` (1, 1, L, L), ``partial_sum_by_route`` (1, 1, 1, L, L); ``done`` and
``thumbnail`` by shard (``shard_size`` images), so concurrent tasks never write one chunk.
The three attention arrays are stored without compression (benchmarks/RESULTS.md says why).

Read a run with :func:`open_run`, or ``xr.open_datatree(path, engine="zarr",
consolidated=False)``: the metadata is not consolidated, because zarr v3 does not specify
consolidation and every later writer (reduction) would have to keep it current.

Where: a run is a local folder or an ``s3://`` / ``gs://`` URL (:mod:`mambapanel.storage`);
every function here takes either, as a path, a URL string or a ``Location``. Kill-safety
rests on each chunk and metadata object being replaced whole: zarr's local store writes a
temporary file and renames it, and an object store's PUT is atomic. A new local run is built
beside its path and renamed into place; on an object store, which cannot rename, the root's
attrs are written last, and a root without ``format`` (a killed creation) is built anew.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.errors

from mambapanel import __version__
from mambapanel.errors import MambapanelError, OptionError, check_writable_folder
from mambapanel.sketch import CountSketch
from mambapanel.storage import Location, location

if TYPE_CHECKING:  # xarray is imported where a run is opened: a dashboard reads zarr alone
    import xarray as xr

FORMAT = "mambapanel-run"
FORMAT_VERSION = 1
SKETCH_FORMAT_VERSION = 2  # a run that keeps sketches: older readers refuse it by version
READABLE_VERSIONS = (FORMAT_VERSION, SKETCH_FORMAT_VERSION)
KEEPS = ("all", "sketch")
# The root attr of a run being created on an object store (replaced by the full attrs last).
CREATING = "mambapanel_creating"
THUMBNAIL_SIZE = 64
MEAN_CHUNK_BYTES = 4 * 2**20
DTYPES = ("float16", "float32")
ROOT_VARIABLES = ("image", "image_id", "label", "thumbnail", "done")
STAGE_VARIABLES = (
    "block",
    "query",
    "key",
    "query_row",
    "query_col",
    "key_row",
    "key_col",
    "attention",
    "attention_mean",
)
# The attrs that make two runs the same computation: a resume must match every one.
IDENTITY_ATTRS = (
    "model",
    "model_config",
    "checkpoint_sha256",
    "seed",
    "order",
    "image_source",
    "image_size",
    "n_images",
    "stages",
    "pool",
    "channels",
    "dtype",
    "shard_size",
    "batch_size",  # float32 rounding differs with the batch: a mixed run equals no clean one
    "explanations",
    "faithfulness_images",
    "keep",
    "keep_images",
    "sketch_dim",
    "sketch_seed",
    # Where and how the attention was computed: float32 rounding differs between devices,
    # backends and precisions as it does between batch sizes.
    "device",
    "precision",
    "backend",
    "by_route",  # what the run stores, as keep is
)
# Explanations (mambapanel.explain): the maps stored per image, what the perturbation test
# removes first, and the shares of patches it removes.
EXPLANATIONS = ("rollout", "attribution")
RANDOM_TEST = "random"
CLS_TEST = "cls"
REMOVALS = ("most", "least")
FRACTIONS = tuple(round(0.1 * step, 1) for step in range(10))
EXPLANATION_VARIABLES = ("predicted", "relevance", "faithfulness")
CLS_VARIABLES = ("attention_from_cls", "attention_to_cls")
QUERY_KEY_COORDINATES = "query_row query_col key_row key_col"
FINDINGS_GROUP = "findings"  # added by python -m compute findings
# What compute reduce adds to a stage group (mambapanel.reduce).
EMBEDDING_INTER, EMBEDDING_INTRA = "embedding_inter", "embedding_intra"
# Root attrs renamed since runs were first written, old name -> new: an old run still opens.
RENAMED_ATTRS = {"reduce": "channels"}
# Root attrs added since, with the value that describes a run made before them.
ADDED_ATTRS = {
    "explanations": False,
    "faithfulness_images": 0,
    "keep": "all",
    "keep_images": None,  # None: all n_images (run_attrs fills it in)
    "sketch_dim": None,
    "sketch_seed": None,
    "device": "cpu",
    "precision": "float32",
    "backend": "tiled",
    "by_route": False,
}
BY_ROUTE_VARIABLES = ("route", "attention_mean_by_route")
SCRATCH_VARIABLES = ("partial_sum", "partial_sum_by_route")


def stage_group(stage: int) -> str:
    """The name of stage ``stage``'s group: ``stage{s}`` (the one place it is spelled)."""
    return f"stage{stage}"


def findings_group(stage: int) -> str:
    """The name of stage ``stage``'s findings group (:mod:`mambapanel.findings.record`)."""
    return f"{FINDINGS_GROUP}/{stage_group(stage)}"


class RunError(MambapanelError, ValueError):
    """A path that is not a usable run: missing, not a run, incomplete, incompatible."""


@dataclass(frozen=True)
class StageLayout:
    """One stage as stored: ``n_blocks`` blocks on the model's ``full_grid`` averaged over
    ``pool`` x ``pool`` patches (windows at the bottom and right edges may be smaller)."""

    stage: int
    n_blocks: int
    full_grid: tuple[int, int]
    pool: int = 1

    @property
    def grid(self) -> tuple[int, int]:
        """The stored grid (height, width): the full grid divided by ``pool``, rounded up."""
        return tuple(math.ceil(side / self.pool) for side in self.full_grid)

    @property
    def patches(self) -> int:
        """L, the number of stored patches (query or key)."""
        height, width = self.grid
        return height * width


def n_shards(n_images: int, shard_size: int) -> int:
    return math.ceil(n_images / shard_size)


def shard_images(attrs: Mapping[str, Any], shard: int) -> range:
    """The image indices of ``shard`` in a run with root ``attrs``."""
    size = attrs["shard_size"]
    return range(shard * size, min(attrs["n_images"], (shard + 1) * size))


def layout_attrs(layouts: Sequence[StageLayout]) -> dict[str, list[int]]:
    """The root attrs that record the layouts: ``stages`` and their ``pool`` factors."""
    return {
        "stages": [layout.stage for layout in layouts],
        "pool": [layout.pool for layout in layouts],
    }


def bytes_needed(
    layouts: Sequence[StageLayout],
    n_images: int,
    dtype: str,
    shard_size: int,
    *,
    keep_images: int | None = None,
    sketch_dim: int | None = None,
    routes: int = 0,
) -> dict[int, dict[str, int]]:
    """Uncompressed bytes per stage: ``attention`` (of the first ``keep_images`` images,
    default all), ``sketch`` (with ``sketch_dim``), ``attention_mean`` and the scratch
    ``partial_sum`` (held only until the run is finalised); with ``routes`` (the K routes of
    a by-route run) the last two include their by-route arrays, K matrices more each."""
    itemsize = np.dtype(dtype).itemsize
    kept = n_images if keep_images is None else min(keep_images, n_images)
    needed = {}
    for layout in layouts:
        matrix = layout.n_blocks * layout.patches**2
        width = 0 if sketch_dim is None else sketch_of(layout, sketch_dim).out_features
        needed[layout.stage] = {
            "attention": kept * matrix * itemsize,
            "sketch": n_images * layout.n_blocks * width * 4,
            "attention_mean": (1 + routes) * matrix * 4,
            "partial_sum": n_shards(n_images, shard_size) * (1 + routes) * matrix * 8,
        }
    return needed


def sketch_of(layout: StageLayout, sketch_dim: int, seed: int = 0) -> CountSketch:
    """The count sketch of a stage's flattened (stored, pooled) matrices."""
    return CountSketch(layout.patches**2, sketch_dim, seed)


def create_run(
    path: str | Path | Location,
    *,
    images: Sequence[tuple[str, str]],
    layouts: Sequence[StageLayout],
    dtype: str,
    shard_size: int,
    attrs: Mapping[str, Any],
    tests: Sequence[str] = (),
    routes: Mapping[int, np.ndarray] | None = None,
) -> None:
    """Write the skeleton of a new run: metadata, coordinates, image ids, routes; no matrices.

    Kill-safe: a local run is built beside ``path`` and renamed into place; on an object
    store the root's attrs are written last (module docstring, Where).

    Parameters
    ----------
    images : sequence of (image_id, label)
    layouts : one per stored stage
    dtype : "float16" or "float32", the dtype of ``attention``
    shard_size : images per task; ``done`` and ``thumbnail`` are chunked by it
    attrs : the run's description (model, order, image_source, ...; see the module docstring);
        with ``explanations`` true, the (E) arrays are made, over a relevance grid of
        ``relevance_grid_height`` x ``relevance_grid_width`` patches; with ``keep``
        "sketch", the (S) arrays, ``sketch_dim`` wide
    tests : the maps the perturbation test compares (with ``explanations``)
    routes : {stage: int(K, L)}, the model's scan routes on each stage's full grid (the
        ``routes`` array); needed for every stage when ``attrs["by_route"]`` is true (the
        (R) arrays have K routes)
    """
    where = location(path)
    routes = dict(routes or {})
    if attrs.get("by_route"):
        missing = [layout.stage for layout in layouts if layout.stage not in routes]
        if missing:
            raise OptionError(f"by_route needs the routes of every stage; none for {missing}")
    if dtype not in DTYPES:
        raise OptionError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    keep = attrs.get("keep", "all")
    if keep not in KEEPS:
        raise OptionError(f"keep must be one of {KEEPS}, got {keep!r}")
    n = len(images)
    full_attrs = {
        **attrs,
        "format": FORMAT,
        "format_version": SKETCH_FORMAT_VERSION if keep == "sketch" else FORMAT_VERSION,
        "mambapanel_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "complete": False,
        "n_images": n,
        **layout_attrs(layouts),
        "dtype": dtype,
        "shard_size": shard_size,
        "keep": keep,
        "keep_images": n if keep == "all" else min(int(attrs["keep_images"]), n),
    }
    if where.is_local:
        path = where.path
        if path.exists():
            raise RunError(f"{path}: already exists; a new run needs a new path")
        check_writable_folder(path.parent, f"run {path}")
        building = path.with_name(f".{path.name}.creating")
        shutil.rmtree(building, ignore_errors=True)  # the leftover of a killed creation
        root = zarr.open_group(building, mode="w-", zarr_format=3, attributes=full_attrs)
        _build_skeleton(root, full_attrs, images, layouts, tests, routes)
        os.replace(building, path)
        return
    if where.exists("zarr.json"):
        found = zarr.open_group(where.zarr_store(read_only=True), mode="r").attrs.asdict()
        if set(found) != {CREATING}:
            raise RunError(f"{where}: already exists; a new run needs a new URL")
    where.check_writable(f"run {where}")
    where.remove()  # what a killed creation left
    root = zarr.open_group(where.zarr_store(), mode="w", zarr_format=3, attributes={CREATING: True})
    _build_skeleton(root, full_attrs, images, layouts, tests, routes)
    root.attrs.put(full_attrs)  # one PUT: from here on it is a run


def _build_skeleton(
    root: zarr.Group,
    attrs: Mapping[str, Any],
    images: Sequence[tuple[str, str]],
    layouts: Sequence[StageLayout],
    tests: Sequence[str],
    routes: Mapping[int, np.ndarray],
) -> None:
    """Every array of a new run under ``root`` (:func:`create_run`)."""
    n, shard_size = len(images), attrs["shard_size"]
    _coordinate(root, "image", "image", np.arange(n))
    _coordinate(root, "image_id", "image", np.array([i for i, _ in images], dtype=str))
    _coordinate(root, "label", "image", np.array([label for _, label in images], dtype=str))
    image_coordinates = {"coordinates": "image_id label"}
    root.create_array(
        "thumbnail",
        shape=(n, THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3),
        chunks=(shard_size, THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3),
        dtype="uint8",
        fill_value=0,
        dimension_names=("image", "y", "x", "rgb"),
        attributes=image_coordinates,
    )
    root.create_array(
        "done",
        shape=(n,),
        chunks=(shard_size,),
        dtype="bool",
        fill_value=False,
        dimension_names=("image",),
        attributes=image_coordinates,
    )
    explained = bool(attrs.get("explanations"))
    if explained:
        _create_explanations(root, attrs, n, shard_size, tests)
    sketch_dim = attrs["sketch_dim"] if attrs["keep"] == "sketch" else None
    for layout in layouts:
        _create_stage(
            root,
            layout,
            n,
            attrs["dtype"],
            n_shards(n, shard_size),
            CLS_TEST in tests and explained,
            sketch_dim,
            shard_size,
            routes.get(layout.stage),
            bool(attrs.get("by_route")),
        )


def _create_explanations(
    root: zarr.Group, attrs: Mapping[str, Any], n: int, shard_size: int, tests: Sequence[str]
) -> None:
    """The (E) arrays of the root group, chunked by shard as ``done`` is."""
    patches = attrs["relevance_grid_height"] * attrs["relevance_grid_width"]
    _coordinate(root, "explanation", "explanation", np.array(EXPLANATIONS))
    _coordinate(root, "test", "test", np.array(tests))
    _coordinate(root, "removal", "removal", np.array(REMOVALS))
    _coordinate(root, "fraction", "fraction", np.array(FRACTIONS))
    for name, dims, shape, dtype, fill in (
        ("predicted", ("image",), (n,), "int64", -1),
        ("relevance", ("image", "explanation", "patch"), (n, len(EXPLANATIONS), patches),
         "float32", np.nan),
        ("faithfulness", ("image", "test", "removal", "fraction"),
         (n, len(tests), len(REMOVALS), len(FRACTIONS)), "float32", np.nan),
    ):  # fmt: skip
        root.create_array(
            name,
            shape=shape,
            chunks=(shard_size, *shape[1:]),
            dtype=dtype,
            fill_value=fill,
            dimension_names=dims,
        )


def _coordinate(group: zarr.Group, name: str, dim: str, values: np.ndarray) -> None:
    # Variable-length strings: zarr v3 specifies them, unlike numpy's fixed-width "<U".
    dtype = str if values.dtype.kind == "U" else values.dtype
    array = group.create_array(name, shape=values.shape, dtype=dtype, dimension_names=(dim,))
    array[...] = values


def _create_stage(
    root: zarr.Group,
    layout: StageLayout,
    n_images: int,
    dtype: str,
    shards: int,
    cls: bool,
    sketch_dim: int | None,
    shard_size: int,
    routes: np.ndarray | None,
    by_route: bool,
) -> None:
    height, width = layout.grid
    L, blocks = layout.patches, layout.n_blocks
    attributes = {
        "stage": layout.stage,
        "n_blocks": blocks,
        "pool": layout.pool,
        "grid_height": height,
        "grid_width": width,
        "full_grid_height": layout.full_grid[0],
        "full_grid_width": layout.full_grid[1],
    }
    sketch = None if sketch_dim is None else sketch_of(layout, sketch_dim)
    if sketch is not None:
        attributes["sketch_features"] = sketch.out_features
        attributes["sketch_exact"] = sketch.exact
    group = root.create_group(stage_group(layout.stage), attributes=attributes)
    rows, cols = np.divmod(np.arange(L), width)
    _coordinate(group, "block", "block", np.arange(blocks))
    for axis in ("query", "key"):
        _coordinate(group, axis, axis, np.arange(L))
        _coordinate(group, f"{axis}_row", axis, rows)
        _coordinate(group, f"{axis}_col", axis, cols)
    if routes is not None:
        routes = np.asarray(routes, dtype=np.int64)
        steps = layout.full_grid[0] * layout.full_grid[1]
        if routes.ndim != 2 or routes.shape[1] != steps:
            raise OptionError(
                f"stage {layout.stage}: routes must be (K, {steps}) on its full grid "
                f"{layout.full_grid}, got {routes.shape}"
            )
        array = group.create_array(
            "routes", shape=routes.shape, dtype="int64", dimension_names=("route", "step")
        )
        array[...] = routes
    rows_per_chunk = max(1, min(L, MEAN_CHUNK_BYTES // (4 * L)))
    coordinates = {"coordinates": QUERY_KEY_COORDINATES}
    arrays = [
        ("attention", {"image": n_images}, (1, 1, L, L), dtype, coordinates),
        ("attention_mean", {}, (1, rows_per_chunk, L), "float32", coordinates),
        ("partial_sum", {"shard": shards}, (1, 1, L, L), "float64", {}),
    ]
    K = 0 if routes is None else len(routes)
    if by_route:
        _coordinate(group, "route", "route", np.arange(K))
        arrays += [
            ("attention_mean_by_route", {}, (1, 1, rows_per_chunk, L), "float32", coordinates),
            ("partial_sum_by_route", {"shard": shards}, (1, 1, 1, L, L), "float64", {}),
        ]
    for name, leading, chunks, array_dtype, attributes in arrays:
        routed = name.endswith("_by_route")
        group.create_array(
            name,
            shape=(*leading.values(), blocks, *(K,) * routed, L, L),
            chunks=chunks,
            dtype=array_dtype,
            fill_value=np.nan,
            dimension_names=(*leading, "block", *("route",) * routed, "query", "key"),
            attributes=attributes,
            # Uncompressed: zstd (and Blosc zstd level 1, shuffled) on the workers cost more
            # time than it saved writing, for 7-19 % less disk (benchmarks/RESULTS.md).
            compressors=None,
        )
    if sketch is not None:
        group.create_array(
            "sketch",
            shape=(n_images, blocks, sketch.out_features),
            chunks=(shard_size, blocks, sketch.out_features),  # written once per shard
            dtype="float32",
            fill_value=np.nan,
            dimension_names=("image", "block", "component"),
            compressors=None,  # random projections: nothing for a compressor to find
        )
    if cls:
        chunk = max(1, math.ceil(n_images / shards))  # one shard's images per chunk
        for name, axis in zip(CLS_VARIABLES, ("key", "query"), strict=True):
            group.create_array(
                name,
                shape=(n_images, blocks, L),
                chunks=(chunk, blocks, L),
                dtype="float32",
                fill_value=np.nan,
                dimension_names=("image", "block", axis),
                attributes={"coordinates": f"{axis}_row {axis}_col"},
            )


def check_run(path: str | Path | Location) -> zarr.Group:
    """Validate the run at ``path`` (a path, a URL or a ``Location``) and return its root group
    (read-only). A complete run's scratch sums, left by a kill during :func:`finalise`, are
    removed first.

    Raises
    ------
    RunError
        ``path`` does not exist, is not a zarr store, is not a run, was written by an
        incompatible format version, or lacks a group or variable of the schema.
    """
    where = location(path)
    if where.is_local and not where.path.exists():
        raise RunError(f"{where}: no such run (the path does not exist)")
    if not where.is_local and not where.exists("zarr.json"):
        raise RunError(f"{where}: no such run (no zarr.json at that URL)")
    try:
        root = zarr.open_group(where.zarr_store(read_only=True), mode="r")
    except (FileNotFoundError, ValueError) as err:  # zarr's errors and JSON's are ValueErrors
        if where.is_local and (where.path / "zarr.json").is_file():
            raise _damaged(where.path / "zarr.json", err) from err
        raise RunError(f"{where}: not a run (not a zarr store: {err})") from err
    found = root.attrs.get("format")
    if found != FORMAT:
        if CREATING in root.attrs:
            raise RunError(
                f"{where}: not a run yet (its creation was interrupted); run the extraction "
                "command again"
            )
        raise RunError(f"{where}: not a run (attribute 'format' is {found!r}, not {FORMAT!r})")
    version = root.attrs.get("format_version")
    if version not in READABLE_VERSIONS:
        raise RunError(
            f"{where}: run format_version {version!r} (written by mambapanel "
            f"{root.attrs.get('mambapanel_version')}); this mambapanel {__version__} reads "
            f"format_version {', '.join(map(str, READABLE_VERSIONS))}"
        )
    if root.attrs.get("complete"):
        _remove_scratch(where, root.attrs["stages"])  # before zarr lists the stage groups
    attrs = run_attrs(root.attrs)
    explained = bool(attrs["explanations"])
    _require(where, root, "/", ROOT_VARIABLES + (EXPLANATION_VARIABLES if explained else ()))
    scratch = () if attrs["complete"] else SCRATCH_VARIABLES[: 1 + bool(attrs["by_route"])]
    stage_variables = (*STAGE_VARIABLES, *scratch)
    if attrs["by_route"]:
        stage_variables = (*stage_variables, "routes", *BY_ROUTE_VARIABLES)
    if explained and CLS_TEST in root["test"][...]:
        stage_variables = (*stage_variables, *CLS_VARIABLES)
    if attrs["keep"] == "sketch":
        stage_variables = (*stage_variables, "sketch")
    for stage in attrs["stages"]:
        name = stage_group(stage)
        if name not in root:
            raise RunError(f"{where}: no group {name!r} (attribute 'stages' lists stage {stage})")
        _require(where, read_member(where, root, name), name, stage_variables)
    return root


def read_member(
    path: str | Path | Location, group: zarr.Group, name: str
) -> zarr.Group | zarr.Array:
    """``group[name]`` in the run at ``path``, for a name the group lists; a ``zarr.json``
    that cannot be read is a RunError naming the file.

    Raises
    ------
    RunError
        The member's metadata file is not valid zarr v3 metadata (not JSON, or not a node).
    """
    try:
        return group[name]
    except ValueError as err:  # json.JSONDecodeError and zarr's MetadataValidationError
        where = location(path)
        metadata = f"{group.path}/{name}/zarr.json".lstrip("/")
        raise _damaged(
            where.path / metadata if where.is_local else f"{where}/{metadata}", err
        ) from err


def _damaged(metadata: Path | str, err: Exception) -> RunError:
    return RunError(
        f"{metadata}: damaged metadata, not a zarr v3 node ({type(err).__name__}: {err})"
    )


def _require(where: Location, group: zarr.Group, name: str, variables: Sequence[str]) -> None:
    if where.is_local:
        # A listing of the members' directories: zarr's would read every member's
        # zarr.json, and one that is damaged is better named where it is read (read_member).
        found = Path(where.path, group.path).glob("*/zarr.json")
        present = {metadata.parent.name for metadata in found}
    else:
        present = set(group.keys())  # one listing, not one metadata read per variable
    for variable in variables:
        if variable not in present:
            raise RunError(f"{where}: group {name!r} has no variable {variable!r}")


def open_run(
    path: str | Path | Location, *, allow_incomplete: bool = False, chunks: dict | None = None
) -> xr.DataTree:
    """Open a validated run as a lazy ``xarray.DataTree`` (see the module docstring).

    Parameters
    ----------
    allow_incomplete : bool
        Open a run whose extraction has not finished (its ``attention_mean`` is NaN and
        some images are not ``done``) instead of refusing it.
    chunks : dict, optional
        ``{}`` gives dask arrays, one per zarr chunk (xarray's ``chunks``); by default
        variables load whole on first use.

    Raises
    ------
    RunError
        See :func:`check_run`; also for an incomplete run unless ``allow_incomplete``.
    """
    where = location(path)
    root = check_run(where)
    if not (root.attrs["complete"] or allow_incomplete):
        done = int(np.count_nonzero(root["done"][...]))
        raise RunError(
            f"{where}: incomplete run ({done} of {root.attrs['n_images']} images done); run "
            "the extraction command that made it again to finish it"
        )
    import xarray as xr

    tree = xr.open_datatree(
        where.zarr_store(read_only=True), engine="zarr", consolidated=False, chunks=chunks
    )
    tree.attrs = run_attrs(tree.attrs)
    return tree


def run_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A run's root attrs under today's names (:data:`RENAMED_ATTRS`), with the attrs added
    since it was made (:data:`ADDED_ATTRS`; ``keep_images``: all of its images)."""
    current = {**ADDED_ATTRS, **attrs}
    for old, new in RENAMED_ATTRS.items():
        if old in current and new not in current:
            current[new] = current.pop(old)
    if current["keep_images"] is None:
        current["keep_images"] = current.get("n_images")
    return current


def check_compatible(path: str | Path | Location, attrs: Mapping[str, Any]) -> None:
    """Refuse to resume the run at ``path`` with ``attrs`` that describe another computation.

    Every key of :data:`IDENTITY_ATTRS` present in ``attrs`` must equal the stored value.
    """
    where = location(path)
    stored = run_attrs(check_run(where).attrs)
    asked = json.loads(json.dumps(dict(attrs)))  # tuples -> lists, as the store holds them
    differences = []
    for key in IDENTITY_ATTRS:
        if key in asked and asked[key] != stored.get(key):
            run_value, asked_value = repr(stored.get(key)), repr(asked[key])
            if key == "checkpoint_sha256":
                run_value += f" (checkpoint {stored.get('checkpoint')})"
                asked_value += f" (checkpoint {asked.get('checkpoint')})"
            differences.append(f"  {key}: the run has {run_value}, asked for {asked_value}")
    if differences:
        raise RunError(
            f"{where}: an existing run made with other options; resume it with its own "
            "options or write to a new path:\n" + "\n".join(differences)
        )


@dataclass(frozen=True)
class RunInfo:
    """What a worker needs to know of a validated run."""

    attrs: dict[str, Any]
    layouts: list[StageLayout]
    image_ids: list[str]
    tests: tuple[str, ...] = ()  # the maps the perturbation test compares, if any
    # {stage: int(K, L)}: each stage's ``routes`` array, where the run stores one.
    routes: dict[int, np.ndarray] = field(default_factory=dict)


def read_run(path: str | Path | Location) -> RunInfo:
    """Root attrs, stage layouts (from the group attrs) and image ids of a validated run."""
    root = check_run(path)
    layouts, routes = [], {}
    for stage in root.attrs["stages"]:
        group = root[stage_group(stage)]
        attrs = group.attrs
        full_grid = (attrs["full_grid_height"], attrs["full_grid_width"])
        layouts.append(StageLayout(stage, attrs["n_blocks"], full_grid, attrs["pool"]))
        if "routes" in group:
            routes[stage] = group["routes"][...]
    image_ids = [str(image_id) for image_id in root["image_id"][...]]
    attrs = run_attrs(root.attrs)
    tests = tuple(str(t) for t in root["test"][...]) if attrs["explanations"] else ()
    return RunInfo(attrs, layouts, image_ids, tests, routes)


def pending_shards(path: str | Path | Location) -> list[int]:
    """Shards with at least one image not ``done``: the work a (re)started run has left."""
    root = check_run(path)
    done = root["done"][...]
    shards = n_shards(root.attrs["n_images"], root.attrs["shard_size"])
    return [s for s in range(shards) if not done[shard_images(root.attrs, s)].all()]


def write_attention(
    path: str | Path | Location, stage: int, block: int, start: int, values: np.ndarray
) -> None:
    """Write the matrices of images ``start`` .. ``start + len(values)`` of one block.

    Parameters
    ----------
    values : r(b, L, L)
        Matrices, best already in the run's dtype; cast here otherwise.
    """
    array = _array(path, f"{stage_group(stage)}/attention")
    array[start : start + len(values), block] = values.astype(array.dtype, copy=False)


def write_explanations(
    path: str | Path | Location,
    start: int,
    predicted: np.ndarray,
    relevance: np.ndarray,
    faithfulness: np.ndarray | None,
) -> None:
    """Write the (E) arrays of images ``start`` .. ``start + len(predicted)``.

    Parameters
    ----------
    predicted : int64(b,)
    relevance : f32(b, explanation, patch)
    faithfulness : f32(b, test, removal, fraction), or None (not tested: stays NaN)
    """
    stop = start + len(predicted)
    _array(path, "predicted")[start:stop] = predicted
    _array(path, "relevance")[start:stop] = relevance
    if faithfulness is not None:
        _array(path, "faithfulness")[start:stop] = faithfulness


def write_cls(
    path: str | Path | Location,
    stage: int,
    block: int,
    start: int,
    from_cls: np.ndarray,
    to_cls: np.ndarray,
) -> None:
    """Write a Vim block's CLS row (from CLS, r(b, key)) and column (to CLS, r(b, query))."""
    for name, values in zip(CLS_VARIABLES, (from_cls, to_cls), strict=True):
        _array(path, f"{stage_group(stage)}/{name}")[start : start + len(values), block] = values


def write_shard(
    path: str | Path | Location,
    shard: int,
    thumbnails: np.ndarray,
    partial_sums: Mapping[int, np.ndarray],
    sketches: Mapping[int, np.ndarray] | None = None,
    partial_sums_by_route: Mapping[int, np.ndarray] | None = None,
) -> None:
    """Finish a shard whose attention is written: thumbnails, sketches, then partial sums,
    then ``done``.

    In that order, so a run killed at any point never has a ``done`` image whose data is
    missing; a shard not marked done is computed again and overwrites what it left.

    Parameters
    ----------
    thumbnails : uint8 (b, 64, 64, 3)
        The shard's images, in order.
    partial_sums : {stage: f64(n_blocks, L, L)}
        Σ over the shard's images of their float32 matrices, accumulated in float64.
    sketches : {stage: f32(b, n_blocks, width)}, with ``keep`` "sketch"
    partial_sums_by_route : {stage: f64(n_blocks, K, L, L)}, with ``by_route``: each route's
        sum, as ``partial_sums`` is the merged one
    """
    where = location(path)
    images = shard_images(zarr.open_group(where.zarr_store(), mode="r").attrs, shard)
    _array(where, "thumbnail")[images.start : images.stop] = thumbnails
    for stage, values in (sketches or {}).items():
        _array(where, f"{stage_group(stage)}/sketch")[images.start : images.stop] = values
    for stage, sums in partial_sums.items():
        _array(where, f"{stage_group(stage)}/partial_sum")[shard] = sums
    for stage, sums in (partial_sums_by_route or {}).items():
        _array(where, f"{stage_group(stage)}/partial_sum_by_route")[shard] = sums
    _array(where, "done")[images.start : images.stop] = True


def finalise(path: str | Path | Location) -> None:
    """``attention_mean`` = Σ over shards of ``partial_sum`` / n (float64, cast to float32),
    and ``attention_mean_by_route`` likewise from ``partial_sum_by_route``; mark the run
    complete, then drop the scratch sums. Safe to repeat after a kill."""
    where = location(path)
    check_run(where)
    root = zarr.open_group(where.zarr_store(), mode="r+")
    attrs = root.attrs
    if not attrs["complete"]:
        done = root["done"][...]
        if not done.all():
            raise RunError(
                f"{where}: cannot finalise, {done.size - np.count_nonzero(done)} of "
                f"{done.size} images are not done"
            )
        means = ("attention_mean", "attention_mean_by_route")[: 1 + bool(attrs.get("by_route"))]
        for stage in attrs["stages"]:
            group = root[stage_group(stage)]
            for scratch, name in zip(SCRATCH_VARIABLES, means, strict=False):
                partial, mean = group[scratch], group[name]
                for block in range(group.attrs["n_blocks"]):
                    total = np.zeros(mean.shape[1:], dtype=np.float64)
                    for shard in range(partial.shape[0]):
                        total += partial[shard, block]
                    mean[block] = (total / attrs["n_images"]).astype(np.float32)
        root.attrs["complete"] = True
    _remove_scratch(where, attrs["stages"])
    if where.is_local:
        # A write killed midway leaves the temporary file of zarr's LocalStore beside its
        # target (``<name>.<uuid>.partial``, renamed into place when complete). An object
        # store's PUT leaves nothing half written.
        for stray in where.path.rglob("*.partial"):
            stray.unlink()


def _remove_scratch(where: Location, stages: Sequence[int]) -> None:
    """Delete the scratch sums (``partial_sum``, ``partial_sum_by_route``) of a complete run
    (up to GBs), or what is left of them.

    As files, not through zarr: a removal killed midway may leave chunks without the array's
    ``zarr.json``, which zarr no longer sees as an array (it warns at every listing instead).
    Errors are ignored: a reader without write access leaves them to the owner's next open,
    and two processes may remove at once.
    """
    for stage in stages:
        for name in SCRATCH_VARIABLES:
            try:
                where.remove(f"{stage_group(stage)}/{name}")
            except OSError:
                pass


def _array(path: str | Path | Location, name: str) -> zarr.Array:
    return zarr.open_array(location(path).zarr_store(), path=name, mode="r+")
