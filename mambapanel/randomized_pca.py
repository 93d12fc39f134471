"""Randomized PCA (Halko, Martinsson & Tropp 2011, subspace iteration), out of core on dask
arrays: what :mod:`mambapanel.reduce` runs first for every embedding of wide features.
"""

from __future__ import annotations

from collections.abc import Iterator

import dask.array as da
import numpy as np

Features = np.ndarray | da.Array

# A sketch of n_components + 10 columns and four power iterations with QR, as sklearn's
# randomized PCA.
POWER_ITERATIONS = 4
OVERSAMPLES = 10
# Dask features are read a block of rows at a time: about 256 MiB of float32, and at least
# 128 rows, since each block adds a product the size of (n_features, sketch width) to the
# running sum of features.T @ basis (memory-bound: tall blocks make it rare).
_BLOCK_ELEMENTS = 2**26
_MIN_BLOCK_ROWS = 128
# Dask features up to this size (as float32) are loaded once for the PCA's 11 passes, since
# re-reading and decompressing them at every pass costs more; larger ones are re-read.
_IN_MEMORY_BYTES = 2**30


def pca(
    features: Features, n_components: int, *, seed: int = 0, on_workers: bool = False
) -> np.ndarray:
    """Randomized PCA scores, out of core for dask input.

    Every pass multiplies the features, centred one block of rows at a time, by a thin
    matrix. Passes: one for the column means, one for the sketch, two per power iteration,
    one for the final projection: 11 in all (3, and the result exact, when n_points or
    n_features is at most n_components + 10). Dask features larger than 1 GiB as float32
    are re-read at every pass, so memory holds one block of rows (at least 128) and two
    (n_features, n_components + 10) matrices, whatever n_points; smaller ones are loaded
    once. Each component's sign makes its largest score positive.

    With ``on_workers``, dask features stay where the active Dask scheduler computes them
    (a distributed client's workers): every pass is a dask expression whose result alone,
    (n_points, n_components + 10) or (n_features, n_components + 10), comes to this process;
    features up to 1 GiB are kept in the workers' memory across the passes.

    Parameters
    ----------
    features : r(n_points, n_features), numpy or dask
    n_components : int
        At most min(n_points, n_features).
    on_workers : bool
        For dask features: the passes on the workers, as above.

    Returns
    -------
    f32 or f64 (n_points, n_components)
        float64 for float64 input, else float32 (the stored attention is float16 or float32).

    Raises
    ------
    ValueError
        ``n_components`` out of range, or features that hold NaN or infinite values.
    """
    n_points, n_features = feature_shape(features)
    if not 1 <= n_components <= min(n_points, n_features):
        raise ValueError(
            f"n_components must be in 1 .. {min(n_points, n_features)} for features of shape "
            f"({n_points}, {n_features}), got {n_components}"
        )
    dtype = np.result_type(features.dtype, np.float32)
    small = n_points * n_features * 4 <= _IN_MEMORY_BYTES
    if isinstance(features, da.Array) and on_workers:
        rows = _WorkerRows(features, dtype, persist=small)
    else:
        if isinstance(features, da.Array) and small:
            features = features.compute()
        if not isinstance(features, da.Array):
            features = np.asarray(features, dtype=dtype)
        rows = _RowBlocks(features, dtype)
    total = rows.column_sums()
    # Any NaN or infinity reaches the mean, so this pass checks the features for free.
    if not np.isfinite(total).all():
        raise ValueError(
            f"features of shape {features.shape} hold NaN or infinite values (a matrix that "
            "was never written?)"
        )
    rows.mean = (total / n_points).astype(dtype)

    width = min(n_components + OVERSAMPLES, n_points, n_features)
    omega = np.random.default_rng(seed).standard_normal((n_features, width), dtype=dtype)
    sketch = rows.times(omega)
    del omega
    # A sketch as wide as the smaller side already spans the data: iterating changes nothing.
    exact = width == min(n_points, n_features)
    for _ in range(0 if exact else POWER_ITERATIONS):
        sketch = rows.times(rows.transpose_times(_orthonormal(sketch)))
    basis = _orthonormal(sketch)
    # Rayleigh-Ritz: centred ~ basis @ (basis.T @ centred), whose left singular vectors and
    # values follow from the small Gram matrix of basis.T @ centred.
    eigenvalues, eigenvectors = np.linalg.eigh(_gram(rows.transpose_times(basis)))
    top = np.argsort(eigenvalues)[::-1][:n_components]
    # Centred data has rank < n_points: clip the rounding below zero of null directions.
    singular_values = np.sqrt(np.clip(eigenvalues[top], 0, None))
    scores = (basis @ eigenvectors[:, top] * singular_values).astype(dtype)
    largest = scores[np.argmax(np.abs(scores), axis=0), np.arange(n_components)]
    return scores * np.where(largest < 0, -1, 1).astype(dtype)


