"""Numbers for the study's findings (§4-§5 of arXiv 2502.20764), computed from stored hidden
attention; the findings a run stores, read back; and their tables (report and dashboard).

Every metric works on magnitudes |α| of a block's image-mean matrix ``attention_mean``
(rows = query patch, row-major patches ``i = row * W + col``), since hidden attention can
be negative and a signed sum would let opposite entries cancel. Routes are plain integer
arrays (K, L) as :func:`mambapanel.orders.routes` gives them (``.numpy()``): this module
imports no torch, so the dashboard can read stored findings with it.

Stored findings (``python -m compute findings RUN``), in the run's zarr store
------------------------------------------------------------------------------
Group ``findings`` (absent until computed; present but without ``findings_version`` while
being written, which reads as absent)
    attrs: findings_version (1), mambapanel_version, created (UTC, ISO 8601), order (the
    run's), compared_orders ([name, ...]), seeds (random relabellings averaged)
Group ``findings/stage{s}`` for every stored stage s: one ``xarray.Dataset``
    block (block,) int64, method (method,) str, reference (reference,) str,
    distance (distance,) int64, sequence_distance (sequence_distance,) int64: coordinates
    separation (method,) f64              :func:`block_separation` of the stage's
                                          ``embedding_inter`` per stored method
    self_share, row_share, column_share (block,) f64    :func:`self_row_column_share`
    row_purity, column_purity (block,) f64              :func:`neighbour_purity`
    spatial_correlation (block,) f64      :func:`distance_correlation` of the patterns with
                                          the Euclidean grid distance
    sequence_correlation (block,) f64     the same with :func:`sequence_distance`
    order_share (block, reference) f64    :func:`order_share` with the ``window`` patches
                                          preceding each query along the routes of each
                                          compared order, and of ``random`` (the run's own
                                          routes on randomly relabelled patches, mean over
                                          ``seeds``)
    order_chance (reference,) f64         :func:`order_chance` of each reference
    locality (block, distance) f64        :func:`locality_profile` over the Chebyshev grid
                                          distance; ``pairs`` (distance,) int64 its counts
    sequence_locality (block, sequence_distance) f64, sequence_pairs (sequence_distance,)
                                          the same over the sequence distance
    attrs: stage, grid_height, grid_width, pool, window (default the grid width), seeds,
    row_neighbours, column_neighbours, row_chance, column_chance, notes (["what was not
    computed and why", ...])
The order-dependent variables (``sequence_correlation``, ``order_share``, ``order_chance``,
``sequence_locality``, ``sequence_pairs``) are absent for a pooled stage: routes visit the
model's patches, which a pooled store no longer holds. ``separation`` is absent before
``python -m compute reduce``. String coordinates read back as numpy StringDType; index
them by position (``isel``), as :mod:`mambapanel.views.data` does for ``method``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from mambapanel import __version__

FINDINGS_VERSION = 1
GROUP = "findings"
#: Orders whose "preceding patches" every run is measured against (the paper's three, the
#: two of the original models and Hilbert); a run's own order is added when it is not here.
COMPARED_ORDERS = ("cross", "bidirectional", "diagonal", "morton", "spiral", "hilbert")
RANDOM = "random"
SEEDS = 8
STRING = object  # zarr v3 specifies variable-length strings, not numpy's fixed-width "<U"


# -------------------------------------------------------------------------------------------
# Metrics on one block's matrix.
# -------------------------------------------------------------------------------------------


def _magnitude(attention: np.ndarray, height: int, width: int) -> np.ndarray:
    """|α| as f64(..., L, L), after checking that the matrix fits the grid."""
    magnitude = np.abs(np.asarray(attention, dtype=np.float64))
    L = height * width
    if magnitude.shape[-2:] != (L, L):
        raise ValueError(
            f"attention of shape {np.shape(attention)} does not fit a {height}x{width} grid "
            f"(expected (..., {L}, {L}))"
        )
    return magnitude


def self_row_column_share(attention: np.ndarray, height: int, width: int) -> dict[str, float]:
    """Share of each query's attention magnitude on itself, its row and its column
    (Finding 2: blocks that attend to the patch's own row and column, and blocks that do not).

    Parameters
    ----------
    attention : r(L, L) or r(B, L, L)
        Query rows, row-major patches, L = height * width. Magnitudes |α| are used.

    Returns
    -------
    dict with ``self``, ``row`` and ``column`` (the other patches of the query's row or
    column; the patch itself counts only in ``self``), each averaged over queries and images.
    Uniform attention gives 1/L, (W-1)/L and (H-1)/L.
    """
    magnitude = _magnitude(attention, height, width).reshape(-1, *np.shape(attention)[-2:])
    L = height * width
    rows, cols = np.divmod(np.arange(L), width)
    same_row = rows[:, None] == rows[None, :]
    same_col = cols[:, None] == cols[None, :]
    itself = np.eye(L, dtype=bool)
    total = magnitude.sum(-1)
    total = np.where(total > 0, total, 1.0)

    def share(mask: np.ndarray) -> float:
        return float(((magnitude * mask).sum(-1) / total).mean())

    return {
        "self": share(itself),
        "row": share(same_row & ~itself),
        "column": share(same_col & ~itself),
    }


def pattern_distances(attention: np.ndarray) -> np.ndarray:
    """Euclidean distances between the query rows of |α|, each row scaled to sum 1.

    Scaling compares *where* two patches attend, not how much: the total of a row grows
    with the number of patches before the query along the routes, and would otherwise
    order the distances by position along the scan. A row of zeros stays zero.

    Parameters
    ----------
    attention : r(L, L)

    Returns
    -------
    f64(L, L), symmetric, zero diagonal.
    """
    magnitude = np.abs(np.asarray(attention, dtype=np.float64))
    if magnitude.ndim != 2 or magnitude.shape[0] != magnitude.shape[1]:
        raise ValueError(f"attention must be (L, L), got shape {magnitude.shape}")
    total = magnitude.sum(1, keepdims=True)
    patterns = magnitude / np.where(total > 0, total, 1.0)
    squared = (patterns**2).sum(1)
    distances = squared[:, None] + squared[None, :] - 2 * patterns @ patterns.T
    distances = np.sqrt(np.clip(distances, 0, None))
    np.fill_diagonal(distances, 0)
    return distances


def neighbour_purity(distances: np.ndarray, height: int, width: int) -> dict[str, float]:
    """How strongly attention patterns are organised by grid row and by grid column (the
    paper's Mode 2 clusters of same-size and same-colour points).

    For each patch, take its k nearest other patches in attention-pattern space; row purity
    is the fraction of them on the patch's grid row, with k = W - 1 (the number of other
    patches on a row, so a block whose patterns cluster exactly by row scores 1); column
    purity likewise with k = H - 1. Averaged over patches. Neighbours are those of the
    k-th smallest distance; ties at that distance go to the lower patch index.

    Parameters
    ----------
    distances : r(L, L)
        :func:`pattern_distances` of one block, L = height * width.

    Returns
    -------
    dict with ``row``, ``column`` (purities; NaN on a grid of one column or one row) and
    ``row_chance`` = (W-1)/(L-1), ``column_chance`` = (H-1)/(L-1), the expected purities
    of patterns with no spatial organisation.
    """
    L = height * width
    if np.shape(distances) != (L, L):
        raise ValueError(
            f"distances of shape {np.shape(distances)} do not fit a {height}x{width} grid "
            f"(expected ({L}, {L}))"
        )
    others = np.array(distances, dtype=np.float64)
    np.fill_diagonal(others, np.inf)
    rows, cols = np.divmod(np.arange(L), width)

    def purity(labels: np.ndarray, k: int) -> float:
        if k < 1:
            return float("nan")
        # The k nearest: all below the k-th smallest distance, then as many of those at it
        # as are missing, lowest index first (a partition, not a sort: L² log L is slow).
        kth = np.partition(others, k - 1, axis=1)[:, k - 1 : k]
        below, at = others < kth, others == kth
        missing = k - below.sum(1, keepdims=True)
        nearest = below | (at & (np.cumsum(at, axis=1) <= missing))
        return float((nearest & (labels[:, None] == labels[None, :])).sum() / (L * k))

    chance = 1 / (L - 1) if L > 1 else float("nan")
    return {
        "row": purity(rows, width - 1),
        "column": purity(cols, height - 1),
        "row_chance": (width - 1) * chance,
        "column_chance": (height - 1) * chance,
    }


def grid_distance(height: int, width: int, metric: str = "chebyshev") -> np.ndarray:
    """Distances between the patches of a ``height`` x ``width`` grid, in patches.

    ``chebyshev`` = max(|Δrow|, |Δcol|), integer: distance d is the ring of 8d patches
    around a patch, the bins of :func:`locality_profile`. ``euclidean`` = the straight line.

    Returns
    -------
    int64(L, L) for chebyshev, f64(L, L) for euclidean
    """
    rows, cols = np.divmod(np.arange(height * width), width)
    d_row = np.abs(rows[:, None] - rows[None, :])
    d_col = np.abs(cols[:, None] - cols[None, :])
    if metric == "chebyshev":
        return np.maximum(d_row, d_col)
    if metric == "euclidean":
        return np.hypot(d_row, d_col)
    raise ValueError(f"metric must be 'chebyshev' or 'euclidean', got {metric!r}")


def sequence_distance(routes: np.ndarray) -> np.ndarray:
    """How far apart two patches are in the scanned sequence: min over routes r of
    |step_r(i) - step_r(j)|, the fewest steps one scan takes from one patch to the other.

    Parameters
    ----------
    routes : int(K, L)
        Row r lists the row-major patch visited at each step of route r.

    Returns
    -------
    int64(L, L)
    """
    routes = np.atleast_2d(np.asarray(routes))
    L = routes.shape[1]
    distance = np.full((L, L), L, dtype=np.int64)
    for route in routes:
        step = np.empty(L, dtype=np.int64)
        step[route] = np.arange(L)
        np.minimum(distance, np.abs(step[:, None] - step[None, :]), out=distance)
    return distance


def pair_ranks(distance: np.ndarray) -> np.ndarray:
    """Ranks of a symmetric distance over the pairs i < j, ties given their mean rank: what
    :func:`distance_correlation` correlates. Ranking is its costly part (L²/2 values), so a
    matrix met several times is ranked once.

    Parameters
    ----------
    distance : r(L, L)

    Returns
    -------
    f64(L (L - 1) / 2,)
    """
    from scipy.stats import rankdata  # a slow import, needed only here

    return rankdata(np.asarray(distance)[np.triu_indices(len(distance), 1)])


def distance_correlation(pattern_ranks: np.ndarray, patch_ranks: np.ndarray) -> float:
    """Spearman rank correlation, over all pairs of patches, between the distance of their
    attention patterns and their distance on the grid or in the sequence: 1 when patches
    closer together always attend more alike (Finding 3, and the paper's conclusion (3)),
    about 0 when position says nothing about the pattern. Computed as the Pearson
    correlation of the ranks, which is Spearman's definition (``scipy.stats.spearmanr``
    gives the same; the test compares them).

    Parameters
    ----------
    pattern_ranks : f64(P,)
        :func:`pair_ranks` of :func:`pattern_distances`.
    patch_ranks : f64(P,)
        :func:`pair_ranks` of :func:`grid_distance` or :func:`sequence_distance`.

    Returns
    -------
    float, NaN when either distance is the same for every pair (nothing to rank).
    """
    if len(pattern_ranks) < 2 or np.ptp(pattern_ranks) == 0 or np.ptp(patch_ranks) == 0:
        return float("nan")
    return float(np.corrcoef(pattern_ranks, patch_ranks)[0, 1])


def preceding_mask(routes: np.ndarray, window: int) -> np.ndarray:
    """Which patches precede which along an order's routes.

    Parameters
    ----------
    routes : int(K, L)
    window : int
        How many steps back a route looks.

    Returns
    -------
    bool(L, L): ``mask[i, j]`` when j is one of the ``window`` patches that some route
    visits just before i (the union over routes; never i itself).
    """
    routes = np.atleast_2d(np.asarray(routes))
    L = routes.shape[1]
    mask = np.zeros((L, L), dtype=bool)
    for route in routes:
        for back in range(1, min(window, L - 1) + 1):
            mask[route[back:], route[:-back]] = True
    return mask


def order_share(attention: np.ndarray, mask: np.ndarray) -> float:
    """Share of each query's attention to other patches that falls on the patches ``mask``
    marks (its preceding patches along an order's routes), averaged over queries.

    The patch itself is left out of both sums: its own entry is the largest single one and
    is the same whatever order defines "preceding", so keeping it would only scale every
    order's share down together. Queries with no attention to other patches are skipped.

    Parameters
    ----------
    attention : r(L, L)
    mask : bool(L, L)
        :func:`preceding_mask`.

    Returns
    -------
    float in [0, 1]; NaN when no query attends to another patch.
    """
    magnitude = np.abs(np.asarray(attention, dtype=np.float64))
    if magnitude.shape != np.shape(mask):
        raise ValueError(f"attention {magnitude.shape} and mask {np.shape(mask)} differ in shape")
    magnitude = magnitude.copy()
    np.fill_diagonal(magnitude, 0)
    total = magnitude.sum(1)
    attending = total > 0
    if not attending.any():
        return float("nan")
    on_mask = (magnitude * mask).sum(1)
    return float((on_mask[attending] / total[attending]).mean())


def order_chance(mask: np.ndarray) -> float:
    """The share :func:`order_share` expects when attention ignores the order: the mean
    fraction of a query's other patches that ``mask`` marks, mean_i |N(i)| / (L - 1).

    It is also the exact expectation of the share under :func:`relabelled_routes`: for a
    query i, σ maps the preceding patches of σ⁻¹(i), a uniformly random patch, onto a
    uniformly random set of as many other patches. Orders differ in neighbourhood size
    (``bidirectional`` has two routes, ``cross`` four), so shares of different orders are
    compared as multiples of their chance level.
    """
    L = len(mask)
    return float(np.asarray(mask).sum() / (L * (L - 1))) if L > 1 else float("nan")


def relabelled_routes(routes: np.ndarray, seed: int) -> np.ndarray:
    """The routes of a random order with the structure of ``routes``: each patch renamed by
    one uniformly random permutation σ, route r becoming σ(r). Every patch then has as many
    preceding patches as under ``routes``, but they lie anywhere on the grid; this is the
    chance level of :func:`order_share` for that order.

    Returns
    -------
    int64(K, L)
    """
    routes = np.atleast_2d(np.asarray(routes))
    relabel = np.random.default_rng(seed).permutation(routes.shape[1])
    return relabel[routes]


def locality_profile(attention: np.ndarray, distance: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean attention magnitude as a function of the distance between query and key.

    Parameters
    ----------
    attention : r(L, L)
    distance : int(L, L)
        Non-negative integer distances: :func:`grid_distance` (chebyshev) or
        :func:`sequence_distance`.

    Returns
    -------
    profile : f64(D,)
        Mean |α[i, j]| over the pairs at distance d = 0 .. D - 1 (D = the largest distance
        + 1); NaN for a distance no pair has. A mean, not a sum, so that distances with
        more pairs (larger rings) do not weigh more.
    pairs : int64(D,)
        How many (query, key) pairs lie at each distance.
    """
    magnitude = np.abs(np.asarray(attention, dtype=np.float64))
    distance = np.asarray(distance)
    if magnitude.shape != distance.shape:
        raise ValueError(
            f"attention {magnitude.shape} and distance {distance.shape} differ in shape"
        )
    pairs = np.bincount(distance.ravel())
    sums = np.bincount(distance.ravel(), weights=magnitude.ravel(), minlength=len(pairs))
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = np.where(pairs > 0, sums / np.maximum(pairs, 1), np.nan)
    return profile, pairs.astype(np.int64)


def block_separation(points: np.ndarray) -> float:
    """Silhouette score of block labels over a stage's inter-block embedding (Finding 1:
    blocks of one stage attend differently): near 1 when every block is its own tight
    cluster, near 0 when the blocks' points mix, negative when they interleave.

    Measured in the stored 2-D embedding (what the paper's Mode 1 shows): t-SNE and UMAP
    tighten clusters, so their scores read higher than PCA's for the same matrices.

    Parameters
    ----------
    points : r(image, block, d)
        ``embedding_inter`` of one method.

    Returns
    -------
    float in [-1, 1]; NaN with fewer than 2 blocks or 2 images (no silhouette exists).
    """
    from sklearn.metrics import silhouette_score

    points = np.asarray(points, dtype=np.float64)
    n_images, n_blocks = points.shape[:2]
    if n_blocks < 2 or n_images < 2:
        return float("nan")
    labels = np.tile(np.arange(n_blocks), n_images)
    return float(silhouette_score(points.reshape(n_images * n_blocks, -1), labels))


# -------------------------------------------------------------------------------------------
# One stage, all metrics.
# -------------------------------------------------------------------------------------------


def stage_findings(
    attention_mean: np.ndarray,
    height: int,
    width: int,
    *,
    embeddings: Mapping[str, np.ndarray] | None = None,
    routes: np.ndarray | None = None,
    compared: Mapping[str, np.ndarray] | None = None,
    window: int | None = None,
    seeds: int = SEEDS,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Every metric of one stage, as stored in ``findings/stage{s}`` (module docstring).

    Parameters
    ----------
    attention_mean : r(block, L, L)
    embeddings : {method: r(image, block, 2)}
        The stage's ``embedding_inter``; none gives no ``separation``.
    routes : int(K, L) or None
        The run's own order on this grid; None (a pooled stage) gives no order-dependent
        variables.
    compared : {order: int(K, L)}
        Orders whose preceding patches :func:`order_share` is measured against; ``random``
        (the run's routes relabelled, mean over ``seeds``) is added.
    window : int
        Steps back along a route that count as preceding; default W, one grid row's worth
        (under row-major, the rest of the query's row to the left and the end of the row
        above).
    attrs : stored with the dataset (e.g. stage, pool)
    """
    magnitude = np.abs(np.asarray(attention_mean, dtype=np.float64))
    n_blocks = len(magnitude)
    window = width if window is None else window
    blocks = range(n_blocks)
    shares = [self_row_column_share(magnitude[b], height, width) for b in blocks]
    distances = [pattern_distances(magnitude[b]) for b in blocks]
    purities = [neighbour_purity(distances[b], height, width) for b in blocks]
    pattern_ranks = [pair_ranks(distances[b]) for b in blocks]
    del distances  # L² floats per block
    grid_ranks = pair_ranks(grid_distance(height, width, "euclidean"))
    chebyshev = grid_distance(height, width, "chebyshev")
    locality = [locality_profile(magnitude[b], chebyshev) for b in blocks]
    data: dict[str, tuple] = {
        "self_share": ("block", [s["self"] for s in shares]),
        "row_share": ("block", [s["row"] for s in shares]),
        "column_share": ("block", [s["column"] for s in shares]),
        "row_purity": ("block", [p["row"] for p in purities]),
        "column_purity": ("block", [p["column"] for p in purities]),
        "spatial_correlation": (
            "block",
            [distance_correlation(pattern_ranks[b], grid_ranks) for b in blocks],
        ),
        "locality": (("block", "distance"), np.stack([profile for profile, _ in locality])),
        "pairs": ("distance", locality[0][1]),
    }
    coords: dict[str, Any] = {
        "block": np.arange(n_blocks),
        "distance": np.arange(len(locality[0][1])),
    }
    if embeddings:
        methods = list(embeddings)
        data["separation"] = ("method", [block_separation(embeddings[m]) for m in methods])
        coords["method"] = np.array(methods, dtype=STRING)
    if routes is not None:
        routes = np.atleast_2d(np.asarray(routes))
        sequence = sequence_distance(routes)
        sequence_ranks = pair_ranks(sequence)
        data["sequence_correlation"] = (
            "block",
            [distance_correlation(pattern_ranks[b], sequence_ranks) for b in blocks],
        )
        masks = {name: [preceding_mask(r, window)] for name, r in (compared or {}).items()}
        masks[RANDOM] = [
            preceding_mask(relabelled_routes(routes, seed), window) for seed in range(seeds)
        ]
        data["order_share"] = (
            ("block", "reference"),
            [
                [np.mean([order_share(magnitude[b], m) for m in masks[name]]) for name in masks]
                for b in blocks
            ],
        )
        data["order_chance"] = ("reference", [order_chance(masks[name][0]) for name in masks])
        coords["reference"] = np.array(list(masks), dtype=STRING)
        profiles = [locality_profile(magnitude[b], sequence) for b in blocks]
        data["sequence_locality"] = (
            ("block", "sequence_distance"),
            np.stack([profile for profile, _ in profiles]),
        )
        data["sequence_pairs"] = ("sequence_distance", profiles[0][1])
        coords["sequence_distance"] = np.arange(len(profiles[0][1]))
    return xr.Dataset(
        {name: (dims, np.asarray(values)) for name, (dims, values) in data.items()},
        coords=coords,
        attrs={
            **(attrs or {}),
            "grid_height": height,
            "grid_width": width,
            "window": window,
            "seeds": seeds,
            "row_neighbours": width - 1,
            "column_neighbours": height - 1,
            "row_chance": purities[0]["row_chance"],
            "column_chance": purities[0]["column_chance"],
            "notes": list((attrs or {}).get("notes", [])),
        },
    )


# -------------------------------------------------------------------------------------------
# Stored findings.
# -------------------------------------------------------------------------------------------


def write_findings(
    path: str | Path, stages: Mapping[int, xr.Dataset], attrs: Mapping[str, Any]
) -> None:
    """Replace the ``findings`` group of the run at ``path`` with ``stages``.

    The group's attrs (``findings_version`` among them) are written last, so a write that
    is killed midway leaves findings that read as absent, never half of them.
    """
    root = zarr.open_group(path, mode="r+")
    if GROUP in root:
        del root[GROUP]
    root.create_group(GROUP)
    for stage, dataset in stages.items():
        dataset.to_zarr(path, group=f"{GROUP}/stage{stage}", mode="w", consolidated=False)
    group = zarr.open_group(path, path=GROUP, mode="r+")
    group.attrs.update(
        # As JSON reads them back (tuples become lists), like the run's own attrs.
        json.loads(
            json.dumps(
                {
                    **attrs,
                    "findings_version": FINDINGS_VERSION,
                    "mambapanel_version": __version__,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
        )
    )


@dataclass(frozen=True)
class Findings:
    """The stored findings of one run: ``stages`` {stage: Dataset} (module docstring), the
    ``findings`` group's ``attrs``, and the run's ``name``, ``model`` and ``order``."""

    name: str
    model: str
    order: str
    attrs: dict[str, Any]
    stages: dict[int, xr.Dataset]


def read_findings(tree: xr.DataTree, name: str) -> Findings | None:
    """The findings stored in an opened run (:func:`mambapanel.store.open_run`), loaded;
    None when the run has none (``python -m compute findings RUN`` adds them).

    Raises
    ------
    ValueError
        Findings of another format version than this mambapanel reads.
    """
    if GROUP not in tree.children:
        return None
    node = tree[GROUP]
    version = node.attrs.get("findings_version")
    if version is None:  # a write that did not finish
        return None
    if version != FINDINGS_VERSION:
        raise ValueError(
            f"{name}: findings format version {version} (written by mambapanel "
            f"{node.attrs.get('mambapanel_version')}); this mambapanel reads version "
            f"{FINDINGS_VERSION}: run `python -m compute findings` on it again"
        )
    stages = {}
    for child in node.children.values():
        dataset = child.to_dataset(inherit=False).load()
        stages[int(dataset.attrs["stage"])] = dataset
    return Findings(
        name=name,
        model=str(tree.attrs.get("model")),
        order=str(tree.attrs.get("order")),
        attrs=dict(node.attrs),
        stages=dict(sorted(stages.items())),
    )


def labels(dataset: xr.Dataset, coordinate: str) -> list[str]:
    """A string coordinate (``method``, ``reference``) as a list of str; [] when absent."""
    if coordinate not in dataset.coords:
        return []
    return [str(value) for value in dataset[coordinate].values]


# -------------------------------------------------------------------------------------------
# Summaries: the tables of the report (compute/findings.py) and of the dashboard.
# -------------------------------------------------------------------------------------------

#: Per-block columns: {column: what it is}, the legend of the report and the dashboard.
BLOCK_COLUMNS = {
    "self": "share of a query's |α| on itself",
    "row": "share on the other patches of its grid row",
    "column": "share on the other patches of its grid column",
    "row purity": "of each patch's W-1 nearest patches by attention pattern (rows of |α| "
    "scaled to sum 1), the fraction on its grid row",
    "column purity": "the same with H-1 neighbours and the grid column",
    "ρ grid": "Spearman correlation over patch pairs of pattern distance with grid "
    "distance: 1 = nearer patches always attend more alike",
    "ρ sequence": "the same with sequence distance (fewest steps along one of the routes)",
    "preceding, own": "share of a query's |α| on other patches that falls on the `window` "
    "patches preceding it along the run's own routes",
    "preceding, random": "the same along the run's routes on randomly relabelled patches",
    "near ÷ mean, grid": "mean |α| at Chebyshev distance 1 over mean |α| at distance ≥ 1",
    "near ÷ mean, sequence": "the same at sequence distance 1",
}
CHANCE = "chance"
LEGEND = (
    "Every number uses |α| of a block's image-mean attention (`attention_mean`). Columns "
    "of the per-block tables:\n\n"
    + "\n".join(f"- **{name}**: {meaning}" for name, meaning in BLOCK_COLUMNS.items())
    + "\n\nRows *chance*: the value of attention with no structure. *window*: how many "
    "patches back along a route count as preceding."
)


def relative_profile(profile: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A :func:`locality_profile` for plotting: distances 1 .. D - 1 that some pair has, and
    the mean |α| there ÷ the mean |α| over all pairs at distance ≥ 1 (1 = the average),
    so that blocks of different strength share one axis. Distance 0, the patch itself, is
    left out: it would flatten the rest (the ``self`` share reports it).

    Returns
    -------
    (int64(n,) distances, f64(n,) relative attention)
    """
    distance = np.arange(1, len(profile))
    values, counts = np.asarray(profile[1:], float), np.asarray(pairs[1:])
    present = counts > 0
    total = counts[present].sum()
    mean = (values[present] * counts[present]).sum() / total if total else 0.0
    relative = values[present] / mean if mean > 0 else np.full(present.sum(), np.nan)
    return distance[present], relative


def near_ratio(profile: np.ndarray, pairs: np.ndarray) -> float:
    """Mean |α| at distance 1 ÷ mean |α| over all pairs at distance ≥ 1 (the first value of
    :func:`relative_profile`): how much more a patch attends to its nearest patches than to
    the others (1 = no preference); NaN when no pair is at distance 1."""
    distance, relative = relative_profile(profile, pairs)
    return float(relative[0]) if len(distance) and distance[0] == 1 else float("nan")


def _reference_share(dataset: xr.Dataset, reference: str) -> np.ndarray:
    references = labels(dataset, "reference")
    if reference not in references:
        return np.full(dataset.sizes["block"], np.nan)
    return dataset["order_share"].isel(reference=references.index(reference)).values


def block_summary(dataset: xr.Dataset, order: str) -> pd.DataFrame:
    """One stage's per-block metrics (:data:`BLOCK_COLUMNS`), one row per block, and a last
    row ``chance``: the value of attention with no structure (uniform for the shares, no
    organisation for purity and ρ, no locality for the ratios).

    Parameters
    ----------
    dataset : a stage of :class:`Findings`
    order : the run's own order
    """

    def column(name: str) -> np.ndarray:
        return dataset[name].values if name in dataset else np.full(dataset.sizes["block"], np.nan)

    def near(profile: str, pairs: str) -> np.ndarray:
        if profile not in dataset:
            return np.full(dataset.sizes["block"], np.nan)
        return np.array([near_ratio(p, dataset[pairs].values) for p in dataset[profile].values])

    height, width = dataset.attrs["grid_height"], dataset.attrs["grid_width"]
    L = height * width
    ordered = "order_share" in dataset
    references = labels(dataset, "reference")
    own_chance = (
        float(dataset["order_chance"].values[references.index(order)])
        if order in references
        else float("nan")
    )
    frame = pd.DataFrame(
        {
            "self": column("self_share"),
            "row": column("row_share"),
            "column": column("column_share"),
            "row purity": column("row_purity"),
            "column purity": column("column_purity"),
            "ρ grid": column("spatial_correlation"),
            "ρ sequence": column("sequence_correlation"),
            "preceding, own": _reference_share(dataset, order),
            "preceding, random": _reference_share(dataset, RANDOM),
            "near ÷ mean, grid": near("locality", "pairs"),
            "near ÷ mean, sequence": near("sequence_locality", "sequence_pairs"),
        },
        index=[str(block) for block in dataset["block"].values],
    )
    nan = float("nan")
    frame.loc[CHANCE] = [
        1 / L,
        (width - 1) / L,
        (height - 1) / L,
        dataset.attrs["row_chance"],
        dataset.attrs["column_chance"],
        0.0,
        0.0 if ordered else nan,
        own_chance,
        own_chance,
        1.0,
        1.0 if ordered else nan,
    ]
    frame.index.name = "block"
    return frame


def order_summary(dataset: xr.Dataset) -> pd.DataFrame:
    """``order_share`` of one stage: rows = blocks and ``chance`` (:func:`order_chance`),
    columns = the orders that define "preceding", ``random`` last."""
    references = labels(dataset, "reference")
    frame = pd.DataFrame(
        dataset["order_share"].values,
        index=[str(block) for block in dataset["block"].values],
        columns=references,
    )
    frame.loc[CHANCE] = dataset["order_chance"].values
    frame.index.name = "block"
    return frame


def separation_summary(findings: Findings) -> pd.DataFrame:
    """Silhouette of block labels: rows = stages, columns = stored methods (NaN where a
    stage lacks the method); empty when no stage has embeddings."""
    frame = pd.DataFrame(
        {
            stage: pd.Series(
                dataset["separation"].values if "separation" in dataset else [],
                index=labels(dataset, "method"),
                dtype=float,
            )
            for stage, dataset in findings.stages.items()
        }
    ).T
    frame.index.name = "stage"
    return frame


def stage_summary(findings: Findings) -> pd.DataFrame:
    """Early vs late: rows = block separation per method and every per-block metric
    averaged over the stage's blocks, columns = stages from first to last, and, with
    several stages, the change from the first to the last."""
    separation = separation_summary(findings)
    columns = {}
    for stage, dataset in findings.stages.items():
        means = block_summary(dataset, findings.order).drop(index=CHANCE)
        with warnings.catch_warnings():  # a metric that is NaN in every block stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            values = means.apply(lambda metric: np.nanmean(metric.to_numpy(float)))
        if not separation.empty:
            values = pd.concat([separation.loc[stage].rename(lambda m: f"separation, {m}"), values])
        columns[f"stage {stage}"] = values
    frame = pd.DataFrame(columns)
    if len(columns) > 1:
        first, last = frame.columns[0], frame.columns[-1]
        frame[f"{first} → {last}"] = frame[last] - frame[first]
    frame.index.name = "metric (mean over blocks)"
    return frame


def complementary(dataset: xr.Dataset) -> str:
    """Finding 2 in a line: the blocks most and least focused on the query itself, its row
    and its column ("" with fewer than two blocks)."""
    focus = (dataset["self_share"] + dataset["row_share"] + dataset["column_share"]).values
    if len(focus) < 2 or not np.isfinite(focus).all():
        return ""
    high, low = int(np.argmax(focus)), int(np.argmin(focus))
    return (
        f"Share on self + row + column: highest in block {high} ({focus[high]:.3f}), "
        f"lowest in block {low} ({focus[low]:.3f})."
    )


def order_matrix(runs: Sequence[Findings], stage: int) -> pd.DataFrame:
    """§5 across runs: rows = the runs that measured ``stage`` ("name (order)"), columns =
    the orders that define "preceding" (their union, ``random`` last), values =
    ``order_share`` ÷ ``order_chance`` averaged over blocks: how many times its chance
    level a block's attention puts on the preceding patches. The study predicts each run's
    largest value under the order it was trained with. NaN where not measured.

    Orders can nest: ``bidirectional``'s two routes are two of ``cross``'s four, so a cross
    model whose attention follows its row-major routes more than its column-major ones
    scores higher under ``bidirectional`` (same preceding patches on those routes, half the
    chance level) than under ``cross``.
    """
    measured = [f for f in runs if stage in f.stages and "order_share" in f.stages[stage]]
    columns = list(
        dict.fromkeys(
            r for f in measured for r in labels(f.stages[stage], "reference") if r != RANDOM
        )
    )
    frame = pd.DataFrame(
        np.nan,
        index=[f"{f.name} ({f.order})" for f in measured],
        columns=[*columns, RANDOM] if measured else [],
    )
    for findings, name in zip(measured, frame.index, strict=True):
        dataset = findings.stages[stage]
        lift = (dataset["order_share"] / dataset["order_chance"]).mean("block").values
        for reference, value in zip(labels(dataset, "reference"), lift, strict=True):
            frame.loc[name, reference] = value
    frame.index.name = "run (trained order)"
    return frame


def own_order_first(runs: Sequence[Findings], stage: int) -> tuple[int, int]:
    """(runs whose largest :func:`order_matrix` value is under their own order, runs)."""
    matrix = order_matrix(runs, stage).drop(columns=RANDOM, errors="ignore")
    measured = [f for f in runs if stage in f.stages and "order_share" in f.stages[stage]]
    first = sum(
        bool(row.notna().any()) and row.idxmax() == findings.order
        for findings, (_, row) in zip(measured, matrix.iterrows(), strict=True)
    )
    return first, len(measured)


def markdown_table(frame: pd.DataFrame, digits: int = 3, bold_max: bool = False) -> str:
    """``frame`` as a markdown table, numbers to ``digits`` places, NaN as "–"; with
    ``bold_max`` each row's largest value is bold."""

    def cell(value: object, bold: bool) -> str:
        if isinstance(value, float | np.floating):
            text = "–" if not np.isfinite(value) else f"{value:.{digits}f}"
        else:
            text = str(value)
        return f"**{text}**" if bold else text

    header = [frame.index.name or "", *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in frame.iterrows():
        values = row.to_numpy()
        numeric = np.array([v if isinstance(v, float) else np.nan for v in values], dtype=float)
        best = int(np.nanargmax(numeric)) if bold_max and np.isfinite(numeric).any() else -1
        cells = [cell(v, i == best) for i, v in enumerate(values)]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines)


def run_sections(
    findings: Findings, stages: Sequence[int] | None = None, level: int = 2
) -> list[str]:
    """One run's markdown sections: block separation, early vs late, then for each of
    ``stages`` (default all) the per-block table, the complementary blocks and the order
    table; headings start at ``level``."""
    h = "#" * level
    separation = separation_summary(findings)
    parts = [
        f"{h} {findings.name}: {findings.model}, order {findings.order}",
        f"{h}# Blocks of a stage differ (silhouette of block labels, inter-block embedding)",
        markdown_table(separation)
        if not separation.empty
        else "No embeddings stored: `python -m compute reduce RUN` adds them.",
        f"{h}# Early vs late",
        markdown_table(stage_summary(findings)),
    ]
    for stage in findings.stages if stages is None else stages:
        dataset = findings.stages.get(stage)
        if dataset is None:
            parts.append(f"No findings for stage {stage} in this run.")
            continue
        attrs = dataset.attrs
        pool = f", pooled {attrs['pool']}x{attrs['pool']}" if attrs["pool"] > 1 else ""
        parts += [
            f"{h}# Stage {stage}: grid {attrs['grid_height']}x{attrs['grid_width']}{pool}, "
            f"window {attrs['window']}",
            markdown_table(block_summary(dataset, findings.order)),
        ]
        if line := complementary(dataset):
            parts.append(line)
        if "order_share" in dataset:
            parts += [
                f"Share on the {attrs['window']} patches preceding each query, by the order "
                f"that defines them ({RANDOM}: the run's routes, patches relabelled, mean of "
                f"{attrs['seeds']} seeds):",
                markdown_table(order_summary(dataset)),
            ]
        parts += [f"Not computed: {note}." for note in attrs["notes"]]
    return parts


def order_section(runs: Sequence[Findings], stage: int, level: int = 3) -> list[str]:
    """The cross-run order matrix of ``stage`` in markdown ([] unless at least two runs of
    different orders measured it)."""
    matrix = order_matrix(runs, stage)
    measured = [f for f in runs if stage in f.stages and "order_share" in f.stages[stage]]
    if len({f.order for f in measured}) < 2:
        return []
    first, _ = own_order_first(runs, stage)
    return [
        f"{'#' * level} Stage {stage}",
        markdown_table(matrix, digits=2, bold_max=True),
        f"Own order largest in {first} of {len(measured)} runs.",
    ]


ORDER_INTRODUCTION = (
    'Attention on the patches preceding each query, by the order that defines "preceding", '
    "in multiples of its chance level (mean over blocks; each row's largest in bold). The "
    "study (§5) predicts the largest under the run's own order."
)
