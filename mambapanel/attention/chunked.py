"""Hidden attention of one scan route in the tiled GEMM form of design.md §3 (the default
backend): off-diagonal tiles are batched matrix products, only diagonal tiles need exps.

Shape legend: Bt batch, D channels, N states, L steps, T tile, nT tiles, M contracted axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mambapanel.attention.reference import check_reduce

Tensor = torch.Tensor


def route_attention(
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    reduce: str | None = "mean",
    tile: int = 64,
) -> Tensor:
    """Same contract as :func:`mambapanel.attention.reference.route_attention`.

    With query step t in tile I and key step s in an earlier tile J, the decay splits into
    three factors that all lie in [0, 1]:

        exp(A(S[t] - S[s])) = P_I[t] · G[I, J] · Q_J[s]
        P_I[t] = exp(Δ·A summed over tile I up to t)
        G[I,J] = exp(Δ·A summed over the tiles strictly between J and I)
        Q_J[s] = exp(Δ·A summed over the steps of J after s)

    so the tile is (P·G) @ Q over the contracted axis (d, n) for ``mean`` (n alone, per
    channel, for ``reduce=None``): GEMM speed, and nothing exponentiated can exceed 1.
    """
    check_reduce(reduce)
    Bt, D, L = delta.shape
    N = A.shape[1]
    if reduce == "absmean":
        if N > 1:  # |Σ_n ...| does not factor; take it per channel
            return route_attention(delta, A, B, C, reduce=None, tile=tile).abs().mean(1)
        # With N = 1 only C[t] and B[s] carry a sign: |α_d| = |C| · (positive) · |B|.
        B, C = B.abs(), C.abs()

    T = max(1, min(tile, L))
    nT = math.ceil(L / T)
    pad = nT * T - L
    if pad:  # steps appended at the end never reach earlier queries; cropped below
        delta, B, C = (F.pad(z, (0, pad)) for z in (delta, B, C))

    dA = delta[:, :, None, :] * A[None, :, :, None]  # (Bt, D, N, Lp), <= 0
    cum = dA.view(Bt, D, N, nT, T).cumsum(-1)  # within-tile inclusive cumsum
    tile_sum = cum[..., -1]  # (Bt, D, N, nT)
    # Sums across tiles can reach hundreds: difference them in float64, then exp (<= 1).
    across = tile_sum.double().cumsum(-1)
    between = across[..., :-1, None] - across[..., None, :]  # [I-1, J] = Σ_{J<m<I}
    G = torch.exp(between).to(dA.dtype)  # (Bt, D, N, nT-1, nT): row I-1, used for J < I
    P = torch.exp(cum)
    Q = torch.exp(tile_sum[..., None] - cum)

    Ct = C.view(Bt, 1, N, nT, T)
    Bs = B.view(Bt, 1, N, nT, T)
    Ds = delta.view(Bt, D, 1, nT, T)
    left = Ct * P  # (Bt, D, N, nT, T)
    right = Q * Ds * Bs

    if reduce is None:  # keep d, contract over n:  (Bt, D, N, a, b) -> (Bt, D, N, a, b)

        def contracted(z: Tensor) -> Tensor:
            return z
    else:  # one GEMM with inner (d, n):  (Bt, D, N, a, b) -> (Bt, 1, D·N, a, b)
        left = left / D

        def contracted(z: Tensor) -> Tensor:
            return z.reshape(Bt, 1, D * N, *z.shape[3:])

    lhs_all = contracted(left).permute(0, 1, 3, 4, 2).contiguous()  # (Bt, E, nT, T, M)
    rhs_all = contracted(right)  # (Bt, E, M, nT, T)
    G_all = contracted(G)  # (Bt, E, M, nT-1, nT)
    E = lhs_all.shape[1]

    out = delta.new_zeros(Bt, E, nT * T, nT * T)
    for q in range(1, nT):  # query tile I = q
        # Every earlier key tile J, scaled by its G[I, J], side by side: (Bt, E, M, q·T).
        keys = (G_all[:, :, :, q - 1, :q, None] * rhs_all[:, :, :, :q]).flatten(-2)
        out[:, :, q * T : (q + 1) * T, : q * T] = torch.matmul(lhs_all[:, :, q], keys)

    # Diagonal tiles: the masked element-wise form.
    causal = torch.ones(T, T, dtype=torch.bool, device=delta.device).tril()
    inside = cum[..., :, None] - cum[..., None, :]  # (Bt, D, N, nT, T, T)
    decay = torch.exp(inside.masked_fill(~causal, float("-inf")))
    if reduce is None:
        diag = torch.einsum("bnit,bdnits,bdis,bnis->bdits", Ct[:, 0], decay, Ds[:, :, 0], Bs[:, 0])
    else:
        diag = torch.einsum("bnit,bdnits,bdis,bnis->bits", Ct[:, 0], decay, Ds[:, :, 0], Bs[:, 0])
        diag = diag[:, None] / D
    for q in range(nT):
        out[:, :, q * T : (q + 1) * T, q * T : (q + 1) * T] = diag[:, :, q]

    out = out[..., :L, :L]
    return out if reduce is None else out[:, 0]
