"""The chunked selective scan against the step-by-step recurrence."""

import pytest
import torch

from mambapanel.models.scan import (
    along_routes,
    merge_routes,
    selective_scan,
    selective_scan_reference,
)
from mambapanel.orders import routes as order_routes


def random_scan_inputs(Bt=2, K=4, D=5, N=1, L=17, dtype=torch.float64, seed=0, dt_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(Bt, K, D, L, generator=g, dtype=dtype)
    delta = torch.rand(Bt, K, D, L, generator=g, dtype=dtype) * dt_scale
    A = -torch.rand(K, D, N, generator=g, dtype=dtype) * 4
    B = torch.randn(Bt, K, N, L, generator=g, dtype=dtype)
    C = torch.randn(Bt, K, N, L, generator=g, dtype=dtype)
    Dskip = torch.randn(K, D, generator=g, dtype=dtype)
    return u, delta, A, B, C, Dskip


@pytest.mark.parametrize(
    ("L", "N", "chunk"),
    [(17, 1, 4), (17, 1, None), (40, 2, 32), (64, 3, 8), (1, 1, None), (5, 1, 1), (9, 1, 50)],
)
def test_chunked_scan_equals_recurrence(L, N, chunk):
    u, delta, A, B, C, Dskip = random_scan_inputs(L=L, N=N)
    expected = selective_scan_reference(u, delta, A, B, C, Dskip)
    got = selective_scan(u, delta, A, B, C, Dskip, chunk=chunk)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_chunked_scan_without_skip_and_its_gradient():
    u, delta, A, B, C, _ = random_scan_inputs(L=23)
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    ref_leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    selective_scan(*leaves, chunk=5).square().sum().backward()
    selective_scan_reference(*ref_leaves).square().sum().backward()
    for got, expected in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-10, atol=1e-10)


def test_long_sequence_float32_is_stable():
    # 56x56 tokens with large steps: Δ·A sums reach thousands, exp(±) would overflow.
    u, delta, A, B, C, Dskip = random_scan_inputs(Bt=1, K=1, D=3, L=3136, dt_scale=2.0)
    expected = selective_scan_reference(u, delta, A, B, C, Dskip)
    got = selective_scan(*(t.float() for t in (u, delta, A, B, C, Dskip)))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_along_and_merge_routes_are_gather_and_scatter_add():
    routes = order_routes("spiral", 3, 4)
    z = torch.arange(2 * 1 * 12, dtype=torch.float64).view(2, 1, 12)
    laid = along_routes(z, routes)
    for k in range(routes.shape[0]):
        assert torch.equal(laid[:, k], z[:, :, routes[k]])
    # Merging what was laid out visits every patch once per route: K times the input.
    torch.testing.assert_close(merge_routes(laid, routes), routes.shape[0] * z)
