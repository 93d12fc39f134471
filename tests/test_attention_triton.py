"""Tests for mambapanel.attention.triton_kernels against the float64 reference.

Without a GPU the kernel runs interpreted (TRITON_INTERPRET=1, set by conftest.py before the
kernel module is imported): slow, so the sizes stay small (L <= 96, D <= 20).
"""

from __future__ import annotations

import pytest
import torch

from mambapanel.attention import reference, triton_kernels

pytestmark = pytest.mark.triton


def test_triton_is_available():
    # No silent skip: Triton is a dependency, and conftest sets TRITON_INTERPRET without a GPU.
    assert triton_kernels.available()


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(
    Bt: int,
    D: int,
    N: int,
    L: int,
    *,
    seed: int = 0,
    delta_range: tuple[float, float] = (0.02, 0.6),
    A_range: tuple[float, float] = (0.1, 4.0),
) -> tuple[torch.Tensor, ...]:
    """delta r(Bt, D, L) ~ U(delta_range), A r(D, N) = -U(A_range), B, C r(Bt, N, L) ~ N(0, 1),
    all float64."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = delta_range
    delta = lo + (hi - lo) * torch.rand(Bt, D, L, generator=g, dtype=torch.float64)
    lo, hi = A_range
    A = -(lo + (hi - lo) * torch.rand(D, N, generator=g, dtype=torch.float64))
    B = torch.randn(Bt, N, L, generator=g, dtype=torch.float64)
    C = torch.randn(Bt, N, L, generator=g, dtype=torch.float64)
    return delta, A, B, C


def run_triton(delta, A, B, C, **options) -> torch.Tensor:
    out = triton_kernels.route_attention(*(z.to(DEVICE) for z in (delta, A, B, C)), **options)
    return out.cpu()


def assert_matches(out: torch.Tensor, ref: torch.Tensor) -> None:
    """float32 result against the float64 reference, tolerances relative to max |α|."""
    assert out.dtype == torch.float32
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    scale = ref.abs().max().item()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5 * scale)
    # The upper triangle is never written: exactly zero.
    assert (out.triu(1) == 0).all()


@pytest.mark.parametrize(
    ("Bt", "D", "N", "L", "tile", "block_d", "reduce"),
    [
        (1, 4, 1, 35, 16, None, "mean"),  # L = 2 tiles + 3: a ragged last tile
        (2, 20, 2, 49, 16, 16, "mean"),  # D = 16 + 4: two channel blocks, the last ragged
        (2, 20, 1, 49, 16, 16, "absmean"),
        (1, 6, 2, 17, 16, None, "mean"),  # one step past a tile boundary
        (1, 8, 1, 64, 32, None, "mean"),  # exact tiles; BLOCK_D = 16 > D
        (1, 5, 1, 10, 16, None, "absmean"),  # L < tile: one diagonal tile only
        (2, 3, 2, 1, 16, None, "mean"),  # L = 1
    ],
)
def test_matches_reference(Bt, D, N, L, tile, block_d, reduce):
    delta, A, B, C = make_inputs(Bt, D, N, L, seed=L + D)
    out = run_triton(delta, A, B, C, reduce=reduce, tile=tile, block_d=block_d)
    assert_matches(out, reference.route_attention(delta, A, B, C, reduce=reduce))


@pytest.mark.parametrize("reduce", ["mean", "absmean"])
def test_large_cumsum_is_stable(reduce):
    """Δ ~ U(0.5, 3) over 96 steps: S reaches ~170 and |A| up to 8, so exp(A·S) underflows
    and exp(-A·S) overflows float32; the tile factoring must still match float64."""
    delta, A, B, C = make_inputs(1, 8, 1, 96, seed=3, delta_range=(0.5, 3.0), A_range=(0.01, 8.0))
    A[0, 0] = -0.01  # a slow channel: the far lower-left corner still carries weight
    A[1, 0] = -8.0
    assert delta.cumsum(-1).max() > 150
    ref = reference.route_attention(delta, A, B, C, reduce=reduce)
    assert ref[0, -1, :16].abs().max() > 1e-3  # the long-range tiles are not all zero
    out = run_triton(delta, A, B, C, reduce=reduce, tile=16)
    assert_matches(out, ref)


def test_default_tile_and_low_precision_inputs():
    """tile=None (64 steps) on float16 inputs: a float32 result equal to the reference taken
    on the same (rounded) values."""
    delta, A, B, C = (z.half() for z in make_inputs(1, 4, 1, 70, seed=7))
    out = run_triton(delta, A, B, C)
    assert_matches(out, reference.route_attention(*(z.double() for z in (delta, A, B, C))))


def test_non_contiguous_inputs():
    delta, A, B, C = make_inputs(1, 5, 2, 33, seed=11)
    # The same values through transposed storage.
    delta_t = delta.transpose(1, 2).contiguous().transpose(1, 2)
    A_t = A.t().contiguous().t()
    B_t, C_t = (z.transpose(1, 2).contiguous().transpose(1, 2) for z in (B, C))
    assert not delta_t.is_contiguous()
    out = run_triton(delta_t, A_t, B_t, C_t, tile=16)
    assert_matches(out, reference.route_attention(delta, A, B, C))


def test_rejects_unsupported_requests():
    delta, A, B, C = make_inputs(1, 2, 2, 8)
    with pytest.raises(NotImplementedError, match="absmean with N > 1"):
        triton_kernels.route_attention(delta, A, B, C, reduce="absmean")
    with pytest.raises(NotImplementedError, match="reduce=None"):
        triton_kernels.route_attention(delta, A, B, C, reduce=None)
    with pytest.raises(ValueError, match="reduce must be one of"):
        triton_kernels.route_attention(delta, A, B, C, reduce="max")
    with pytest.raises(ValueError, match="power of two"):
        triton_kernels.route_attention(delta, A, B, C, tile=24)
    with pytest.raises(ValueError, match="shapes do not match"):
        triton_kernels.route_attention(delta, A, B[:, :1], C)


def test_a_vim_mixer_with_16_states_through_the_triton_kernel():
    """Both routes of a Vim mixer (N = 16, CLS in the middle of route 0) through the kernel,
    merged in token order, against the float64 reference."""
    from test_vim_attention import record

    from mambapanel.attention.vim import vim_attention

    inputs = record((3, 4), "bidirectional", d_state=16)
    expected = vim_attention(inputs, backend="reference", dtype=torch.float64)

    def on_device(value):
        if not torch.is_tensor(value):
            return value
        return value.to(DEVICE, torch.float32 if value.is_floating_point() else value.dtype)

    single = type(inputs)(**{k: on_device(v) for k, v in inputs.__dict__.items()})
    got = vim_attention(single, backend="triton", tile=16).cpu()
    scale = expected.abs().max()
    assert (got.double() - expected).abs().max() / scale < 1e-5
