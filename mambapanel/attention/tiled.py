"""Hidden attention of one scan route in the tiled GEMM form of design.md §3 (the default
backend): off-diagonal tiles are matrix products, diagonal tiles recurse into smaller
tiles, and only the smallest ones need element-wise exps.

Shape legend: Bt batch, D channels, N states, L steps, T tile, nT tiles, E kept channels
(1 when reduced, D otherwise), M contracted axis (D·N when reduced, N otherwise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mambapanel.attention.reference import check_reduce, check_weights

Tensor = torch.Tensor


def route_attention(
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    reduce: str | None = "mean",
    tile: int | None = None,
    leaf: int = 32,
    fan: int = 16,
    out: Tensor | None = None,
    add_reversed: bool = False,
    weights: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Same contract as :func:`mambapanel.attention.reference.route_attention`.

    With query step t in tile I and key step s in an earlier tile J, the decay splits into
    three factors that all lie in [0, 1]:

        exp(A(S[t] - S[s])) = P_I[t] · G[I, J] · Q_J[s]
        P_I[t] = exp(Δ·A summed over tile I up to t)
        G[I,J] = exp(Δ·A summed over the tiles strictly between J and I)
        Q_J[s] = exp(Δ·A summed over the steps of J after s)

    so an off-diagonal tile is (P·G) @ Q over (d, n) for ``mean`` (over n, per channel, for
    ``reduce=None``): GEMM speed, and nothing exponentiated can exceed 1. A diagonal tile
    is the same problem on a shorter sequence, so it recurses (all diagonal tiles of a level
    in one batched call) down to ``leaf`` steps, which are one small GEMM each.

    Parameters
    ----------
    tile : int, optional
        Tile size of the top level; default ``ceil(L / fan)`` (at least ``leaf``).
    leaf : int
        Sequences this short are not split further (see :func:`_leaf`).
    fan : int
        Tiles per level below the top.
    out : Tensor, optional
        A buffer of the result's shape to write into. Reusing one across calls saves the
        first-touch cost of a fresh L x L allocation, which on a CPU rivals the arithmetic.
    add_reversed : bool
        Add the result reversed in both axes (α[L-1-t, L-1-s]) into ``out`` instead of
        writing it. A route and its reverse then share one buffer: the reverse's keys come
        after its queries in the forward order, so it fills the other triangle.
    weights : (query, key), optional
        The weighted mean over channels: the query weights scale the left factors and the
        key weights the right ones, so it stays one GEMM over (d, n).
    """
    check_reduce(reduce)
    if weights is not None:
        check_weights(reduce, weights, delta)
    N = A.shape[1]
    if add_reversed and out is None:
        raise ValueError("add_reversed=True adds into out: pass the buffer")
    if reduce == "absmean":
        if N > 1:  # |Σ_n ...| does not factor; take it per channel
            if add_reversed:
                raise ValueError("add_reversed needs a factored reduction (absmean: N = 1)")
            per_channel = route_attention(
                delta, A, B, C, reduce=None, tile=tile, leaf=leaf, fan=fan
            )
            return torch.mean(per_channel.abs_(), 1, out=out)
        # With N = 1 only C[t] and B[s] carry a sign: |α_d| = |C| · (positive) · |B|.
        B, C = B.abs(), C.abs()
    if out is not None and reduce is not None:
        out = out[:, None]  # _tiled keeps a channel axis of 1
    out = _tiled(delta, A, B, C, reduce is None, tile, leaf, fan, out, add_reversed, weights)
    return out if reduce is None else out[:, 0]


