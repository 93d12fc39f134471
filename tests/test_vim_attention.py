"""Hidden attention of Vim mixers: the reconstruction identity by route (ssm) and as one
operator on the pre-conv input (implicit), in float64, for several grids (non-square
included) and orders; tiled against reference with N = 16 across tile boundaries; the CLS
row and column; the weighted mean; a capture of a whole model."""

import pytest
import torch
import torch.nn.functional as F

from mambapanel import attention, models, orders
from mambapanel.attention.vim import implicit_offset, split_cls, vim_attention
from mambapanel.models.scan import selective_scan
from mambapanel.models.vim import BiMamba, token_routes

GRIDS = [(4, 4), (3, 5), (5, 2), (1, 6)]


def make_mixer(d_model=6, d_state=16, seed=0, dtype=torch.float64):
    """A mixer whose A, Δ bias, D and conv bias are spread like a trained layer's."""
    torch.manual_seed(seed)
    mixer = BiMamba(d_model, d_state=d_state).to(dtype)
    with torch.no_grad():
        for A_log, D, dt_proj, conv in (
            (mixer.A_log, mixer.D, mixer.dt_proj, mixer.conv1d),
            (mixer.A_b_log, mixer.D_b, mixer.dt_proj_b, mixer.conv1d_b),
        ):
            A_log.uniform_(-1.0, 1.5)
            dt_proj.bias.uniform_(-4.0, 0.5)
            D.normal_()
            conv.bias.normal_()
    return mixer


def record(grid, order="bidirectional", batch=2, **mixer_options):
    mixer = make_mixer(**mixer_options)
    routes = token_routes(order, *grid)
    hidden = torch.randn(batch, grid[0] * grid[1] + 1, mixer.in_proj.in_features,
                         dtype=torch.float64)  # fmt: skip
    return mixer.scan_inputs(hidden, routes, grid)


def route_outputs(inputs):
    """Each route's scan output y_k and input u_k in token order: r(Bt, K, D, T) each."""
    ys = selective_scan(inputs.u, inputs.delta, inputs.A, inputs.B, inputs.C, inputs.Ds)
    steps = orders.inverse(inputs.routes)
    token = torch.stack([ys[:, k][..., steps[k]] for k in range(len(steps))], 1)
    u = torch.stack([inputs.u[:, k][..., steps[k]] for k in range(len(steps))], 1)
    return token, u


@pytest.mark.parametrize("order", ["bidirectional", "cross", "morton", "spiral"])
@pytest.mark.parametrize("grid", GRIDS)
def test_ssm_identity_by_route_as_the_mixer_merges_them(order, grid):
    inputs = record(grid, order)
    y, u = route_outputs(inputs)
    half = 0.5  # if_divide_out
    for backend, tile in (("reference", None), ("tiled", 4)):
        alpha = vim_attention(inputs, reduce=None, by_route=True, backend=backend,
                              dtype=torch.float64, tile=tile)  # fmt: skip
        for k in range(2):
            rebuilt = torch.einsum("bdij,bdj->bdi", alpha[:, k], u[:, k])
            rebuilt += half * inputs.Ds[k][None, :, None] * u[:, k]
            torch.testing.assert_close(rebuilt, half * y[:, k], rtol=1e-10, atol=1e-10)
        merged = vim_attention(inputs, reduce=None, backend=backend, dtype=torch.float64,
                               tile=tile)  # fmt: skip
        torch.testing.assert_close(merged, alpha.sum(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ["bidirectional", "hilbert"])
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_implicit_mode_is_one_operator_on_the_pre_conv_input(order, grid):
    """The mixer's gated, halved output before out_proj = α̃ x + β (β: the convs' bias)."""
    inputs = record(grid, order)
    gated = BiMamba.scan(inputs) * F.silu(inputs.z) / 2
    alpha = vim_attention(inputs, reduce=None, mode="implicit", dtype=torch.float64, tile=4)
    offset = implicit_offset(inputs, torch.float64)
    rebuilt = torch.einsum("bdij,bdj->bdi", alpha, inputs.x) + offset
    torch.testing.assert_close(rebuilt, gated, rtol=1e-10, atol=1e-10)
    # Without the convs' bias there is no offset.
    no_bias = type(inputs)(**{**inputs.__dict__, "conv_bias": torch.zeros_like(inputs.conv_bias)})
    assert implicit_offset(no_bias, torch.float64).abs().max() == 0


@pytest.mark.parametrize("reduce", attention.REDUCTIONS)
@pytest.mark.parametrize("tile", [8, 16])
def test_tiled_equals_reference_with_16_states_across_tiles(reduce, tile):
    inputs = record((6, 7), "bidirectional", d_state=16)  # 43 tokens: ragged tiles
    expected = vim_attention(inputs, reduce=reduce, backend="reference", dtype=torch.float64)
    got = vim_attention(inputs, reduce=reduce, backend="tiled", dtype=torch.float64, tile=tile)
    torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-11)


