"""Hidden attention of a Vim mixer (bimamba v2) in token order: its forward and backward
routes merged as the mixer merges them, and the implicit operator with each route's causal
conv, the SiLU gates and the halving folded in.

Tokens are the P patches row-major, then the CLS token (T = P + 1); patch-to-patch matrices
are the [:P, :P] corner, the CLS row and column are read apart (``Capture.cls_attention``).

The merge (``if_divide_out``): y = ½ · SiLU(z) ⊙ Σ_k y_k, with y_k the token-order output of
route k's scan of its own input u_k (its own conv). So in ``ssm`` mode, each route's matrix
is taken as it enters the merge, α_k / 2 (no gate), and

    ½ Σ_k y_k = Σ_k (α_k / 2) u_k + ½ Σ_k D_k u_k

holds by route (the routes read different inputs, so their sum is not one operator on one
input). ``implicit`` mode is the single operator on the shared pre-conv x:

    y = α̃ x + β,   α̃ = ½ diag(g) Σ_k (α_k + diag(D_k)) diag(σ(v_k)) Conv_k

with g = SiLU(z), v_k = Conv_k x + b_k route k's conv before its SiLU (SiLU(v) = σ(v) v),
and β = ½ g ⊙ Σ_k (α_k + diag(D_k)) (σ(v_k) ⊙ b_k) the part the conv's bias adds, which
:func:`implicit_offset` gives (Vim's convs have a bias; VMamba's have none).

Shape legend: Bt batch, K = 2 routes, D channels, N states, T tokens.
"""

from __future__ import annotations

import torch

from mambapanel import orders
from mambapanel.attention.hidden import check_mode, routes_attention
from mambapanel.models.scan import along_routes
from mambapanel.models.vim import VimScanInputs, causal_conv1d

Tensor = torch.Tensor


def vim_attention(
    inputs: VimScanInputs,
    *,
    reduce: str | None = "mean",
    by_route: bool = False,
    mode: str = "ssm",
    backend: str = "tiled",
    dtype: torch.dtype = torch.float32,
    tile: int | None = None,
    weights: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The token-to-token attention α[i, j] (query i, key j, token order) of one mixer.

    Parameters as :func:`mambapanel.attention.hidden_attention`, and

    weights : (query r(Bt, K, D, T), key r(Bt, K, D, T)), optional
        In each route's step order: the weighted mean over channels (``reduce="mean"``,
        ``ssm`` mode), e.g. ∂score/∂y_k and u_k for gradient × attention; not halved, since
        ∂s/∂α ⊙ α is the same whichever factor of the merge carries the ½.

    Returns
    -------
    r(Bt, T, T); r(Bt, D, T, T) when ``reduce`` is None; a K axis after Bt with
    ``by_route``. ``ssm``: each route as it enters the merge (halved when the mixer halves);
    ``implicit``: the operator α̃ on x (see the module docstring).
    """
    check_mode(mode)
    scale = 0.5 if inputs.if_divide_out else 1.0
    fold = None
    if mode == "implicit":
        if weights is not None:
            raise ValueError("weights go with mode='ssm'")
        fold = _implicit_fold(inputs, dtype, scale)
    result = routes_attention(
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
        fold=fold,
        weights=weights,
    )
    if mode == "ssm" and scale != 1.0 and weights is None:
        result.mul_(scale)
    return result


def _pre_activation(inputs: VimScanInputs, dtype: torch.dtype) -> Tensor:
    """v_k = Conv_k x + b_k, r(Bt, K, D, T) in each route's step order."""
    bias = None if inputs.conv_bias is None else inputs.conv_bias.to(dtype)
    return causal_conv1d(
        along_routes(inputs.x.to(dtype), inputs.routes), inputs.conv_weight.to(dtype), bias
    )


def _implicit_fold(inputs: VimScanInputs, dtype: torch.dtype, scale: float):
    """fold(α_k r(Bt, D, T, T) in token order, k) -> ½ diag(g) (α_k + D_k) diag(σ(v_k)) Conv_k."""
    routes = inputs.routes
    steps = orders.inverse(routes.cpu()).to(routes.device)
    gate = torch.nn.functional.silu(inputs.z.to(dtype)) * scale  # (Bt, D, T), token order
    sigma = torch.sigmoid(_pre_activation(inputs, dtype))  # (Bt, K, D, T), step order
    Ds = inputs.Ds.to(dtype)
    weight = inputs.conv_weight.to(dtype)[:, :, 0]  # (K, D, width)
    T = routes.shape[1]

    def fold(alpha: Tensor, k: int) -> Tensor:
        alpha = alpha + torch.diag_embed(Ds[k][None, :, None].expand(alpha.shape[:-1]))
        alpha = alpha * sigma[:, k][..., steps[k]][:, :, None, :]  # columns by σ(v_k)
        width = weight.shape[-1]
        # (α Conv_k)[i, j] = Σ_m α[i, tok(step(j) + m)] w[width-1-m]: the tokens after j
        # along route k that j's value reaches through the causal conv.
        folded = torch.zeros_like(alpha)
        for m in range(width):
            later = steps[k] + m
            valid = later < T
            keys = routes[k][later.clamp(max=T - 1)]
            tap = weight[k, :, width - 1 - m][None, :, None, None]
            folded += alpha[..., keys] * tap * valid.to(alpha.dtype)
        return folded * gate[:, :, :, None]

    return fold


def implicit_offset(inputs: VimScanInputs, dtype: torch.dtype = torch.float32) -> Tensor:
    """β of ``implicit`` mode, r(Bt, D, T) in token order: what the convs' bias adds, so
    that the mixer's gated, merged output is α̃ x + β exactly."""
    scale = 0.5 if inputs.if_divide_out else 1.0
    gate = torch.nn.functional.silu(inputs.z.to(dtype)) * scale
    if inputs.conv_bias is None:
        return torch.zeros_like(gate)
    sigma = torch.sigmoid(_pre_activation(inputs, dtype))
    bias_input = sigma * inputs.conv_bias.to(dtype)[None, :, :, None]  # σ(v_k) ⊙ b_k, steps
    per_channel = vim_attention(inputs, reduce=None, by_route=True, dtype=dtype)  # α_k / 2
    steps = orders.inverse(inputs.routes.cpu()).to(inputs.routes.device)
    total = torch.zeros_like(gate)
    for k in range(inputs.routes.shape[0]):
        tokens = bias_input[:, k][..., steps[k]]  # token order
        moved = torch.einsum("bdij,bdj->bdi", per_channel[:, k], tokens) / scale
        total += moved + inputs.Ds.to(dtype)[k][None, :, None] * tokens
    return total * gate


def split_cls(matrix: Tensor, cls_token: int) -> tuple[Tensor, Tensor, Tensor]:
    """A token-order r(..., T, T) -> (patches r(..., P, P), from CLS r(..., P): its row,
    to CLS r(..., P): its column), with the CLS token last (``cls_token`` = P = T - 1)."""
    P = cls_token
    return matrix[..., :P, :P], matrix[..., P, :P], matrix[..., :P, P]
