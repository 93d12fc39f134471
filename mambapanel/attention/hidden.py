"""Hidden attention of a whole SS2D layer in patch space: every route's step-space matrix
(from one of three backends) moved to row-major patches and merged, optionally folded
with the depthwise conv and SiLU gate (``mode="implicit"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mambapanel import orders
from mambapanel.attention import reference, tiled
from mambapanel.attention.reference import check_reduce
from mambapanel.models.vmamba import ScanInputs

Tensor = torch.Tensor

BACKENDS = ("tiled", "reference", "triton")
MODES = ("ssm", "implicit")


def route_backend(name: str) -> Callable[..., Tensor]:
    """The ``route_attention`` function of a backend: tiled (default), reference, triton."""
    if name == "tiled":
        return tiled.route_attention
    if name == "reference":
        return reference.route_attention
    if name == "triton":
        from mambapanel.attention import triton_kernels  # imports triton: only on request

        if not triton_kernels.available():
            raise RuntimeError(
                "backend 'triton' needs a CUDA device, or TRITON_INTERPRET=1 set before "
                "mambapanel.attention.triton_kernels is first imported (CPU, slow)"
            )
        return triton_kernels.route_attention
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def hidden_attention(
    inputs: ScanInputs,
    *,
    reduce: str | None = "mean",
    by_route: bool = False,
    mode: str = "ssm",
    backend: str = "tiled",
    dtype: torch.dtype = torch.float32,
    tile: int | None = None,
    weights: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The patch-to-patch attention α[i, j] (query i, key j, both row-major) of one layer.

    Parameters
    ----------
    inputs : ScanInputs
        What the layer's scan read (``SS2D.scan_inputs`` or a capture).
    reduce : {"mean", "absmean", None}
        Over channels. ``absmean`` takes |α| per route before the routes are summed, so the
        result is the magnitude each route moves and routes cannot cancel each other.
    by_route : bool
        Keep the K routes apart instead of summing them.
    mode : {"ssm", "implicit"}
        ``ssm``: the scan operator on u, y = α u + D u. ``implicit``: the operator on the
        in_proj output x before the depthwise conv: α̃ = (α + D) · diag(σ(v)) · Conv, with
        v the pre-activation (SiLU(v) = v σ(v)), so y = α̃ x exactly when the conv has no
        bias (true of the v2 family). Needs per-channel matrices: memory D·L² per image.
    backend : {"tiled", "reference", "triton"}
    dtype : torch.dtype
        Compute and result dtype (float64 for exact checks).
    tile : int, optional
        Tile size of the tiled and triton backends (their default when None).
    weights : (query r(Bt, K, D, L), key r(Bt, K, D, L)), optional
        In each route's step order: the weighted mean over channels (``reduce="mean"``,
        ``ssm`` mode), e.g. ∂score/∂y and u for gradient × attention.

    Returns
    -------
    r(Bt, L, L); r(Bt, D, L, L) when ``reduce`` is None; a K axis after Bt with ``by_route``.
    """
    check_mode(mode)
    if weights is not None and mode != "ssm":
        raise ValueError("weights go with mode='ssm'")
    Ds = inputs.Ds.to(dtype)

    def fold(alpha: Tensor, k: int) -> Tensor:
        return _fold_conv_and_gate(alpha, Ds[k], inputs, dtype)

    return routes_attention(
        inputs.delta,
        inputs.A,
        inputs.B,
        inputs.C,
        inputs.routes,
        reduce=reduce,
        by_route=by_route,
        backend=backend,
        dtype=dtype,
        tile=tile,
        grid=inputs.grid,
        fold=fold if mode == "implicit" else None,
        weights=weights,
    )


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def routes_attention(
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    routes: Tensor,
    *,
    reduce: str | None = "mean",
    by_route: bool = False,
    backend: str = "tiled",
    dtype: torch.dtype = torch.float32,
    tile: int | None = None,
    grid: tuple[int, int] | None = None,
    fold: Callable[[Tensor, int], Tensor] | None = None,
    weights: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Every route's step-space attention moved to item order and summed (or kept apart):
    α[i, j] = Σ_k α_k[step_k(i), step_k(j)], items being what ``routes`` index (patches
    row-major, or Vim's tokens).

    Parameters
    ----------
    delta : r(Bt, K, D, L)
    A : r(K, D, N)
    B, C : r(Bt, K, N, L)
    routes : int(K, L), the item visited at each step of each route
    grid : (H, W), optional
        The items are the patches of this grid: a column-major route is then added as a
        transposed view (one pass instead of three gathers).
    fold : callable(alpha r(Bt, D, L, L) in item order, k) -> r(Bt, D, L, L), optional
        Applied to each route's per-channel matrix before ``reduce`` (the implicit mode).
    weights : (query r(Bt, K, D, L), key r(Bt, K, D, L)), optional
        In each route's step order: the weighted mean over channels of each route's matrix
        (``reduce="mean"``; backends tiled and reference).
    Other parameters as :func:`hidden_attention`.
    """
    check_reduce(reduce)
    if weights is not None and backend == "triton":
        raise ValueError("weights need the tiled or reference backend, not triton")
    route_attention = route_backend(backend)
    options = {} if tile is None or backend == "reference" else {"tile": tile}
    steps = orders.inverse(routes.cpu()).to(routes.device)
    per_route_reduce = None if fold is not None else reduce
    delta, B, C, A = (z.to(dtype) for z in (delta, B, C, A))

    K, L = routes.shape
    Bt, _, D, _ = delta.shape
    in_order = torch.arange(L, device=routes.device)
    column_major = None if grid is None else in_order.view(*grid).t().flatten()
    # The tiled backend computes a route and its reverse into one buffer (two triangles).
    fuse = (
        backend == "tiled"
        and fold is None
        and not by_route
        and not (reduce == "absmean" and A.shape[-1] > 1)
    )
    result = step_buffer = row_buffer = col_buffer = None
    merging = not by_route and fold is None
    with torch.no_grad():  # analysis only; the buffers below are reused across routes
        for k, partner in _route_groups(routes) if fuse else [(k, None) for k in range(K)]:
            # The tiled backend writes into a reused buffer: a fresh L x L costs page faults.
            # Only a first in-order route gets a fresh one, as it becomes the result.
            if step_buffer is None and not (merging and torch.equal(steps[k], in_order)):
                channels = () if per_route_reduce else (D,)
                step_buffer = tiled.scratch("steps", (Bt, *channels, L, L), dtype, delta.device)
            into = {"out": step_buffer} if backend == "tiled" else {}
            alpha = route_attention(
                delta[:, k],
                A[k],
                B[:, k],
                C[:, k],
                reduce=per_route_reduce,
                **options,
                **into,
                **_route_weights(weights, k, dtype),
            )
            if partner is not None:
                route_attention(
                    delta[:, partner],
                    A[partner],
                    B[:, partner],
                    C[:, partner],
                    reduce=reduce,
                    out=alpha,
                    add_reversed=True,
                    **options,
                    **_route_weights(weights, partner, dtype),
                )
            if (
                merging
                and result is not None
                and column_major is not None
                and torch.equal(routes[k], column_major)
            ):
                # A column-major route is a transpose of the grid: add a permuted view, one
                # pass where the gathers below take three.
                H, W = grid
                lead, n = alpha.shape[:-2], alpha.dim() - 2
                transposed = alpha.view(*lead, W, H, W, H).permute(
                    *range(n), n + 1, n, n + 3, n + 2
                )
                result.view(*lead, H, W, H, W).add_(transposed)
                step_buffer = alpha
                continue
            # Step space -> item space: α[i, j] = α_k[step_k(i), step_k(j)].
            patch = alpha
            if not torch.equal(steps[k], in_order):
                row_buffer = torch.index_select(alpha, -2, steps[k], out=row_buffer)
                patch = col_buffer = torch.index_select(row_buffer, -1, steps[k], out=col_buffer)
            if fold is not None:
                patch = _reduce(fold(patch, k), reduce)
            if by_route:
                if result is None:
                    result = patch.new_empty(patch.shape[0], K, *patch.shape[1:])
                result[:, k] = patch
            elif result is None and patch is alpha:
                result = alpha  # an in-order route: its buffer becomes the result
                continue
            elif result is None:
                result = patch.clone()
            else:
                result.add_(patch)
            step_buffer = alpha
    return result


def _route_weights(
    weights: tuple[Tensor, Tensor] | None, k: int, dtype: torch.dtype
) -> dict[str, tuple[Tensor, Tensor]]:
    """Route ``k``'s channel weights as a keyword (none at all without weights)."""
    if weights is None:
        return {}
    return {"weights": (weights[0][:, k].to(dtype), weights[1][:, k].to(dtype))}


def _route_groups(routes: Tensor) -> list[tuple[int, int | None]]:
    """Routes paired with their reverse where the order has one: [(k, k' or None), ...]."""
    groups, taken = [], set()
    for k in range(routes.shape[0]):
        if k in taken:
            continue
        partner = next(
            (
                j
                for j in range(k + 1, routes.shape[0])
                if j not in taken and torch.equal(routes[j], routes[k].flip(0))
            ),
            None,
        )
        taken.update({k} if partner is None else {k, partner})
        groups.append((k, partner))
    return groups


def _reduce(alpha: Tensor, reduce: str | None) -> Tensor:
    """r(Bt, D, L, L) -> r(Bt, L, L) over channels (or unchanged for None)."""
    if reduce is None:
        return alpha
    return (alpha.abs() if reduce == "absmean" else alpha).mean(1)


def _fold_conv_and_gate(alpha: Tensor, Ds: Tensor, inputs: ScanInputs, dtype) -> Tensor:
    """(α + diag(D)) · diag(σ(v)) · Conv for every channel: r(Bt, D, L, L) in and out."""
    Bt, D, L, _ = alpha.shape
    H, W = inputs.grid
    weight = inputs.conv_weight.to(dtype)
    pre_activation = F.conv2d(
        inputs.x.to(dtype), weight, None, padding=weight.shape[-1] // 2, groups=D
    )
    if inputs.conv_bias is not None:
        pre_activation = pre_activation + inputs.conv_bias.to(dtype)[:, None, None]
    gate = torch.sigmoid(pre_activation).flatten(2)  # (Bt, D, L)
    alpha = alpha + torch.diag_embed(Ds[None, :, None].expand(Bt, D, L))
    alpha = alpha * gate[:, :, None, :]
    # Right-multiplying by the conv matrix is the transposed conv over the key grid.
    keys = alpha.permute(0, 2, 1, 3).reshape(Bt * L, D, H, W)
    keys = F.conv_transpose2d(keys, weight, padding=weight.shape[-1] // 2, groups=D)
    return keys.view(Bt, L, D, L).permute(0, 2, 1, 3)