def _tiled(
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    per_channel: bool,
    tile: int | None,
    leaf: int,
    fan: int,
    out: Tensor | None = None,
    add_reversed: bool = False,
    weights: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """r(Bt, E, L, L): the route attention, channels kept (E = D) or averaged (E = 1), with
    channel ``weights`` (query, key) r(Bt, D, L) if given; written into ``out``, or added
    into it reversed (see :func:`route_attention`)."""
    Bt, D, L = delta.shape
    N = A.shape[1]
    if L <= max(leaf, 1) and tile is None:
        result = _leaf(delta, A, B, C, per_channel, weights)
        if out is None:
            return result
        return out.add_(result.flip(-2, -1)) if add_reversed else out.copy_(result)
    T = max(1, min(tile or max(leaf, math.ceil(L / fan)), L))
    nT = math.ceil(L / T)
    pad = nT * T - L
    if pad:  # steps appended at the end never reach earlier queries; never written out
        delta, B, C = (F.pad(z, (0, pad)) for z in (delta, B, C))
        if weights is not None:
            weights = tuple(F.pad(w, (0, pad)) for w in weights)

    dA = delta[:, :, None, :] * A[None, :, :, None]  # (Bt, D, N, Lp), <= 0
    cum = dA.view(Bt, D, N, nT, T).cumsum(-1)  # within-tile inclusive cumsum
    tile_sum = cum[..., -1]  # (Bt, D, N, nT)
    # Sums across tiles can reach thousands: difference them in float64, then exp (<= 1).
    across = tile_sum.double().cumsum(-1)
    between = across[..., :-1, None] - across[..., None, :]  # [I-1, J] = Σ_{J<m<I}
    G = torch.exp(between).to(dA.dtype)  # (Bt, D, N, nT-1, nT), used where J < I
    Ct = C.view(Bt, 1, N, nT, T)
    right = (
        torch.exp(tile_sum[..., None] - cum) * delta.view(Bt, D, 1, nT, T) * B.view(Bt, 1, N, nT, T)
    )  # Q·Δ·B: (Bt, D, N, nT, T)
    left = Ct * torch.exp(cum)  # C·P: (Bt, D, N, nT, T)
    if weights is not None:
        left = left * weights[0].view(Bt, D, 1, nT, T)
        right = right * weights[1].view(Bt, D, 1, nT, T)
    left, right, G = _flush_tiny(left), _flush_tiny(right), _flush_tiny(G)

    lhs_all = _as_lhs(left, per_channel)  # (Bt, E, nT, T, M)
    rhs_all = _as_rhs(right, per_channel)  # (Bt, E, M, nT, T)
    G_all = _as_rhs(G, per_channel)  # (Bt, E, M, nT-1, nT)
    E = lhs_all.shape[1]

    # Every element of out is written once below: the output is the memory-bound part.
    if out is None:
        out = delta.new_empty(Bt, E, L, L)
    for q in range(nT):  # query tile I = q
        rows = slice(q * T, min((q + 1) * T, L))
        n_rows = rows.stop - rows.start
        if not add_reversed:
            out[:, :, rows, (q + 1) * T :] = 0  # keys after the query tile
        if q:
            # Every earlier key tile J, scaled by its G[I, J], side by side: (Bt, E, M, q·T).
            keys = (G_all[:, :, :, q - 1, :q, None] * rhs_all[:, :, :, :q]).flatten(-2)
            lhs = lhs_all[:, :, q, :n_rows]
            if add_reversed:  # rows L-1-t, columns L-1-s: reverse the operands instead
                block = torch.matmul(lhs.flip(-2), keys.flip(-1))
                out[:, :, L - rows.stop : L - rows.start, L - q * T :] += block
            else:
                torch.matmul(lhs, keys, out=out[:, :, rows, : q * T])

    # Diagonal tiles: the same problem on each tile's steps, all tiles as one batch.
    def tiles_as_batch(z: Tensor) -> Tensor:  # (Bt, X, nT·T) -> (Bt·nT, X, T)
        return z.view(Bt, -1, nT, T).transpose(1, 2).reshape(Bt * nT, -1, T)

    diag = _tiled(
        tiles_as_batch(delta),
        A,
        tiles_as_batch(B),
        tiles_as_batch(C),
        per_channel,
        None,
        leaf,
        fan,
        weights=None if weights is None else tuple(map(tiles_as_batch, weights)),
    ).view(Bt, nT, E, T, T)
    for q in range(nT):
        rows = slice(q * T, min((q + 1) * T, L))
        n_rows = rows.stop - rows.start
        block = diag[:, q, :, :n_rows, :n_rows]
        if add_reversed:
            reversed_rows = slice(L - rows.stop, L - rows.start)
            out[:, :, reversed_rows, reversed_rows] += block.flip(-2, -1)
        else:
            out[:, :, rows, rows] = block
    return out


# Below this, a factor of a float32 (or narrower) product is set to 0. Far pairs' decays
# underflow into subnormal numbers, which CPUs multiply tens of times slower; a product of
# three factors (left, G, right) above it stays a normal number, and what is dropped is below
# 1e-12 of the largest possible term, far under float32's resolution of the result.
TINY = 1e-12


def _flush_tiny(z: Tensor) -> Tensor:
    """``z`` with entries of magnitude below :data:`TINY` set to 0 (float32 and narrower)."""
    if z.dtype == torch.float64:
        return z
    return z.masked_fill_(z.abs() < TINY, 0.0)


def _as_rhs(z: Tensor, per_channel: bool) -> Tensor:
    """(Bt, D, N, ...) -> (Bt, E, M, ...): per channel M = N, else one axis M = D·N."""
    return z if per_channel else z.reshape(z.shape[0], 1, z.shape[1] * z.shape[2], *z.shape[3:])


def _as_lhs(z: Tensor, per_channel: bool) -> Tensor:
    """(Bt, D, N, ...) -> (Bt, E, ..., M), contiguous; averaged over d (1/D) when reduced."""
    z = z if per_channel else z / z.shape[1]
    return _as_rhs(z, per_channel).movedim(2, -1).contiguous()


def _leaf(
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    per_channel: bool,
    weights: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """A short sequence (a diagonal tile): r(Bt, E, L, L).

    The decay is factored around the middle of the leaf's total Δ·A, so each factor stays
    within exp(span / 2) and the leaf is one small GEMM. Where the span could overflow the
    dtype's exp (huge steps), the leaf takes the element-wise form instead.
    """
    L = delta.shape[-1]
    cum = (delta[:, :, None, :] * A[None, :, :, None]).cumsum(-1)  # (Bt, D, N, L), <= 0
    middle = cum[..., -1:] / 2
    largest_exponent = 0.9 * math.log(torch.finfo(delta.dtype).max)
    if middle.numel() and middle.min() < -largest_exponent:
        return _elementwise(delta, A, B, C, per_channel, weights)
    left = C[:, None] * torch.exp(cum - middle)
    right = torch.exp(middle - cum) * delta[:, :, None, :] * B[:, None]
    if weights is not None:
        left = left * weights[0][:, :, None, :]
        right = right * weights[1][:, :, None, :]
    left, right = _flush_tiny(left), _flush_tiny(right)
    causal = torch.ones(L, L, dtype=torch.bool, device=delta.device).tril()
    product = torch.matmul(_as_lhs(left, per_channel), _as_rhs(right, per_channel))
    return product.masked_fill_(~causal, 0.0)


def _elementwise(
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    per_channel: bool,
    weights: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The masked formula on a short sequence: r(Bt, E, L, L); D·N·L² exps."""
    L = delta.shape[-1]
    cum = (delta[:, :, None, :] * A[None, :, :, None]).cumsum(-1)  # (Bt, D, N, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=delta.device).tril()
    inside = (cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf"))
    decay = torch.exp(inside)  # (Bt, D, N, L, L)
    weighted = decay * delta[:, :, None, None, :]  # (Bt, D, N, L, L): decay · Δ[s]
    if weights is not None:
        query, key = weights
        weighted = weighted * query[:, :, None, :, None] * key[:, :, None, None, :]
    if not per_channel:
        weighted = weighted.mean(1, keepdim=True)  # the (d) sum before the (n) one
    return (C[:, None, :, :, None] * weighted * B[:, None, :, None, :]).sum(2)
