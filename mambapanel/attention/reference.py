"""Hidden attention of one scan route, written as the formula of design.md §3: the oracle
that the tiled and Triton implementations are tested against. Memory D·N·L² — small L only.

Shape legend: Bt batch, D channels, N states, L steps (in the route's step order).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

REDUCTIONS = ("mean", "absmean", None)


def check_reduce(reduce: str | None) -> None:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")


def check_weights(reduce: str | None, weights: tuple[Tensor, Tensor], delta: Tensor) -> None:
    if reduce != "mean":
        raise ValueError(f"weights go with reduce='mean' (a weighted mean), got {reduce!r}")
    for weight in weights:
        if weight.shape != delta.shape:
            raise ValueError(f"weights must have delta's shape {tuple(delta.shape)}")


def route_attention(
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    reduce: str | None = "mean",
    weights: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """α[t, s] = Σ_n C[t, n] · exp(A_{d,n} (S_d[t] - S_d[s])) · Δ_d[s] · B[s, n],  s <= t.

    Parameters
    ----------
    delta : r(Bt, D, L)
        Positive step sizes Δ of the route (softplus applied), S_d = cumsum(Δ_d).
    A : r(D, N)
        Negative state matrix of the route.
    B, C : r(Bt, N, L)
    reduce : {"mean", "absmean", None}
        Over channels d: the mean, the mean of absolute values, or keep every channel.
    weights : (query r(Bt, D, L), key r(Bt, D, L)), optional
        With ``mean``: the mean over d of w_q[d, t] · α_d[t, s] · w_k[d, s] (e.g. the
        gradient of a score w.r.t. the scan output, and the scan input: ∂score/∂α ⊙ α).

    Returns
    -------
    r(Bt, L, L), or r(Bt, D, L, L) when ``reduce`` is None. Row t = query step, column
    s = key step; zero above the diagonal.
    """
    check_reduce(reduce)
    L = delta.shape[-1]
    S = delta.cumsum(-1)
    gap = S[..., :, None] - S[..., None, :]  # (Bt, D, L, L): S[t] - S[s]
    causal = torch.ones(L, L, dtype=torch.bool, device=delta.device).tril()
    exponent = A[None, :, :, None, None] * gap[:, :, None]  # (Bt, D, N, L, L)
    # Above the diagonal the exponent is positive and may overflow: mask before exp.
    decay = torch.exp(exponent.masked_fill(~causal, float("-inf")))
    alpha = torch.einsum("bnt,bdnts,bds,bns->bdts", C, decay, delta, B)
    if weights is not None:
        check_weights(reduce, weights, delta)
        query, key = weights
        alpha = query[..., :, None] * alpha * key[..., None, :]
    if reduce is None:
        return alpha
    if reduce == "absmean":
        alpha = alpha.abs()
    return alpha.mean(1)