def test_gradient_weighted_mean_matches_the_per_channel_matrices():
    inputs = record((3, 4), "bidirectional")
    generator = torch.Generator().manual_seed(3)
    weights = tuple(torch.randn(inputs.delta.shape, generator=generator, dtype=torch.float64)
                    for _ in "qk")  # fmt: skip
    # Weighted means are not halved (the ½ of the merge may sit on either factor).
    per_channel = 2 * vim_attention(inputs, reduce=None, by_route=True, dtype=torch.float64)
    steps = orders.inverse(inputs.routes)
    by_hand = sum(
        (weights[0][:, k][..., steps[k]][..., :, None] * per_channel[:, k]
         * weights[1][:, k][..., steps[k]][..., None, :]).mean(1)
        for k in range(2)
    )  # fmt: skip
    for backend in ("reference", "tiled"):
        got = vim_attention(inputs, weights=weights, backend=backend, dtype=torch.float64, tile=4)
        torch.testing.assert_close(got, by_hand, rtol=1e-11, atol=1e-11)


def test_capture_of_a_vim_gives_patch_matrices_and_the_cls_row_and_column():
    torch.manual_seed(0)
    model = models.build("vim-micro", num_classes=10)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
        with attention.capture(model) as cap:
            assert torch.equal(model(images), logits)  # the capture changes nothing
    assert cap.keys() == [(0, layer) for layer in range(4)]
    patches = cap.attention(stage=0, block=2)
    assert patches.shape == (2, 64, 64)
    from_cls, to_cls = cap.cls_attention(stage=0, block=2)
    assert from_cls.shape == to_cls.shape == (2, 64)
    whole = vim_attention(cap.inputs(0, 2))
    expected = split_cls(whole, 64)
    torch.testing.assert_close(patches, expected[0])
    torch.testing.assert_close(from_cls, whole[:, 64, :64])
    torch.testing.assert_close(to_cls, whole[:, :64, 64])
    with pytest.raises(TypeError, match="no CLS token"):
        vmamba = models.build("vmamba-micro")
        with torch.no_grad(), attention.capture(vmamba) as cap:
            vmamba(torch.randn(1, 3, 32, 32))
        cap.cls_attention(stage=0, block=0)


def explicit_scan(alphas, reshape):
    """A layer's scan written as y = Σ_k (α_k u_k + D_k u_k) with the α_k as given tensors
    (leaves of autograd), u_k each route's input in item order."""

    def scan(inputs):
        steps = orders.inverse(inputs.routes)
        if inputs.u.dim() == 4 and inputs.u.shape[1] == len(steps):  # Vim: u per route
            inputs_k = [inputs.u[:, k][..., steps[k]] for k in range(len(steps))]
        else:
            inputs_k = [inputs.u.flatten(2)] * len(steps)
        y = sum(
            torch.einsum("bdij,bdj->bdi", alpha, u) + inputs.Ds[k][None, :, None] * u
            for k, (alpha, u) in enumerate(zip(alphas, inputs_k, strict=True))
        )
        return reshape(y, inputs)

    return scan


@pytest.mark.parametrize(("name", "address", "size"), [("vmamba-micro", (1, 1), 32),
                                                       ("vim-micro", (0, 2), 32)])  # fmt: skip
def test_attribution_is_gradient_times_attention_by_autograd(name, address, size):
    """Capture.attribution against autograd of the scan written with explicit α_k."""
    torch.manual_seed(1)
    model = models.build(name, num_classes=5).double()
    for parameter in model.parameters():  # off the init: skips, A and biases all matter
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    images = torch.randn(2, 3, size, size, dtype=torch.float64)
    with attention.capture(model, gradients=True) as cap:
        model(images)[:, 3].sum().backward()
    got = cap.attribution(*address, dtype=torch.float64)

    inputs = cap.inputs(*address)
    per_route = cap.item_attention(*address, reduce=None, by_route=True, dtype=torch.float64)
    if isinstance(inputs, models.VimScanInputs):
        per_route = per_route * 2  # the mixer's halving comes after its scan
    alphas = [per_route[:, k].clone().requires_grad_() for k in range(per_route.shape[1])]
    layer = attention.scan_layers(model)[address]
    reshape = (lambda y, i: y) if name.startswith("vim") else (lambda y, i: y.view(i.u.shape))
    layer.scan = explicit_scan(alphas, reshape)
    try:
        model.zero_grad()
        model(images)[:, 3].sum().backward()
    finally:
        del layer.scan
    expected = sum((alpha.grad * alpha.detach()).mean(1) for alpha in alphas)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert got.abs().max() > 0
