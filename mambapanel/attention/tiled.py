"""Hidden attention of one scan route in the tiled GEMM form of design.md §3 (the default
backend): off-diagonal tiles are matrix products, diagonal tiles recurse into smaller
tiles, and only the smallest ones need element-wise exps.

Shape legend: Bt batch, D channels, N states, L steps, T tile, nT tiles, E kept channels
(1 when reduced, D otherwise), M contracted axis (D·N when reduced, N otherwise).
"""

from __future__ import annotations

import math
import threading

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
    leaf: int = 96,
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
        Tile size of the top level; default ``ceil(L / fan)`` (at least ``leaf``), evened
        out so that the tiles have equal lengths.
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
    into it reversed (see :func:`route_attention`).

    The factors are (Bt, D, N, L) tensors, as large as the GEMMs' operands: they live in a
    per-thread scratch buffer (:func:`scratch`) and are changed in place.
    """
    Bt, D, L = delta.shape
    N = A.shape[1]
    if L <= max(leaf, 1) and tile is None:
        result = _leaf(delta, A, B, C, per_channel, weights)
        if out is None:
            return result
        return out.add_(result.flip(-2, -1)) if add_reversed else out.copy_(result)
    T = max(1, min(tile or max(leaf, math.ceil(L / fan)), L))
    if tile is None:  # as many tiles, of equal length: the least padding
        T = math.ceil(L / math.ceil(L / T))
    nT = math.ceil(L / T)
    pad = nT * T - L
    if pad:  # steps appended at the end never reach earlier queries; never written out
        delta, B, C = (F.pad(z, (0, pad)) for z in (delta, B, C))
        if weights is not None:
            weights = tuple(F.pad(w, (0, pad)) for w in weights)

    # Three factor-sized tensors (Δ·A's cumsum then C·P, Q·Δ·B, the scaled keys), kept
    # between calls: a fresh one costs more in page faults than the arithmetic done on it.
    work = scratch("factors", (3, Bt, D, N, nT, T), delta.dtype, delta.device)
    cum = torch.mul(delta[:, :, None, :], A[None, :, :, None], out=work[0].flatten(-2))
    cum = cum.view(Bt, D, N, nT, T).cumsum_(-1)  # Δ·A <= 0, within-tile inclusive cumsum
    tile_sum = cum[..., -1].clone()  # (Bt, D, N, nT)
    # Sums across tiles can reach thousands: difference them in float64, then exp (<= 1).
    across = tile_sum.double().cumsum(-1)
    between = across[..., :-1, None] - across[..., None, :]  # [I-1, J] = Σ_{J<m<I}
    G = _decay(between.to(cum.dtype))  # (Bt, D, N, nT-1, nT), used where J < I
    # Q·Δ·B and C·P, every factor in [0, 1]; the mean's 1/D rides on C.
    right = _decay(torch.sub(tile_sum[..., None], cum, out=work[1]))
    right.mul_(delta.view(Bt, D, 1, nT, T)).mul_(B.view(Bt, 1, N, nT, T))
    left = _decay(cum).mul_(C.view(Bt, 1, N, nT, T) / (1 if per_channel else D))
    if weights is not None:
        left.mul_(weights[0].view(Bt, D, 1, nT, T))
        right.mul_(weights[1].view(Bt, D, 1, nT, T))

    lhs_all = _as_rhs(left, per_channel).movedim(2, -1)  # (Bt, E, nT, T, M), a view
    rhs_all = _as_rhs(right, per_channel)  # (Bt, E, M, nT, T)
    G_all = _as_rhs(G, per_channel)  # (Bt, E, M, nT-1, nT)
    E = lhs_all.shape[1]
    keys = _as_rhs(work[2], per_channel)  # earlier key tiles, scaled

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
            scaled = keys[:, :, :, :q]
            torch.mul(G_all[:, :, :, q - 1, :q, None], rhs_all[:, :, :, :q], out=scaled)
            lhs = lhs_all[:, :, q, :n_rows]
            if add_reversed:  # rows L-1-t, columns L-1-s: the block reversed in both axes
                block = torch.matmul(lhs, scaled.flatten(-2))
                out[:, :, L - rows.stop : L - rows.start, L - q * T :] += block.flip(-2, -1)
            else:
                torch.matmul(lhs, scaled.flatten(-2), out=out[:, :, rows, : q * T])
    del work, cum, left, right, keys, lhs_all, rhs_all  # the recursion reuses the scratch

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


# Leaves this short whose decay would overflow a factor take the element-wise form.
SMALLEST_SPLIT = 4

# Per thread: named buffers kept between calls (never returned to a caller).
_workspace = threading.local()
WORKSPACE_BYTES = 2**29


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A buffer of ``shape`` kept per thread under ``name`` and reused by the next call that
    asks for ``name`` (contents undefined); a fresh tensor when it would be over
    :data:`WORKSPACE_BYTES`. One caller at a time per name: what it holds is overwritten."""
    size = math.prod(shape)
    if size * dtype.itemsize > WORKSPACE_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    buffers = _workspace.__dict__.setdefault("buffers", {})
    flat = buffers.get(name)
    if flat is None or flat.numel() < size or flat.dtype != dtype or flat.device != device:
        flat = buffers[name] = torch.empty(size, dtype=dtype, device=device)
    return flat[:size].view(shape)


