"""The chunked selective scan against the step-by-step recurrence."""

import pytest
import torch

from mambapanel.models.scan import (
    along_routes,
    linear_recurrence,
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


@pytest.mark.parametrize(
    ("L", "N", "chunk", "skip"),
    [(23, 1, 5, False), (23, 1, None, True), (17, 3, 4, True), (9, 2, 50, False), (6, 1, 1, True)],
)
def test_chunked_scan_and_its_gradient_equal_the_recurrence(L, N, chunk, skip):
    """The scan's own backward pass (one autograd node, the recurrence in reverse) against
    autograd through the step-by-step recurrence: output and every input's gradient."""
    u, delta, A, B, C, Dskip = random_scan_inputs(L=L, N=N)
    inputs = (u, delta, A, B, C, Dskip) if skip else (u, delta, A, B, C)
    leaves = [t.clone().requires_grad_() for t in inputs]
    ref_leaves = [t.clone().requires_grad_() for t in inputs]
    got = selective_scan(*leaves, chunk=chunk)
    expected = selective_scan_reference(*ref_leaves)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(got.shape, dtype=got.dtype, generator=torch.Generator().manual_seed(1))
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    for got_leaf, expected_leaf in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(got_leaf.grad, expected_leaf.grad, rtol=1e-10, atol=1e-10)


def test_the_scan_is_one_autograd_node_only_where_a_gradient_is_needed():
    u, delta, A, B, C, _ = random_scan_inputs(L=12)
    assert selective_scan(u, delta, A, B, C).grad_fn is None
    y = selective_scan(u.requires_grad_(), delta, A, B, C)
    assert type(y.grad_fn).__name__ == "_SelectiveScanBackward"
    with torch.no_grad():
        assert selective_scan(u, delta, A, B, C).grad_fn is None


def test_linear_recurrence_equals_the_loop():
    g = torch.Generator().manual_seed(4)
    decay = torch.rand(3, 2, 29, generator=g, dtype=torch.float64)
    x = torch.randn(3, 2, 29, generator=g, dtype=torch.float64)
    h, expected = torch.zeros(3, 2, dtype=torch.float64), []
    for t in range(29):
        h = decay[..., t] * h + x[..., t]
        expected.append(h)
    for chunk in (None, 1, 4, 29, 40):
        torch.testing.assert_close(
            linear_recurrence(decay, x, chunk), torch.stack(expected, -1), rtol=1e-12, atol=1e-12
        )


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
