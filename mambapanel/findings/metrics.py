"""The metrics of the study's findings (§4-§5 of arXiv 2502.20764) on one block's matrix.

Every metric works on magnitudes |α| of a block's image-mean matrix ``attention_mean``
(rows = query patch, row-major patches ``i = row * W + col``), since hidden attention can
be negative and a signed sum would let opposite entries cancel. Routes are plain integer
arrays (K, L) as :func:`mambapanel.orders.routes` gives them (``.numpy()``): nothing here
imports torch. The known-answer tests (tests/test_findings.py) target these functions.
"""

from __future__ import annotations

import numpy as np


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


def curve_area(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Area under perturbation curves (..., fraction) over the removed fractions, divided by
    their span: the mean class probability over the test (NaN where a curve is)."""
    fractions = np.asarray(fractions, dtype=np.float64)
    return np.trapezoid(np.asarray(curves, np.float64), fractions, axis=-1) / (
        fractions[-1] - fractions[0]
    )


def faithfulness(curves: np.ndarray, fractions: np.ndarray) -> dict[str, np.ndarray]:
    """The perturbation test over a run's tested images (Chefer et al. 2021): per map,
    the mean area with the most relevant patches removed first (``most``; lower: the map
    finds what the decision rests on), with the least relevant first (``least``; higher is
    better), their standard errors, and how many images were tested.

    Parameters
    ----------
    curves : f(image, test, removal, fraction), NaN for untested images; removal 0 = most
        relevant first, 1 = least relevant first

    Returns
    -------
    dict of f64(test,) arrays: most, least, most_error, least_error, images
    """
    areas = curve_area(curves, fractions)  # (image, test, removal)
    tested = np.isfinite(areas).all(axis=(1, 2))
    areas = areas[tested]
    n = int(tested.sum())
    error = areas.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(areas.shape[1:], np.nan)
    mean = areas.mean(0) if n else np.full(curves.shape[1:3], np.nan)
    return {
        "most": mean[:, 0],
        "least": mean[:, 1],
        "most_error": error[:, 0],
        "least_error": error[:, 1],
        "images": np.full(curves.shape[1], n),
    }