# Decay factors exp(x), x <= 0, below this are set to 0 (float32 and narrower). Far pairs'
# decays underflow into subnormal numbers, which CPUs multiply tens of times slower; a product
# of three factors (left, G, right) above it stays a normal number, and what is dropped is
# below 1e-12 of the largest possible term, far under float32's resolution of the result.
TINY = 1e-12
LOG_TINY = math.log(TINY)


def _decay(x: Tensor) -> Tensor:
    """exp(x) in place, for exponents x <= 0; under :data:`TINY` it is 0 (float32 and
    narrower), in one pass before the exp."""
    if x.dtype != torch.float64:
        F.threshold_(x, LOG_TINY, -math.inf)
    return x.exp_()


def _as_rhs(z: Tensor, per_channel: bool) -> Tensor:
    """(Bt, D, N, ...) -> (Bt, E, M, ...): per channel M = N, else one axis M = D·N."""
    return z if per_channel else z.reshape(z.shape[0], 1, z.shape[1] * z.shape[2], *z.shape[3:])


def _leaf(
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    per_channel: bool,
    weights: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """A short sequence (a diagonal tile): r(Bt, E, L, L).

    The decay is factored around the middle of the leaf's total Δ·A, so each factor lies
    within exp(±span / 2) and the leaf is one small GEMM. Nothing is set to zero here: a
    factor above 1 may meet a tiny one, and only their product is the decay. Where the span
    could overflow the dtype's exp (huge steps), the leaf is split in two tiles (one GEMM
    between them, each half a leaf again), down to :data:`SMALLEST_SPLIT` steps, which take
    the element-wise form.
    """
    L = delta.shape[-1]
    work = scratch("factors", (2, *delta.shape[:2], A.shape[1], L), delta.dtype, delta.device)
    cum = torch.mul(delta[:, :, None, :], A[None, :, :, None], out=work[0]).cumsum_(-1)  # <= 0
    middle = cum[..., -1:] / 2
    largest_exponent = 0.9 * math.log(torch.finfo(delta.dtype).max)
    if middle.numel() and middle.min() < -largest_exponent:
        if L <= SMALLEST_SPLIT:
            return _elementwise(delta, A, B, C, per_channel, weights)
        half = math.ceil(L / 2)  # two tiles: the factors between them lie in [0, 1]
        return _tiled(delta, A, B, C, per_channel, half, half, 2, weights=weights)
    right = torch.sub(middle, cum, out=work[1]).exp_().mul_(delta[:, :, None, :]).mul_(B[:, None])
    left = cum.sub_(middle).exp_().mul_(C[:, None] / (1 if per_channel else delta.shape[1]))
    if weights is not None:
        left.mul_(weights[0][:, :, None, :])
        right.mul_(weights[1][:, :, None, :])
    causal = torch.ones(L, L, dtype=torch.bool, device=delta.device).tril()
    lhs = _as_rhs(left, per_channel).movedim(2, -1)  # (Bt, E, L, M), a view
    product = torch.matmul(lhs, _as_rhs(right, per_channel))
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
