"""Dimensionality reduction of stored hidden attention (design.md §6): PCA, randomized and out
of core on dask arrays; t-SNE and UMAP after PCA; and the embeddings that a run stores.

Two feature sets, from the paper's Algorithms 1 and 2:

- inter-block (Mode 1): every (image, block) matrix of a stage, flattened to L² features
  (in a run that keeps sketches, each matrix's count sketch instead: k features whose
  distances are the matrices' within the bound of :mod:`mambapanel.sketch`);
  ``embedding_inter`` (method, image, block, xy) in the stage group.
- intra-block (Mode 2): the L rows of one block's ``attention_mean`` (query patch i's
  attention over the L keys); ``embedding_intra`` (method, block, query, xy).

Each embedding variable's ``reduce_params`` attr is a JSON object {method: parameters}, the
parameters as resolved for that variable's point count (see :func:`embedding_params`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mambapanel.errors import OptionError
from mambapanel.randomized_pca import (
    OVERSAMPLES,
    POWER_ITERATIONS,
    Features,
    feature_shape,
    pca,
)
from mambapanel.storage import Location, location
from mambapanel.store import EMBEDDING_INTER, EMBEDDING_INTRA, open_run, stage_group

METHODS = ("pca", "tsne", "umap")
XY = ("x", "y")
PARAMS_ATTR = "reduce_params"

# t-SNE of fewer points than this runs on one thread (see _embed_resolved).
TSNE_SINGLE_THREAD_BELOW = 5000

_TSNE_DEFAULTS: dict[str, Any] = {
    "perplexity": 30.0,
    "early_exaggeration": 12.0,
    "learning_rate": "auto",
    "max_iter": 1000,
    "metric": "euclidean",
    "init": "pca",
    "angle": 0.5,
}
_UMAP_DEFAULTS: dict[str, Any] = {
    "n_neighbors": 15,
    "min_dist": 0.1,
    "spread": 1.0,
    "metric": "euclidean",
    "init": "spectral",
    "n_epochs": None,
}


def embedding_params(
    method: str,
    n_points: int,
    n_features: int,
    *,
    seed: int = 0,
    n_pca: int = 100,
    **params: Any,
) -> dict[str, Any]:
    """The parameters that :func:`embed` uses for ``method`` on input of this size.

    User ``params`` override the defaults, then the neighbourhood sizes are clipped to the
    point count: t-SNE's ``perplexity`` to at most (n_points - 1) / 3 (its Barnes-Hut
    gradient uses 3 x perplexity neighbours) and at least 1, UMAP's ``n_neighbors`` to
    n_points - 1. ``pca_components`` is the width of the PCA that runs before t-SNE and
    UMAP, ``None`` when the input is at most ``n_pca`` features wide.

    Returns
    -------
    dict
        JSON-serialisable; stored as the method's entry of ``reduce_params``.

    Raises
    ------
    ValueError
        An unknown method or parameter, or fewer than 3 points.
    """
    if method not in METHODS:
        raise OptionError(f"method must be one of {METHODS}, got {method!r}")
    if n_points < 3:
        raise OptionError(
            f"{method} needs at least 3 points, got {n_points} (features of shape "
            f"({n_points}, {n_features}))"
        )
    if method == "pca":
        if params:
            raise OptionError(f"pca takes no parameters, got {sorted(params)}")
        return {
            "seed": seed,
            "solver": "randomized",
            "n_power_iter": POWER_ITERATIONS,
            "n_oversamples": OVERSAMPLES,
        }
    defaults = _TSNE_DEFAULTS if method == "tsne" else _UMAP_DEFAULTS
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise OptionError(f"{method} takes parameters {sorted(defaults)}, got unknown {unknown}")
    resolved = {**defaults, **params}
    if method == "tsne":
        resolved["perplexity"] = min(float(resolved["perplexity"]), max(1.0, (n_points - 1) / 3))
    else:
        resolved["n_neighbors"] = min(int(resolved["n_neighbors"]), n_points - 1)
        # The spectral layout needs more points than n_components + 1 eigenvectors.
        if resolved["init"] == "spectral" and n_points <= len(XY) + 1:
            resolved["init"] = "random"
    pca_components = min(n_pca, n_points) if n_features > n_pca else None
    return {"seed": seed, "pca_components": pca_components, **resolved}


def embed(
    features: Features,
    method: str,
    *,
    seed: int = 0,
    n_pca: int = 100,
    on_workers: bool = False,
    **params: Any,
) -> np.ndarray:
    """Embed points in 2-D with PCA, t-SNE or UMAP.

    Parameters
    ----------
    features : r(n_points, n_features), numpy or dask
        One point per row. A dask array is never loaded whole: PCA runs out of core on it
        (:func:`pca`), and t-SNE and UMAP see only its PCA to ``n_pca`` dimensions.
    method : "pca", "tsne" or "umap"
    seed : int
        Seeds the randomized PCA and the method; the same seed gives the same output.
    n_pca : int
        t-SNE and UMAP run after PCA to this many dimensions when the input is wider.
    on_workers : bool
        Dask features stay on the Dask workers (:func:`mambapanel.randomized_pca.pca`); only
        the PCA's scores come to this process, where t-SNE and UMAP run.
    **params
        Method parameters, see :func:`embedding_params` for names and defaults.

    Returns
    -------
    f32(n_points, 2)
    """
    n_points, n_features = feature_shape(features)
    resolved = embedding_params(method, n_points, n_features, seed=seed, n_pca=n_pca, **params)
    return _embed_resolved(features, method, resolved, pca_cache={}, on_workers=on_workers)


def inter_block_features(attention: xr.DataArray | Features) -> da.Array:
    """Algorithm 1's points: every (image, block) matrix of a stage, flattened.

    Parameters
    ----------
    attention : r(image, block, query, key), L = query = key
        A DataArray (its dims are put in this order), a dask or a numpy array. Other input
        than dask is chunked one image-block per chunk; a DataArray opened without
        ``chunks={}`` loads whole on that, so open a run with ``chunks={}`` to stay lazy.

    Returns
    -------
    dask r(image * block, L * L)
        Point ``image * n_blocks + block``: image-major, as ``reshape(n_images, n_blocks)``
        of an embedding expects.
    """
    if isinstance(attention, xr.DataArray):
        attention = attention.transpose("image", "block", "query", "key")
        if not isinstance(attention.data, da.Array):
            attention = attention.chunk({"image": 1, "block": 1})
        attention = attention.data
    elif not isinstance(attention, da.Array):
        attention = da.from_array(attention, chunks=(1, 1, *np.shape(attention)[2:]))
    if attention.ndim != 4 or attention.shape[2] != attention.shape[3]:
        raise ValueError(
            f"attention must be (image, block, query, key) with query = key, got shape "
            f"{attention.shape}"
        )
    n_images, n_blocks, n_patches, _ = attention.shape
    return attention.reshape(n_images * n_blocks, n_patches * n_patches)


def intra_block_features(attention_mean_block: xr.DataArray | np.ndarray) -> np.ndarray:
    """Algorithm 2's points: the rows of one block's image-mean matrix.

    Parameters
    ----------
    attention_mean_block : r(query, key), L = query = key
        Row i is query patch i's attention over all L key patches.

    Returns
    -------
    r(L, L)
    """
    if isinstance(attention_mean_block, xr.DataArray):
        attention_mean_block = attention_mean_block.transpose("query", "key").values
    matrix = np.asarray(attention_mean_block)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"attention_mean of one block must be (query, key) with query = key, got shape "
            f"{matrix.shape}"
        )
    return matrix


def reduce_run(
    path: str | Path | Location,
    methods: Iterable[str] = METHODS,
    *,
    seed: int = 0,
    stages: Iterable[int] | None = None,
    n_pca: int = 100,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    force: bool = False,
    progress: bool = True,
    on_workers: bool = False,
) -> None:
    """Add ``embedding_inter`` and ``embedding_intra`` for ``methods`` to a complete run.

    Writes into the existing store: per stage group, the two embedding variables and the
    ``method`` and ``xy`` coordinates, nothing else. A method already stored with the same
    resolved parameters is kept as it is; one stored with other parameters, or every
    requested method with ``force``, is computed again. Other stored methods are kept.

    Parameters
    ----------
    path : a run made by ``python -m compute extract``
    methods : some of "pca", "tsne", "umap"
    seed : int
        Recorded with each method's parameters.
    stages : stage numbers (default: every stage of the run)
    n_pca : int
        t-SNE and UMAP run after PCA to this many dimensions when the input is wider.
    method_params : {method: {parameter: value}}
        Overrides of the defaults, see :func:`embedding_params`.
    force : bool
        Recompute methods that are stored with the same parameters.
    progress : bool
        Show a progress bar over stages x methods.
    on_workers : bool
        Run the PCAs on the Dask workers of the active client (the features are dask arrays
        over the store, which the workers read); t-SNE and UMAP run here, after PCA-100.

    Raises
    ------
    mambapanel.store.RunError
        ``path`` is not a complete run.
    mambapanel.errors.OptionError
        An unknown method or parameter, or a stage that the run does not store.
    """
    methods = list(dict.fromkeys(methods))
    for method in methods:
        if method not in METHODS:
            raise OptionError(f"method must be one of {METHODS}, got {method!r}")
    method_params = dict(method_params or {})
    unknown = sorted(set(method_params) - set(methods))
    if unknown:
        raise OptionError(f"method_params for {unknown}, which are not among methods {methods}")
    where = location(path)
    # Validated; chunks={} keeps the variables lazy (dask, one zarr chunk per dask chunk), so
    # that PCA streams the attention instead of loading it whole on first use.
    tree = open_run(where, chunks={})
    sketched = tree.attrs["keep"] == "sketch"
    stored_stages = tree.attrs["stages"]
    stages = stored_stages if stages is None else list(stages)
    missing = sorted(set(stages) - set(stored_stages))
    if missing:
        raise OptionError(f"{path}: stores stages {stored_stages}, not {missing}")
    with tqdm(
        total=len(stages) * len(methods), desc="reduce", unit="embedding", disable=not progress
    ) as bar:
        for stage in stages:
            name = stage_group(stage)
            _reduce_stage(
                where,
                name,
                tree[name],
                methods,
                seed,
                n_pca,
                method_params,
                force,
                bar,
                sketched=sketched,
                on_workers=on_workers,
            )


def _reduce_stage(
    where: Location,
    group_name: str,
    node: xr.DataTree,
    methods: list[str],
    seed: int,
    n_pca: int,
    method_params: dict[str, Mapping[str, Any]],
    force: bool,
    bar: tqdm,
    *,
    sketched: bool = False,
    on_workers: bool = False,
) -> None:
    """Compute what ``methods`` lack in one stage group, then write the stage's embeddings."""
    attention = node["attention"]
    n_images, n_blocks = attention.sizes["image"], attention.sizes["block"]
    n_patches = attention.sizes["query"]
    if sketched:  # Algorithm 1 on the sketches: the run keeps few images' matrices
        inter_features = sketch_features(node["sketch"])
    else:
        inter_features = inter_block_features(attention)
    n_features = inter_features.shape[1]
    # Both variables load whole: a few floats per point.
    inter = _stored(node, EMBEDDING_INTER)
    intra = _stored(node, EMBEDDING_INTRA)
    # t-SNE and UMAP share one PCA of each feature set: {width: scores}.
    inter_pca: dict[int, np.ndarray] = {}
    intra_pca: list[dict[int, np.ndarray]] = [{} for _ in range(n_blocks)]
    changed = False
    for method in methods:
        bar.set_postfix_str(f"{group_name} {method}")
        kwargs = {"seed": seed, "n_pca": n_pca, **method_params.get(method, {})}
        inter_params = embedding_params(method, n_images * n_blocks, n_features, **kwargs)
        intra_params = embedding_params(method, n_patches, n_patches, **kwargs)
        if (
            force
            or _as_json(inter_params) != inter.get(method, (None, None))[1]
            or _as_json(intra_params) != intra.get(method, (None, None))[1]
        ):
            points = _embed_resolved(
                inter_features, method, inter_params, inter_pca, on_workers=on_workers
            )
            inter[method] = (points.reshape(n_images, n_blocks, len(XY)), inter_params)
            block_points = [
                _embed_resolved(
                    _intra_features(node, block, on_workers),
                    method,
                    intra_params,
                    intra_pca[block],
                    on_workers=on_workers,
                )
                for block in range(n_blocks)
            ]
            intra[method] = (np.stack(block_points), intra_params)
            changed = True
        bar.update()
    if changed:
        _write_embeddings(where, group_name, inter, intra)


