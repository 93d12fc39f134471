"""Hidden attention of one scan route as a Triton kernel: the tiled GEMM form of design.md §3
with one program per (batch, query tile, key tile) of the lower triangle.

Runs on a CUDA GPU, or on the CPU under ``TRITON_INTERPRET=1`` (set before this module is
imported: ``@triton.jit`` reads it when the kernel is defined). Import this module on demand
only; it guards its ``import triton`` so that :func:`available` answers False without it.

Shape legend: Bt batch, D channels, N states, L steps, T tile (BLOCK_T), nT tiles.

Numerics. S_d = cumsum(Δ_d) reaches hundreds over L = 3136 steps, so neither exp(A·S[t]) nor
exp(-A·S[s]) may be formed (overflow), and S[t] - S[s] must not be the difference of two
large float32 cumsums (cancellation). The host computes S in float64 (O(Bt·D·L), cheap) and
hands the kernel only small or non-negative float32 quantities, per query tile I starting at
step r and key tile J <= I ending at step e_J:

    local[t]   = S[t] - S[r - 1]          t in tile I      (within one tile: small)
    tail[s]    = S[e_J] - S[s]            s in tile J      (within one tile: small)
    gap[I, J]  = S[r - 1] - S[e_J]        J < I            (float64 difference, >= 0)

    exp(A(S[t] - S[s])) = exp(A·local[t]) · exp(A·(tail[s] + gap[I, J]))    (J < I)
                        = exp(A·(local[t] - local[s]))                      (J = I, s <= t)

With A < 0 every exponent of the first line is <= 0, so both factors lie in [0, 1] and an
off-diagonal tile is one matrix product over the contracted axis (d, n). The sum tail + gap
adds two non-negatives: float32 relative error ~1e-7, no cancellation.
"""

from __future__ import annotations

import math
import os

import torch

from mambapanel.attention.reference import check_reduce

try:
    import triton
    import triton.language as tl
except ImportError:  # optional dependency (no wheels on macOS): available() says False
    triton = None

Tensor = torch.Tensor

# What @triton.jit saw when the kernel below was defined: interpreted (CPU) or compiled (GPU).
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# f32 x f32 tl.dot precision. "ieee" keeps the kernel as exact as the float32 tiled backend;
# the dot is a small share of the work (the exps and the L² output write dominate), so TF32
# ("tf32", ~1e-3 relative) would buy little speed for a visible loss.
_DOT_PRECISION = "ieee"

# Default tile sizes: BLOCK_T = 64 keeps a (64, 64) float32 accumulator plus the (64, BLOCK_D)
# and (BLOCK_D, 64) operands in registers with 4 warps; tl.dot needs every dimension >= 16.
_DEFAULT_TILE = 64
_MIN_BLOCK = 16
_MAX_BLOCK_D = 32


def available() -> bool:
    """True when Triton is importable and the kernel can run: on a CUDA device, or on the CPU
    because ``TRITON_INTERPRET=1`` was set before this module was imported."""
    return triton is not None and (_INTERPRET or torch.cuda.is_available())


