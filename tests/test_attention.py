"""Hidden attention: the reconstruction identity (design.md §3) for every order and grid,
tiled against reference, numerical stability at 56x56, and capture on a real model."""

import pytest
import torch

from mambapanel import attention, models, orders
from mambapanel.attention import reference, tiled
from mambapanel.models.vmamba import SS2D

GRIDS = [(7, 7), (5, 9), (4, 4), (1, 6), (6, 3)]


def reconstruct(alpha, inputs):
    """Σ_j α[d, i, j] u[d, j] + (Σ_k D_k,d) u[d, i]."""
    u = inputs.u.flatten(2)
    return torch.einsum("bdij,bdj->bdi", alpha, u) + inputs.Ds.sum(0)[None, :, None] * u


@pytest.mark.parametrize("order", orders.available())
@pytest.mark.parametrize("grid", GRIDS)
def test_reconstruction_identity(order, grid, ss2d_factory):
    layer = ss2d_factory(d_model=6, d_state=2, order=order)
    x = torch.randn(2, 6, *grid, dtype=torch.float64)
    inputs = layer.scan_inputs(x)
    y = SS2D.scan(inputs).flatten(2)
    for backend, tile in (("reference", None), ("tiled", 4)):
        alpha = attention.hidden_attention(
            inputs, reduce=None, backend=backend, dtype=torch.float64, tile=tile
        )
        torch.testing.assert_close(reconstruct(alpha, inputs), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grid", [(7, 7), (5, 9)])
@pytest.mark.parametrize("order", ["cross", "hilbert", "bidirectional"])
def test_implicit_mode_maps_the_pre_conv_input(grid, order, ss2d_factory):
    layer = ss2d_factory(d_model=6, order=order)
    inputs = layer.scan_inputs(torch.randn(2, 6, *grid, dtype=torch.float64))
    y = SS2D.scan(inputs).flatten(2)
    alpha = attention.hidden_attention(
        inputs, reduce=None, mode="implicit", dtype=torch.float64, tile=8
    )
    torch.testing.assert_close(torch.einsum("bdij,bdj->bdi", alpha, inputs.x.flatten(2)), y)


def random_route(Bt=2, D=6, N=1, L=50, dt_high=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    delta = 0.01 + torch.rand(Bt, D, L, generator=g, dtype=dtype) * dt_high
    A = -torch.exp(torch.rand(D, N, generator=g, dtype=dtype) * 3 - 1)
    B = torch.randn(Bt, N, L, generator=g, dtype=dtype)
    C = torch.randn(Bt, N, L, generator=g, dtype=dtype)
    return delta, A, B, C


@pytest.mark.parametrize("reduce", attention.REDUCTIONS)
@pytest.mark.parametrize(
    ("L", "N", "options"),
    [
        (50, 1, dict(tile=16)),  # one level, ragged last tile
        (64, 1, dict(tile=16)),
        (37, 2, dict(tile=8)),
        (9, 3, dict(tile=64)),  # a single tile
        (300, 1, dict(leaf=8, fan=4)),  # recursion three levels deep
        (123, 2, dict(leaf=4, fan=3)),
    ],
)
def test_tiled_equals_reference_across_tile_boundaries(reduce, L, N, options):
    delta, A, B, C = random_route(L=L, N=N)
    expected = reference.route_attention(delta, A, B, C, reduce=reduce)
    got = tiled.route_attention(delta, A, B, C, reduce=reduce, **options)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(got.triu(1)) == 0  # causal: no key after its query
    buffer = torch.full_like(expected, float("nan"))  # every element must be written
    written = tiled.route_attention(delta, A, B, C, reduce=reduce, out=buffer, **options)
    assert written.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(buffer, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("L", "N", "options"),
    [(50, 1, dict(tile=16)), (37, 16, dict(tile=8)), (123, 16, dict(leaf=4, fan=3)), (9, 2, {})],
)
def test_weighted_mean_equals_the_weighted_per_channel_matrices(L, N, options):
    """mean_d w_q[d, t] α_d[t, s] w_k[d, s] (gradient times attention) in the tiled GEMM form
    against the reference and against weighting the per-channel matrices by hand."""
    delta, A, B, C = random_route(L=L, N=N, D=5)
    g = torch.Generator().manual_seed(7)
    weights = tuple(torch.randn(*delta.shape, generator=g, dtype=delta.dtype) for _ in "qk")
    per_channel = reference.route_attention(delta, A, B, C, reduce=None)
    by_hand = (weights[0][..., :, None] * per_channel * weights[1][..., None, :]).mean(1)
    expected = reference.route_attention(delta, A, B, C, weights=weights)
    torch.testing.assert_close(expected, by_hand, rtol=1e-12, atol=1e-12)
    got = tiled.route_attention(delta, A, B, C, weights=weights, **options)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="weights go with reduce='mean'"):
        tiled.route_attention(delta, A, B, C, reduce="absmean", weights=weights)


@pytest.mark.parametrize("reduce", ["mean", None])
@pytest.mark.parametrize("options", [dict(tile=16), dict(leaf=8, fan=4)])
def test_a_route_and_its_reverse_share_one_buffer(reduce, options):
    forward, backward = random_route(L=75, seed=1), random_route(L=75, seed=2)
    expected = reference.route_attention(*forward, reduce=reduce)
    expected += reference.route_attention(*backward, reduce=reduce).flip(-2, -1)
    buffer = torch.full_like(expected, float("nan")).contiguous()
    tiled.route_attention(*forward, reduce=reduce, out=buffer, **options)
    tiled.route_attention(*backward, reduce=reduce, out=buffer, add_reversed=True, **options)
    torch.testing.assert_close(buffer, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_leaves_with_huge_steps_fall_back_to_the_elementwise_form(dtype):
    # Δ·A summed over a leaf of 32 steps reaches ~1000: the factored leaf would overflow.
    delta, A, B, C = random_route(Bt=1, D=3, L=96, dt_high=30.0)
    expected = reference.route_attention(delta, A, B, C)
    got = tiled.route_attention(*(t.to(dtype) for t in (delta, A, B, C)))
    assert torch.isfinite(got).all()
    # float32 cumsums of ~1e4 carry ~1e-3 absolute error into the exponent.
    tolerance = 1e-3 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)


def test_weighted_leaves_with_huge_steps_take_the_elementwise_form_too():
    delta, A, B, C = random_route(Bt=1, D=3, L=96, dt_high=30.0)
    g = torch.Generator().manual_seed(8)
    weights = tuple(torch.randn(*delta.shape, generator=g, dtype=delta.dtype) for _ in "qk")
    expected = reference.route_attention(delta, A, B, C, weights=weights)
    got = tiled.route_attention(delta, A, B, C, weights=weights)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_float32_with_16_states_and_fast_decay_drops_only_what_float32_cannot_hold():
    """Far pairs' decays fall below float32's normal range; the tiled form sets factors
    under 1e-12 to zero (subnormals are slow) and stays within float32 resolution."""
    delta, A, B, C = random_route(Bt=1, D=4, N=16, L=400, dt_high=1.5)
    expected = reference.route_attention(delta, A, B, C)
    got = tiled.route_attention(*(t.float() for t in (delta, A, B, C)), tile=64)
    assert (got.double() - expected).abs().max() / expected.abs().max() < 1e-6


def test_stable_at_56x56_with_realistic_steps():
    # Δ up to 2 over 3136 steps: S reaches ~3000; exp(A·S) alone would overflow float32.
    delta, A, B, C = random_route(Bt=1, D=3, L=3136, dt_high=2.0)
    expected = reference.route_attention(delta, A, B, C)
    got = tiled.route_attention(*(t.float() for t in (delta, A, B, C)))
    assert torch.isfinite(got).all()
    scale = expected.abs().max()
    assert (got.double() - expected).abs().max() / scale < 1e-5


def test_reductions_and_routes_fit_together(ss2d_factory):
    layer = ss2d_factory(d_model=6)
    inputs = layer.scan_inputs(torch.randn(1, 6, 5, 5, dtype=torch.float64))
    options = dict(dtype=torch.float64, tile=8)
    per_channel = attention.hidden_attention(inputs, reduce=None, by_route=True, **options)
    assert per_channel.shape == (1, 4, 6, 25, 25)
    mean = attention.hidden_attention(inputs, **options)
    absmean = attention.hidden_attention(inputs, reduce="absmean", **options)
    by_route = attention.hidden_attention(inputs, by_route=True, **options)
    torch.testing.assert_close(mean, per_channel.sum(1).mean(1))
    torch.testing.assert_close(by_route.sum(1), mean)
    # absmean is |α| per route, summed over routes.
    torch.testing.assert_close(absmean, per_channel.abs().mean(2).sum(1))
    assert (absmean >= mean.abs() - 1e-12).all()


def test_bad_options_are_named(ss2d_factory):
    inputs = ss2d_factory().scan_inputs(torch.randn(1, 8, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="reduce must be one of"):
        attention.hidden_attention(inputs, reduce="max")
    with pytest.raises(ValueError, match="mode must be one of"):
        attention.hidden_attention(inputs, mode="conv")
    with pytest.raises(ValueError, match="backend must be one of"):
        attention.hidden_attention(inputs, backend="cuda")


@pytest.fixture(scope="module")
def micro_model():
    torch.manual_seed(0)
    return models.build("vmamba-micro")


def test_capture_leaves_output_unchanged_and_records_every_block(micro_model):
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        plain = micro_model(images)
        with attention.capture(micro_model) as cap:
            captured = micro_model(images)
        after = micro_model(images)
    assert torch.equal(plain, captured) and torch.equal(plain, after)
    assert cap.keys() == [
        (s, b) for s, depth in enumerate(micro_model.depths) for b in range(depth)
    ]
    assert all(not layer.scan_recorders for layer in attention.scan_layers(micro_model).values())
    for stage, (H, W) in enumerate([(8, 12), (4, 6), (2, 3), (1, 2)]):
        a = cap.attention(stage=stage, block=1)
        assert a.shape == (2, H * W, H * W) and a.dtype == torch.float32
    per_channel = cap.attention(stage=0, block=1, reduce=None)
    assert per_channel.shape == (2, micro_model.dims[0], 96, 96)
    torch.testing.assert_close(per_channel.mean(1), cap.attention(stage=0, block=1))


def test_capture_attention_reconstructs_the_block_output(micro_model):
    # The oracle on a whole model: the recorded scan inputs give back the merged output.
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), attention.capture(micro_model, blocks=[(1, 0)]) as cap:
        micro_model(images)
    inputs = cap.inputs(1, 0)
    alpha = cap.attention(stage=1, block=0, reduce=None, dtype=torch.float64)
    y = SS2D.scan(inputs).flatten(2).double()
    u = inputs.u.flatten(2).double()
    rec = torch.einsum("bdij,bdj->bdi", alpha, u) + inputs.Ds.double().sum(0)[None, :, None] * u
    torch.testing.assert_close(rec, y, rtol=1e-4, atol=1e-5)


def test_capture_errors_name_the_block(micro_model):
    with attention.capture(micro_model, blocks=[(0, 0)]) as cap:
        with pytest.raises(KeyError, match="no forward pass"):
            cap.inputs(0, 0)
        with torch.no_grad():
            micro_model(torch.randn(1, 3, 16, 16))
        with pytest.raises(KeyError, match="stage 0, block 1 was not captured"):
            cap.attention(stage=0, block=1)
        with pytest.raises(KeyError, match="stage 9, block 0 does not exist"):
            cap.attention(stage=9, block=0)
    with pytest.raises(KeyError, match="stage 7, block 0 is not in this model"):
        with attention.capture(micro_model, blocks=[(7, 0)]):
            pass


@pytest.mark.triton
def test_triton_backend_through_the_layer_api(ss2d_factory):
    layer = ss2d_factory(d_model=6, order="morton")
    inputs = layer.scan_inputs(torch.randn(1, 6, 5, 6, dtype=torch.float64))
    for reduce in ("mean", "absmean"):
        expected = attention.hidden_attention(
            inputs, reduce=reduce, backend="reference", dtype=torch.float64
        )
        got = attention.hidden_attention(inputs, reduce=reduce, backend="triton", tile=16)
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_float32_leaves_with_a_span_over_55_keep_their_near_pairs():
    """A leaf's factors lie in exp(±span / 2): with a span of ~60 one side goes below 1e-12
    while the other is above 1e12. Setting such factors to zero (as the off-diagonal ones
    may be, all being <= 1) lost near pairs whose decay is ~1: a relative error of 0.4."""
    delta, A, B, C = random_route(Bt=1, D=4, N=4, L=32, dt_high=1.0, seed=3)
    span = (delta[:, :, None, :] * A[None, :, :, None]).sum(-1).abs().max()
    assert 55 < span < 160  # factored leaf, not the element-wise form
    expected = reference.route_attention(delta, A, B, C)
    got = tiled.route_attention(*(t.float() for t in (delta, A, B, C)))
    assert (got.double() - expected).abs().max() / expected.abs().max() < 1e-5


def test_scratch_buffers_never_leak_into_results():
    """The factors live in per-thread scratch buffers reused by the next call: a result
    must not be one of them, and calls of other shapes must not see stale factors."""
    first, second = random_route(L=300, N=4, seed=4), random_route(L=50, N=2, seed=5)
    results = [tiled.route_attention(*route) for route in (first, second, first)]
    kept = [r.clone() for r in results]
    tiled.route_attention(*random_route(L=120, N=3, seed=6))
    for result, copy, route in zip(results, kept, (first, second, first), strict=True):
        torch.testing.assert_close(result, copy, rtol=0, atol=0)
        expected = reference.route_attention(*route)
        torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-10)
