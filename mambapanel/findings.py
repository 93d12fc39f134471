"""Numbers for the study's findings, computed from attention matrices (numpy or torch)."""

from __future__ import annotations

import numpy as np


def self_row_column_share(attention: np.ndarray, height: int, width: int) -> dict[str, float]:
    """Share of each query's attention magnitude on itself, its row and its column.

    Parameters
    ----------
    attention : r(L, L) or r(B, L, L)
        Query rows, row-major patches, L = height * width. Magnitudes |α| are used.

    Returns
    -------
    dict with ``self``, ``row`` and ``column`` (the other patches of the query's row or
    column; the patch itself counts only in ``self``), each averaged over queries and images.
    """
    magnitude = np.abs(np.asarray(attention, dtype=np.float64)).reshape(
        -1, *np.shape(attention)[-2:]
    )
    L = height * width
    if magnitude.shape[-2:] != (L, L):
        raise ValueError(
            f"attention of shape {np.shape(attention)} does not fit a {height}x{width} grid "
            f"(expected (..., {L}, {L}))"
        )
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