if triton is not None:

    @triton.jit
    def _route_attention_kernel(
        # Pointers
        delta_ptr,  # r(Bt, D, L) float32, Δ
        local_ptr,  # r(Bt, D, L) float32, S[t] - S[start of t's tile - 1]
        tail_ptr,  # r(Bt, D, L) float32, S[end of s's tile] - S[s]
        gap_ptr,  # r(Bt, D, nT, nT) float32, [I, J] = S[start of I - 1] - S[end of J]
        A_ptr,  # r(D, N) float32
        B_ptr,  # r(Bt, N, L) float32
        C_ptr,  # r(Bt, N, L) float32
        pairs_ptr,  # i(nP, 2) int32, the (I, J) tile pairs with J <= I
        out_ptr,  # r(Bt, L, L) float32, zero-initialised (the upper triangle is never written)
        # Sizes
        D,
        N,
        L,
        # Strides
        stride_xb,  # delta, local and tail share one contiguous layout
        stride_xd,
        stride_xl,
        stride_gb,
        stride_gd,
        stride_gi,
        stride_gj,
        stride_ad,
        stride_an,
        stride_bb,  # B and C share one contiguous layout
        stride_bn,
        stride_bl,
        stride_ob,
        stride_ot,
        stride_os,
        # Meta-parameters
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        """out[b, t, s] = (1/D) Σ_{d,n} C[t,n] exp(A_dn (S_d[t] - S_d[s])) Δ_d[s] B[s,n] for
        one (BLOCK_T, BLOCK_T) tile: query tile I (rows t), key tile J <= I (columns s)."""
        pid = tl.program_id(0)
        # int64: Bt · L² overflows int32 past Bt ≈ 200 at L = 3136.
        b = tl.program_id(1).to(tl.int64)
        tile_i = tl.load(pairs_ptr + 2 * pid)
        tile_j = tl.load(pairs_ptr + 2 * pid + 1)

        offs_t = tile_i * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_s = tile_j * BLOCK_T + tl.arange(0, BLOCK_T)
        mask_t = offs_t < L
        mask_s = offs_s < L

        x_base = b * stride_xb
        b_base = b * stride_bb
        acc = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float32)

        if tile_i == tile_j:
            # Diagonal tile: the decay does not factor into [0, 1] parts, so take the masked
            # element-wise exp, one channel at a time (D·N·T² exps, O(L·T·D·N) in all). The
            # exponent is positive above the diagonal: mask it to -inf BEFORE the exp.
            causal = (offs_t[:, None] >= offs_s[None, :]) & mask_t[:, None] & mask_s[None, :]
            for n in range(N):
                c = tl.load(
                    C_ptr + b_base + n * stride_bn + offs_t * stride_bl, mask=mask_t, other=0.0
                )
                bs = tl.load(
                    B_ptr + b_base + n * stride_bn + offs_s * stride_bl, mask=mask_s, other=0.0
                )
                # Σ_d exp(A_dn (S_d[t] - S_d[s])) Δ_d[s]; C[t, n] B[s, n] do not depend on d.
                acc_n = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float32)
                for d in range(D):
                    a = tl.load(A_ptr + d * stride_ad + n * stride_an)
                    row = x_base + d * stride_xd
                    lt = tl.load(local_ptr + row + offs_t * stride_xl, mask=mask_t, other=0.0)
                    ls = tl.load(local_ptr + row + offs_s * stride_xl, mask=mask_s, other=0.0)
                    dl = tl.load(delta_ptr + row + offs_s * stride_xl, mask=mask_s, other=0.0)
                    expo = tl.where(causal, a * (lt[:, None] - ls[None, :]), float("-inf"))
                    acc_n += tl.exp(expo) * dl[None, :]
                acc += c[:, None] * acc_n * bs[None, :]
        else:
            # Off-diagonal tile: P[t, d] @ Q[d, s] over blocks of BLOCK_D channels, for each
            # state n; both factors lie in [0, 1] times C, Δ, B (see the module docstring).
            # Masked channels load A = 0 and Δ = 0: P = exp(0) = 1 meets Q = 0.
            for n in range(N):
                c = tl.load(
                    C_ptr + b_base + n * stride_bn + offs_t * stride_bl, mask=mask_t, other=0.0
                )
                bs = tl.load(
                    B_ptr + b_base + n * stride_bn + offs_s * stride_bl, mask=mask_s, other=0.0
                )
                for d0 in range(0, D, BLOCK_D):
                    offs_d = d0 + tl.arange(0, BLOCK_D)
                    mask_d = offs_d < D
                    a = tl.load(A_ptr + offs_d * stride_ad + n * stride_an, mask=mask_d, other=0.0)
                    rows = x_base + offs_d * stride_xd
                    lt = tl.load(
                        local_ptr + rows[None, :] + offs_t[:, None] * stride_xl,
                        mask=mask_t[:, None] & mask_d[None, :],
                        other=0.0,
                    )  # (BLOCK_T, BLOCK_D)
                    ts = tl.load(
                        tail_ptr + rows[:, None] + offs_s[None, :] * stride_xl,
                        mask=mask_d[:, None] & mask_s[None, :],
                        other=0.0,
                    )  # (BLOCK_D, BLOCK_T)
                    dl = tl.load(
                        delta_ptr + rows[:, None] + offs_s[None, :] * stride_xl,
                        mask=mask_d[:, None] & mask_s[None, :],
                        other=0.0,
                    )  # (BLOCK_D, BLOCK_T)
                    g = tl.load(
                        gap_ptr
                        + b * stride_gb
                        + offs_d * stride_gd
                        + tile_i * stride_gi
                        + tile_j * stride_gj,
                        mask=mask_d,
                        other=0.0,
                    )  # (BLOCK_D,)
                    p = tl.exp(a[None, :] * lt) * c[:, None]
                    q = tl.exp(a[:, None] * (ts + g[:, None])) * dl * bs[None, :]
                    acc += tl.dot(p, q, input_precision=DOT_PRECISION)

        acc = acc / D
        out = out_ptr + b * stride_ob + offs_t[:, None] * stride_ot + offs_s[None, :] * stride_os
        tl.store(out, acc, mask=mask_t[:, None] & mask_s[None, :])