def sketch_features(sketch: xr.DataArray) -> da.Array:
    """Algorithm 1's points from a sketched run: the stored ``sketch`` r(image, block, k)
    as dask r(image * block, k), image-major as :func:`inter_block_features` orders them."""
    values = sketch.transpose("image", "block", "component").data
    if not isinstance(values, da.Array):
        values = da.from_array(values, chunks=(1, *values.shape[1:]))
    n_images, n_blocks, width = values.shape
    return values.reshape(n_images * n_blocks, width)


def _intra_features(node: xr.DataTree, block: int, on_workers: bool) -> Features:
    """Algorithm 2's points of ``block``: loaded here, or lazy (dask over the store) for the
    workers to read."""
    mean = node["attention_mean"].isel(block=block).transpose("query", "key")
    if on_workers:
        return mean.data if isinstance(mean.data, da.Array) else da.from_array(mean.values)
    return intra_block_features(mean)


def _stored(node: xr.DataTree, name: str) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """{method: (values, parameters)} of an embedding variable, empty when there is none."""
    if name not in node.data_vars:
        return {}
    variable = node[name]
    params = json.loads(variable.attrs[PARAMS_ATTR])
    values = variable.values
    return {
        str(method): (values[i], params[str(method)])
        for i, method in enumerate(variable["method"].values)
    }


