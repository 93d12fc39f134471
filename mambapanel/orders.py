"""Patch orders ("routes") for vision Mamba scans.

A route lists, step by step, the row-major patch index ``row * W + col`` visited by one scan.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

__all__ = ["available", "get", "inverse", "register", "routes", "single_route"]

#: What a registered function may return: a 1-D path of length L or a (K, L) tensor.
OrderOutput = torch.Tensor | Sequence[int]
OrderFn = Callable[[int, int], OrderOutput]


# ---------------------------------------------------------------------------------------------
# Base 1-D paths. Each takes (H, W) and returns a permutation of range(H * W) (row-major indices).
# ---------------------------------------------------------------------------------------------


def _snake(height: int, width: int) -> torch.Tensor:
    """Boustrophedon: even rows left to right, odd rows right to left."""
    grid = torch.arange(height * width).view(height, width).clone()
    grid[1::2] = grid[1::2].flip(1)
    return grid.flatten()


def _diagonal(height: int, width: int) -> torch.Tensor:
    """Anti-diagonals r + c = 0, 1, ... in turn, each walked by increasing row (top-right first)."""
    rows, cols = _coords(height, width)
    # A stable sort of row-major indices keeps increasing row order inside each anti-diagonal.
    return torch.argsort(rows + cols, stable=True)


def _morton(height: int, width: int) -> torch.Tensor:
    """Z-order: sort by interleaved bits, the row bit above the column bit at every level."""
    rows, cols = _coords(height, width)
    # Keys of the enclosing power-of-two grid; cells outside the grid simply never appear,
    # so sorting the in-grid keys is that grid's Morton order restricted to H x W.
    return torch.argsort(_interleave(rows, cols))


def _spiral(height: int, width: int) -> torch.Tensor:
    """Clockwise inward spiral from the top-left corner (right, down, left, up, repeat)."""
    top, bottom, left, right = 0, height - 1, 0, width - 1
    path: list[int] = []
    while top <= bottom and left <= right:
        path += [top * width + c for c in range(left, right + 1)]
        path += [r * width + right for r in range(top + 1, bottom + 1)]
        if top < bottom:  # a single remaining row must not be walked back
            path += [bottom * width + c for c in range(right - 1, left - 1, -1)]
        if left < right:  # likewise for a single remaining column
            path += [r * width + left for r in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return torch.tensor(path, dtype=torch.long)


def _hilbert(height: int, width: int) -> torch.Tensor:
    """Generalised Hilbert path from the top-left corner to the far end of the longer side.

    Every step is to a 4-neighbour, except that exactly one diagonal (king) step occurs when the
    longer side is odd and the shorter side is even and >= 4 (e.g. 4x5, 6x7): a corner-to-corner
    path is then impossible by grid parity. Checked for all sizes up to 40x40.
    """
    # x is the column, y the row; the curve runs along the longer side, as in gilbert2d.
    if width >= height:
        cells = _gilbert(0, 0, width, 0, 0, height)
    else:
        cells = _gilbert(0, 0, 0, height, width, 0)
    return torch.tensor([y * width + x for x, y in cells], dtype=torch.long)


def _random(height: int, width: int) -> torch.Tensor:
    """Seed-0 random permutation: a locality-free control, fixed for each (H, W)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randperm(height * width, generator=generator)