def _host_offsets(delta: Tensor, T: int) -> tuple[Tensor, Tensor, Tensor]:
    """local, tail r(Bt, D, L) and gap r(Bt, D, nT, nT) in float32 from S in float64.

    delta: r(Bt, D, L). See the module docstring for what each holds.
    """
    Bt, D, L = delta.shape
    nT = math.ceil(L / T)
    S = delta.double().cumsum(-1)
    pad = nT * T - L
    if pad:  # repeat the last S: the padded steps add nothing, tile ends stay at step L - 1
        S = torch.cat([S, S[..., -1:].expand(Bt, D, pad)], dim=-1)
    S = S.view(Bt, D, nT, T)
    end = S[..., -1]  # (Bt, D, nT): S at each tile's last step
    before = torch.cat([end.new_zeros(Bt, D, 1), end[..., :-1]], dim=-1)  # S before each tile
    local = (S - before[..., None]).view(Bt, D, nT * T)[..., :L]
    tail = (end[..., None] - S).view(Bt, D, nT * T)[..., :L]
    # [I, J] = S[start of I - 1] - S[end of J]; negative (and unused) for J >= I.
    gap = (before[..., :, None] - end[..., None, :]).clamp_min(0.0)
    return (
        local.float().contiguous(),
        tail.float().contiguous(),
        gap.float().contiguous(),
    )


def _block_d(D: int, block_d: int | None) -> int:
    if block_d is None:
        return max(_MIN_BLOCK, min(_MAX_BLOCK_D, triton.next_power_of_2(D)))
    if block_d < 1 or block_d & (block_d - 1):
        raise ValueError(f"block_d must be a power of two, got {block_d}")
    return block_d


def route_attention(
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    reduce: str | None = "mean",
    tile: int | None = None,
    block_d: int | None = None,
) -> Tensor:
    """Same contract as :func:`mambapanel.attention.reference.route_attention` for ``reduce``
    in {"mean", "absmean"}; the result is float32 whatever the input float dtype.

    Parameters
    ----------
    delta : r(Bt, D, L)
        Positive step sizes Δ, S_d = cumsum(Δ_d).
    A : r(D, N)
        Negative state matrix.
    B, C : r(Bt, N, L)
    reduce : {"mean", "absmean"}
        ``absmean`` only with N = 1 (then |α_d| = |C[t]| · (positive) · |B[s]|); ``None``
        (per channel) is not computed here: use the tiled backend.
    tile : int, optional
        BLOCK_T, a power of two >= 16 (default 64): query and key steps per program.
    block_d : int, optional
        BLOCK_D, a power of two (default: next power of two of D, clamped to [16, 32]):
        channels per tl.dot in off-diagonal tiles. On a GPU it must be >= 16.

    Returns
    -------
    r(Bt, L, L) float32, zero above the diagonal, on the device of ``delta``.
    """
    if triton is None:
        raise RuntimeError("Triton is not installed: use the tiled backend")
    check_reduce(reduce)
    if reduce is None:
        raise NotImplementedError(
            "the Triton kernel reduces over channels; for reduce=None use the tiled backend"
        )
    Bt, D, L = delta.shape
    N = A.shape[1]
    if A.shape != (D, N) or B.shape != (Bt, N, L) or C.shape != (Bt, N, L):
        raise ValueError(
            f"shapes do not match: delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    if reduce == "absmean":
        if N > 1:
            raise NotImplementedError(
                "absmean with N > 1 does not factor (|Σ_n ...| per channel): use the tiled backend"
            )
        # N = 1: only C[t] and B[s] carry a sign, |α_d| = |C| · exp(..) Δ · |B|.
        B, C = B.abs(), C.abs()
    if not _INTERPRET and delta.device.type != "cuda":
        raise ValueError(
            "the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 set before import), "
            f"got device {delta.device}"
        )

    T = _DEFAULT_TILE if tile is None else tile
    if T < _MIN_BLOCK or T & (T - 1):
        raise ValueError(f"tile must be a power of two >= {_MIN_BLOCK}, got {T}")
    BD = _block_d(D, block_d)
    nT = math.ceil(L / T)
    out = torch.zeros(Bt, L, L, dtype=torch.float32, device=delta.device)
    if L == 0 or Bt == 0:
        return out

    local, tail, gap = _host_offsets(delta, T)
    delta32, A32, B32, C32 = (z.float().contiguous() for z in (delta, A, B, C))
    # Lower-triangle tile pairs (I, J), J <= I: the upper triangle gets no program at all.
    pairs = torch.tril_indices(nT, nT, device=delta.device).t().to(torch.int32).contiguous()

    grid = (pairs.shape[0], Bt)
    _route_attention_kernel[grid](
        delta32, local, tail, gap, A32, B32, C32, pairs, out,
        D, N, L,
        *delta32.stride(),
        *gap.stride(),
        *A32.stride(),
        *B32.stride(),
        *out.stride(),
        BLOCK_T=T,
        BLOCK_D=BD,
        DOT_PRECISION=_DOT_PRECISION,
    )  # fmt: skip
    return out