def _write_embeddings(
    where: Location,
    group_name: str,
    inter: dict[str, tuple[np.ndarray, dict[str, Any]]],
    intra: dict[str, tuple[np.ndarray, dict[str, Any]]],
) -> None:
    """Replace one stage group's embedding variables with ``inter`` and ``intra``, both
    {method: (values, parameters)} for the same methods."""
    methods = list(inter)
    n_images, n_blocks = inter[methods[0]][0].shape[:2]
    n_patches = intra[methods[0]][0].shape[1]
    embeddings = xr.Dataset(
        {
            name: (
                dims,
                np.stack([variable[method][0] for method in methods]).astype(np.float32),
                {PARAMS_ATTR: json.dumps({method: variable[method][1] for method in methods})},
            )
            for name, dims, variable in (
                (EMBEDDING_INTER, ("method", "image", "block", "xy"), inter),
                (EMBEDDING_INTRA, ("method", "block", "query", "xy"), intra),
            )
        },
        # object dtype: zarr v3 specifies variable-length strings, not numpy's fixed "<U".
        coords={"method": np.array(methods, dtype=object), "xy": np.array(XY, dtype=object)},
    )
    group = zarr.open_group(where.zarr_store(), path=group_name, mode="r+")
    # to_zarr cannot resize the method dimension of existing arrays, so these small arrays
    # are replaced whole (stored methods are rewritten with the values just read).
    for name in (EMBEDDING_INTER, EMBEDDING_INTRA, "method"):
        if name in group:
            del group[name]
    # to_zarr(mode="a") replaces the group's attrs with the dataset's: carry them over.
    embeddings.attrs = group.attrs.asdict()
    embeddings.to_zarr(
        where.zarr_store(),
        group=group_name,
        mode="a",
        consolidated=False,
        encoding={
            # One method of Mode 1, or one (method, block) of Mode 2, is one chunk.
            EMBEDDING_INTER: {"chunks": (1, n_images, n_blocks, len(XY))},
            EMBEDDING_INTRA: {"chunks": (1, 1, n_patches, len(XY))},
        },
    )