class _RowBlocks:
    """Features as blocks of rows, cast to ``dtype`` and, once ``mean`` is set, centred.

    Numpy features are one block. Dask features are read one block at a time, anew at each
    pass, so that they never sit in memory whole.
    """

    def __init__(self, features: Features, dtype: np.dtype) -> None:
        self.features = features
        self.dtype = dtype
        self.mean: np.ndarray | None = None
        n_points, n_features = features.shape
        if isinstance(features, da.Array):
            self.rows = min(n_points, max(_MIN_BLOCK_ROWS, _BLOCK_ELEMENTS // n_features))
        else:
            self.rows = n_points

    def column_sums(self) -> np.ndarray:
        """f64(n_features,): the sum of every column (one pass, before ``mean`` is set)."""
        total = np.zeros(self.features.shape[1])
        for _, block in self:
            total += block.sum(axis=0, dtype=np.float64)
        return total

    def __iter__(self) -> Iterator[tuple[slice, np.ndarray]]:
        """(rows, r(rows, n_features)) for each block in turn."""
        for start in range(0, self.features.shape[0], self.rows):
            span = slice(start, start + self.rows)
            block = self.features[span]
            if isinstance(block, da.Array):
                block = block.compute()
            block = np.asarray(block, dtype=self.dtype)
            yield span, block if self.mean is None else block - self.mean

    def times(self, matrix: np.ndarray) -> np.ndarray:
        """(n_points, k) = (centred) features @ matrix, for r(n_features, k): one pass."""
        product = np.empty((self.features.shape[0], matrix.shape[1]), dtype=self.dtype)
        for span, block in self:
            product[span] = block @ matrix
        return product

    def transpose_times(self, matrix: np.ndarray) -> np.ndarray:
        """(n_features, k) = (centred) features.T @ matrix, for r(n_points, k): one pass."""
        product = np.zeros((self.features.shape[1], matrix.shape[1]), dtype=self.dtype)
        matrix = matrix.astype(self.dtype)
        for span, block in self:
            product += block.T @ matrix[span]
        return product


class _WorkerRows:
    """:class:`_RowBlocks`'s passes as dask expressions over blocks of rows, computed where
    the active scheduler computes (a distributed client's workers); only their thin results
    come back. Centred block by block as :class:`_RowBlocks` centres them."""

    def __init__(self, features: da.Array, dtype: np.dtype, *, persist: bool) -> None:
        n_points, n_features = features.shape
        rows = min(n_points, max(_MIN_BLOCK_ROWS, _BLOCK_ELEMENTS // n_features))
        self.features = features.rechunk({0: rows, 1: -1}).astype(dtype)
        if persist:  # read from the store once, not at each of the 11 passes
            self.features = self.features.persist()
        self.dtype = dtype
        self.mean: np.ndarray | None = None

    def column_sums(self) -> np.ndarray:
        return self.features.sum(axis=0, dtype=np.float64).compute()

    def _centred(self) -> da.Array:
        return self.features - self.mean

    def times(self, matrix: np.ndarray) -> np.ndarray:
        """(n_points, k) = centred features @ matrix."""
        return (self._centred() @ matrix.astype(self.dtype)).compute()

    def transpose_times(self, matrix: np.ndarray) -> np.ndarray:
        """(n_features, k) = centred features.T @ matrix, summed over blocks on the workers."""
        right = da.from_array(
            matrix.astype(self.dtype), chunks=(self.features.chunks[0], matrix.shape[1])
        )
        return (self._centred().T @ right).compute()


def _orthonormal(sketch: np.ndarray) -> np.ndarray:
    """f64(n, k): an orthonormal basis of the columns of ``sketch`` r(n, k)."""
    return np.linalg.qr(sketch.astype(np.float64))[0]


def _gram(matrix: np.ndarray) -> np.ndarray:
    """f64(k, k) = matrix.T @ matrix for r(n, k), summed in float64 (the Gram matrix squares
    the singular values) 8 MiB of rows at a time, never copying ``matrix`` whole."""
    gram = np.zeros((matrix.shape[1], matrix.shape[1]))
    step = max(1, 2**20 // matrix.shape[1])
    for start in range(0, len(matrix), step):
        part = matrix[start : start + step].astype(np.float64)
        gram += part.T @ part
    return gram


def feature_shape(features: Features) -> tuple[int, int]:
    """(n_points, n_features) of 2-D features."""
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (n_points, n_features), got shape {features.shape}")
    return features.shape