def _coords(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every patch, each of shape (L,), in row-major order."""
    index = torch.arange(height * width)
    return index // width, index % width


def _interleave(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Morton key: bit b of ``col`` goes to bit 2b, bit b of ``row`` to bit 2b + 1."""
    key = torch.zeros_like(rows)
    nbits = max(int(rows.max()), int(cols.max()), 1).bit_length()
    for b in range(nbits):
        key |= ((cols >> b) & 1) << (2 * b)
        key |= ((rows >> b) & 1) << (2 * b + 1)
    return key


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> list[tuple[int, int]]:
    """Generalised Hilbert curve (Cerveny's "gilbert") over the rectangle spanned by a and b.

    Starts at (x, y), runs along the major axis vector a = (ax, ay) and ends at the far end of
    a; b = (bx, by) is the minor axis. Returns the visited (x, y) cells in order.
    """
    w, h = abs(ax + ay), abs(bx + by)
    dax, day, dbx, dby = _sign(ax), _sign(ay), _sign(bx), _sign(by)
    if h == 1:
        return [(x + i * dax, y + i * day) for i in range(w)]
    if w == 1:
        return [(x + i * dbx, y + i * dby) for i in range(h)]

    ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
    w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
    if 2 * w > 3 * h:
        # Long rectangle: split along a only. An even first half keeps both halves able to end
        # at the far corner without a diagonal step.
        if w2 % 2 and w > 2:
            ax2, ay2 = ax2 + dax, ay2 + day
        return _gilbert(x, y, ax2, ay2, bx, by) + _gilbert(
            x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by
        )
    # Standard case: up (half height), across (full width), down (half height, mirrored).
    # An even half height avoids the parity trap that would force a diagonal step.
    if h2 % 2 and h > 2:
        bx2, by2 = bx2 + dbx, by2 + dby
    up = _gilbert(x, y, bx2, by2, ax2, ay2)
    across = _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
    down = _gilbert(
        x + (ax - dax) + (bx2 - dbx),
        y + (ay - day) + (by2 - dby),
        -bx2,
        -by2,
        -(ax - ax2),
        -(ay - ay2),
    )
    return up + across + down


# ---------------------------------------------------------------------------------------------
# Route construction and validation.
# ---------------------------------------------------------------------------------------------


def _cross(height: int, width: int) -> torch.Tensor:
    """Build the official VMamba cross-scan directly (independent of the path machinery)."""
    x = torch.arange(height * width).view(height, width)
    r0, r1 = x.flatten(), x.t().flatten()
    return torch.stack([r0, r1, r0.flip(0), r1.flip(0)])


def _bidirectional(height: int, width: int) -> torch.Tensor:
    r0 = torch.arange(height * width)
    return torch.stack([r0, r0.flip(0)])


# Functions returning a (K, L) tensor are used as is; those returning a 1-D path get four routes.
_REGISTRY: dict[str, OrderFn] = {
    "cross": _cross,
    "bidirectional": _bidirectional,
    "diagonal": _diagonal,
    "morton": _morton,
    "spiral": _spiral,
    "hilbert": _hilbert,
    "snake": _snake,
    "random": _random,
}


def _as_index_tensor(name: str, height: int, width: int, out: OrderOutput) -> torch.Tensor:
    grid = f"order {name!r} on grid {height}x{width}"
    try:
        t = torch.as_tensor(out)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{grid}: output is not convertible to a tensor ({exc})") from exc
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{grid}: indices must be integers, got dtype {t.dtype}")
    if t.dim() not in (1, 2):
        raise ValueError(f"{grid}: expected shape (L,) or (K, L), got {tuple(t.shape)}")
    return t.to(torch.long)


def _validate(name: str, height: int, width: int, rts: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every row of ``rts`` (K, L) is a permutation of range(L)."""
    n = height * width
    grid = f"order {name!r} on grid {height}x{width}"
    if rts.shape[0] < 1:
        raise ValueError(f"{grid}: no routes returned")
    for k, row in enumerate(rts):
        if row.numel() != n:
            raise ValueError(f"{grid}: route {k} has length {row.numel()}, expected L={n}")
        bad = row[(row < 0) | (row >= n)]
        if bad.numel():
            raise ValueError(f"{grid}: route {k} has index {int(bad[0])} out of range [0, {n})")
        counts = torch.bincount(row, minlength=n)
        if (counts > 1).any():
            dup = int(torch.nonzero(counts > 1)[0])
            raise ValueError(f"{grid}: route {k} visits index {dup} more than once")


def _four_routes(
    p: torch.Tensor, path_fn: OrderFn, name: str, height: int, width: int
) -> torch.Tensor:
    """Mirror cross-scan: [p, q = p on the transposed grid mapped back, flip(p), flip(q)]."""
    # Validate both base paths before using them as indices, so errors name the culprit grid.
    _validate(name, height, width, p.view(1, -1))
    q_t = _as_index_tensor(name, width, height, path_fn(width, height))
    _validate(name, width, height, q_t.view(1, -1))
    # (r', c') on the W x H grid is the original patch (row=c', col=r').
    q = (q_t % height) * width + q_t // height
    return torch.stack([p, q, p.flip(0), q.flip(0)])


@functools.lru_cache(maxsize=256)
def _cached_routes(name: str, height: int, width: int) -> torch.Tensor:
    fn = _REGISTRY[name]
    out = _as_index_tensor(name, height, width, fn(height, width))
    rts = out if out.dim() == 2 else _four_routes(out, fn, name, height, width)
    _validate(name, height, width, rts)
    return rts.contiguous()


def _check_size(height: int, width: int) -> None:
    for label, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{label} must be an int >= 1, got {v!r}")


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise KeyError(f"unknown patch order {name!r}; available: {', '.join(available())}")


# ---------------------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------------------


def available() -> list[str]:
    """Return the names of all registered patch orders.

    Returns
    -------
    list of str
        Sorted order names, built-in and custom.
    """
    return sorted(_REGISTRY)


def routes(name: str, height: int, width: int) -> torch.Tensor:
    """Return the scan routes of an order on a ``height x width`` patch grid.

    Parameters
    ----------
    name : str
        A registered order name (see :func:`available`).
    height, width : int
        Grid size H and W, both >= 1.

    Returns
    -------
    torch.Tensor
        int64 tensor of shape (K, L), L = H * W; row k is the sequence of row-major patch
        indices visited by route k, a permutation of range(L). A fresh copy on every call.

    Raises
    ------
    KeyError
        If ``name`` is not registered.
    ValueError
        If the grid size is invalid or the order does not produce K permutations.
    """
    _check_name(name)
    _check_size(height, width)
    return _cached_routes(name, height, width).clone()


def get(name: str) -> Callable[[int, int], torch.Tensor]:
    """Return the route builder of an order.

    Parameters
    ----------
    name : str
        A registered order name.

    Returns
    -------
    callable
        ``fn(height, width) -> torch.Tensor`` of shape (K, L), int64, as :func:`routes`.

    Raises
    ------
    KeyError
        If ``name`` is not registered; the message lists the available names.
    """
    _check_name(name)
    return functools.partial(routes, name)


def single_route(name: str, height: int, width: int) -> torch.Tensor:
    """Return the base 1-D path of an order, e.g. for plotting.

    Parameters
    ----------
    name : str
        A registered order name.
    height, width : int
        Grid size H and W, both >= 1.

    Returns
    -------
    torch.Tensor
        int64 tensor of shape (L,): route 0, which is the base path p for path orders and
        row-major for ``cross`` and ``bidirectional``.
    """
    return routes(name, height, width)[0]


def register(name: str, fn: OrderFn, *, overwrite: bool = False) -> None:
    """Register a custom patch order.

    Parameters
    ----------
    name : str
        Order name.
    fn : callable
        ``fn(height, width)`` returning either a 1-D path of length L (sequence or tensor),
        from which four cross-scan-like routes are derived (the path, the path computed on the
        transposed W x H grid mapped back, and both reversed), or a (K, L) tensor used as is.
        The result is validated on first use for each grid size.
    overwrite : bool, default False
        Allow replacing an existing order (built-ins included).

    Raises
    ------
    ValueError
        If ``name`` is already registered and ``overwrite`` is False, or ``name`` is empty.
    TypeError
        If ``fn`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"order name must be a non-empty str, got {name!r}")
    if not callable(fn):
        raise TypeError(f"order {name!r}: fn must be callable, got {type(fn).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"order {name!r} is already registered; pass overwrite=True to replace")
    _REGISTRY[name] = fn
    _cached_routes.cache_clear()  # stale routes of a replaced order must not survive


def inverse(rts: torch.Tensor) -> torch.Tensor:
    """Return the step at which each route visits each patch.

    Parameters
    ----------
    rts : torch.Tensor
        Integer tensor of shape (K, L) (or (L,)), each row a permutation of range(L).

    Returns
    -------
    torch.Tensor
        int64 tensor of the same shape with ``steps[k, i]`` = the step at which route k visits
        patch i, so ``rts.gather(-1, steps) == arange(L)``.
    """
    rts = torch.as_tensor(rts).long()
    steps = torch.empty_like(rts)
    order = torch.arange(rts.shape[-1]).expand_as(rts)
    return steps.scatter_(-1, rts, order)