def _embed_resolved(
    features: Features,
    method: str,
    params: dict[str, Any],
    pca_cache: dict[int, np.ndarray],
    *,
    on_workers: bool = False,
) -> np.ndarray:
    """:func:`embed` with resolved ``params``; ``pca_cache`` {width: scores} lets several
    methods share the PCA of the same features."""
    seed = params["seed"]
    if method == "pca":
        return pca(features, len(XY), seed=seed, on_workers=on_workers).astype(np.float32)
    width = params["pca_components"]
    if width is None:
        points = features.compute() if isinstance(features, da.Array) else features
    else:
        if width not in pca_cache:
            pca_cache[width] = pca(features, width, seed=seed, on_workers=on_workers)
        points = pca_cache[width]
    settings = {k: v for k, v in params.items() if k not in ("seed", "pca_components")}
    if method == "tsne":
        model = TSNE(n_components=len(XY), random_state=seed, **settings)
        # Small inputs run t-SNE's OpenMP gradient on one thread: on a busy machine its
        # threads spin-wait for each other (benchmarks/RESULTS.md, Figures behind choices).
        threads = 1 if len(points) < TSNE_SINGLE_THREAD_BELOW else None
        with threadpool_limits(threads):
            return model.fit_transform(np.asarray(points)).astype(np.float32)
    # Seeded UMAP runs single-threaded (it warns and overrides any other n_jobs).
    model = _umap_class()(n_components=len(XY), random_state=seed, n_jobs=1, **settings)
    return model.fit_transform(np.asarray(points)).astype(np.float32)


def _umap_class() -> type:
    """umap.UMAP, imported on first use: its import compiles numba code (slow when cold)."""
    # A persistent user cache for numba's compiled functions spares later imports that
    # compilation. Only effective before numba is first imported (datashader imports it too).
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache / "mambapanel" / "numba"))
    with warnings.catch_warnings():
        # umap's __init__ warns that ParametricUMAP (TensorFlow) is unavailable; unused here.
        warnings.filterwarnings("ignore", "Tensorflow not installed", ImportWarning)
        from umap import UMAP
    return UMAP


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON attr (tuples become lists)."""
    return json.loads(json.dumps(value))
