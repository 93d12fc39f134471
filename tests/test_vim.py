"""Vim: every config and order builds and runs; the state_dicts match the official ones; a
mixer equals the official sequence form and its record reproduces it; checkpoints load
strictly, and those of another family or size are refused by name."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mambapanel import attention, models, orders
from mambapanel.models.scan import selective_scan, selective_scan_reference
from mambapanel.models.vim import add_and_norm, token_routes

DATA = Path(__file__).parent / "data"
MANIFESTS = sorted(DATA.glob("vim_*_manifest.json"))
VIM_NAMES = [name for name, config in models.CONFIGS.items() if config["family"] == "vim"]


def test_the_official_vim_models_have_manifests():
    ours = {json.loads(path.read_text())["ours"] for path in MANIFESTS}
    assert ours == set(VIM_NAMES) - {"vim-micro"}


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p.name.split("_patch16")[0]) for p in MANIFESTS]
)
def test_state_dict_matches_the_official_manifest(path):
    manifest = json.loads(path.read_text())
    model = models.build(manifest["ours"])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == manifest["keys"]
    assert list(ours) == list(manifest["keys"])  # same order too
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n.startswith(("vim-small", "vim-base")) else n
        for n in VIM_NAMES
    ],
)
def test_every_config_builds_and_runs(name):
    # The ImageNet models at 64 px (4x4 patches, 7x7 with stride 8): same layers, less time.
    overrides = {} if name == "vim-micro" else {"img_size": 64}
    torch.manual_seed(0)
    model = models.build(name, num_classes=5, **overrides)
    assert model.order == "bidirectional" and model.depths == (len(model.layers),)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *model.patch_embed.img_size))
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()


@pytest.mark.parametrize("order", orders.available())
def test_micro_runs_with_every_order_on_a_non_square_grid(order):
    torch.manual_seed(0)
    model = models.build("vim-micro", order=order, num_classes=7, img_size=(24, 40))
    assert model.grid == (6, 10)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 24, 40))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert model.order == order


@pytest.mark.parametrize("order", ["bidirectional", "hilbert", "random"])
def test_token_routes_put_the_cls_token_in_the_middle_of_route_0(order):
    H, W = 5, 7
    P = H * W
    routes = token_routes(order, H, W)
    assert routes.shape == (2, P + 1)
    assert torch.equal(routes[0, P // 2], torch.tensor(P))
    assert torch.equal(routes[1], routes[0].flip(0))
    patches = routes[0][routes[0] != P]
    assert torch.equal(patches, orders.routes(order, H, W)[0])
    if order == "bidirectional":  # the official sequence: row-major, CLS at P // 2
        assert routes[0].tolist() == [*range(P // 2), P, *range(P // 2, P)]


def test_wrong_image_size_is_refused():
    model = models.build("vim-micro")
    with pytest.raises(ValueError, match=r"takes 32x32 images .*8x8 patches.*\(1, 3, 32, 36\)"):
        model(torch.randn(1, 3, 32, 36))


def test_residual_is_kept_in_float32_for_narrower_activations():
    norm = models.build("vim-micro").norm_f
    hidden = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    normed, residual = add_and_norm(hidden, None, norm)
    assert normed.dtype == torch.bfloat16 and residual.dtype == torch.float32
    _, residual = add_and_norm(hidden, residual, norm)
    assert residual.dtype == torch.float32
    _, residual = add_and_norm(hidden.double(), None, norm.double())
    assert residual.dtype == torch.float64


# --------------------------------------------------------------------------------------------
# The mixer against the official sequence form, and its record.


def official_sequence_form(mixer, hidden):
    """Upstream's bimamba v2 forward written plainly on a sequence r(Bt, T, C): the backward
    route is the same computation on the flipped sequence with its own parameters."""
    T, R, N = hidden.shape[1], mixer.dt_rank, mixer.d_state
    x, z = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
    outs = []
    for suffix, flip in (("", False), ("_b", True)):
        conv, x_proj, dt_proj = (
            getattr(mixer, f"{n}{suffix}") for n in ("conv1d", "x_proj", "dt_proj")
        )
        A = -torch.exp(getattr(mixer, f"A{suffix}_log"))
        D = getattr(mixer, f"D{suffix}")
        xs, zs = (x.flip(-1), z.flip(-1)) if flip else (x, z)
        u = F.silu(conv(xs)[..., :T])
        dt, B, C = x_proj(u.transpose(1, 2)).split([R, N, N], dim=-1)
        delta = F.softplus(dt_proj(dt)).transpose(1, 2)
        y = selective_scan_reference(
            u[:, None], delta[:, None], A[None], B.mT[:, None], C.mT[:, None], D[None]
        )[:, 0]
        y = y * F.silu(zs)
        outs.append(y.flip(-1) if flip else y)
    return mixer.out_proj(((outs[0] + outs[1]) / 2).transpose(1, 2))


@pytest.fixture(scope="module")
def micro64():
    torch.manual_seed(3)
    model = models.build("vim-micro", img_size=(24, 40)).double()
    for name, p in model.named_parameters():  # move every skip, A and bias off its init
        if name.rsplit(".", 1)[-1] in ("D", "D_b", "A_log", "A_b_log", "bias"):
            p.data.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("order", ["bidirectional", "spiral"])
def test_mixer_equals_the_official_sequence_form(micro64, order):
    mixer = micro64.mixer(0, 1)
    routes = token_routes(order, *micro64.grid)
    hidden = torch.randn(2, routes.shape[1], 64, dtype=torch.float64)
    with torch.no_grad():
        ours = mixer(hidden, routes, micro64.grid)
        plain = official_sequence_form(mixer, hidden[:, routes[0]])
    torch.testing.assert_close(ours[:, routes[0]], plain, rtol=1e-12, atol=1e-12)


def test_record_reproduces_the_mixer_output(micro64):
    mixer = micro64.mixer(0, 2)
    records = []
    mixer.scan_recorders.append(lambda module, inputs: records.append(inputs))
    try:
        with torch.no_grad():
            tokens = torch.randn(2, 61, 64, dtype=torch.float64)
            out = mixer(tokens, token_routes("bidirectional", 6, 10), (6, 10))
    finally:
        mixer.scan_recorders.clear()
    rec = records[-1]
    Bt, K, D, N, T = 2, 2, 128, 4, 61
    assert rec.x.shape == rec.z.shape == (Bt, D, T)
    assert rec.u.shape == rec.delta.shape == (Bt, K, D, T)
    assert rec.A.shape == (K, D, N) and rec.B.shape == rec.C.shape == (Bt, K, N, T)
    assert rec.Ds.shape == (K, D) and rec.routes.shape == (K, T)
    assert rec.conv_weight.shape == (K, D, 1, 4) and rec.conv_bias.shape == (K, D)
    assert rec.grid == (6, 10) and rec.if_divide_out and rec.cls_token == 60
    assert rec.cls_steps == (30, 30)

    with torch.no_grad():
        # Each route's u is its own causal conv of the shared x, along that route.
        for k in range(K):
            xs = rec.x[..., rec.routes[k]]
            conv = F.conv1d(xs, rec.conv_weight[k], rec.conv_bias[k], padding=3, groups=D)
            torch.testing.assert_close(rec.u[:, k], F.silu(conv[..., :T]), rtol=0, atol=0)
        # The scans, each route back to token order, summed, gated, halved, out_proj.
        ys = selective_scan(rec.u, rec.delta, rec.A, rec.B, rec.C, rec.Ds)
        merged = torch.zeros_like(rec.x)
        for k in range(K):
            merged[..., rec.routes[k]] += ys[:, k]
        rebuilt = mixer.out_proj((merged * F.silu(rec.z) / 2).transpose(1, 2))
    torch.testing.assert_close(rebuilt, out, rtol=1e-13, atol=1e-13)


def test_capture_finds_every_vim_mixer(micro64):
    images = torch.randn(1, 3, 24, 40, dtype=torch.float64)
    with torch.no_grad():
        plain = micro64(images)
        with attention.capture(micro64) as cap:
            captured = micro64(images)
    assert torch.equal(plain, captured)
    assert cap.keys() == [(0, b) for b in range(4)]
    assert all(not m.scan_recorders for m in attention.scan_layers(micro64).values())
    assert isinstance(cap.inputs(0, 3), models.VimScanInputs)
    assert not cap.inputs(0, 3).u.requires_grad
    assert cap.attention(0, 3).shape == (1, 60, 60)  # a 6x10 grid of 4 px patches
    with pytest.raises(IndexError, match="one stage"):
        micro64.mixer(1, 0)
    with pytest.raises(IndexError, match="has 4"):
        micro64.mixer(0, 4)


# --------------------------------------------------------------------------------------------
# Checkpoints.


@pytest.fixture(scope="module")
def micro_state():
    torch.manual_seed(1)
    model = models.build("vim-micro", num_classes=5)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
    return model.state_dict(), images, logits


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_round_trip_is_strict_and_keeps_the_order(micro_state, suffix, tmp_path):
    state_dict, images, logits = micro_state
    path = tmp_path / f"micro{suffix}"
    models.write_checkpoint(path, state_dict, {"model": "vim-micro", "order": "bidirectional"})
    keys, _ = models.read_state_dict(path)
    assert sorted(keys) == sorted(state_dict)  # no VMamba renames (head., patch_embed.proj.)
    model = models.build("vim-micro", checkpoint=path)
    assert model.head.out_features == 5 and model.order == "bidirectional"
    with torch.no_grad():
        assert torch.equal(model(images), logits)
    assert len(model.checkpoint_sha256) == 64
    models.write_checkpoint(path, state_dict, {"order": "morton"})
    assert models.build("vim-micro", checkpoint=path).order == "morton"


def test_official_layout_loads(micro_state, tmp_path):
    state_dict, images, logits = micro_state
    path = tmp_path / "vim_t_midclstok.pth"
    torch.save({"model": state_dict, "epoch": 300, "model_ema": state_dict}, path)
    with torch.no_grad():
        assert torch.equal(models.build("vim-micro", checkpoint=path)(images), logits)


def _zeros_shaped(shapes):
    # Stride-0 views of one zero: the file holds the shapes, not 100 MB of weights.
    return {key: torch.zeros(()).expand(shape) for key, shape in shapes.items()}


@pytest.mark.parametrize(
    ("source", "target", "lines"),
    [
        ("vmamba-micro", "vim-micro", [
            "vmamba-micro.pth: a VMamba checkpoint, but vim-micro is a Vim model",
            "in the checkpoint, not in the model: patch_embed.0.weight, patch_embed.0.bias",
            "in the model, not in the checkpoint: cls_token, pos_embed, patch_embed.proj.weight",
        ]),
        ("vim-micro", "vmamba-micro", [
            "vim-micro.safetensors: a Vim checkpoint, but vmamba-micro is a VMamba model",
            # safetensors keeps the keys sorted
            "in the checkpoint, not in the model: cls_token, head.bias, head.weight",
            "in the model, not in the checkpoint: patch_embed.0.weight, patch_embed.0.bias",
        ]),
    ],
)  # fmt: skip
def test_checkpoint_of_the_other_family_is_refused(source, target, lines, tmp_path):
    path = tmp_path / f"{source}{'.pth' if source.startswith('vmamba') else '.safetensors'}"
    models.write_checkpoint(path, models.build(source).state_dict(), {})
    with pytest.raises(models.CheckpointError) as err:
        models.build(target, checkpoint=path)
    for line in lines:
        assert line in str(err.value)


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("vim-small", "vim-tiny", "a vim-small checkpoint (embed_dim 384, depth 24, 14x14 "
         "patches), not vim-tiny (192, 24, 14x14 patches)"),
        ("vim-tiny-stride8", "vim-tiny", "a vim-tiny-stride8 checkpoint (embed_dim 192, depth "
         "24, 27x27 patches), not vim-tiny (192, 24, 14x14 patches)"),
        ("vim-base", "vim-small-stride8", "a vim-base checkpoint (embed_dim 768, depth 24, "
         "14x14 patches), not vim-small-stride8 (384, 24, 27x27 patches)"),
    ],
)  # fmt: skip
def test_vim_checkpoint_of_another_size_names_the_size(source, target, expected, tmp_path):
    manifest = next(m for p in MANIFESTS if (m := json.loads(p.read_text()))["ours"] == source)
    path = tmp_path / "other.pth"
    torch.save({"model": _zeros_shaped(manifest["keys"])}, path)
    with pytest.raises(models.CheckpointError, match=r"other\.pth: ") as err:
        models.build(target, checkpoint=path)
    assert expected in str(err.value)


def test_vim_of_no_known_size_and_another_image_size(micro_state, tmp_path):
    path = tmp_path / "deeper.pth"
    deeper = models.build("vim-micro", depth=5, num_classes=5).state_dict()
    torch.save({"model": deeper}, path)
    with pytest.raises(models.CheckpointError) as err:
        models.build("vim-micro", checkpoint=path)
    assert (
        "a Vim checkpoint of another size (embed_dim 64, depth 5, 8x8 patches), "
        "not vim-micro (64, 4, 8x8 patches)"
    ) in str(err.value)

    wide = models.build("vim-micro", img_size=(32, 24), num_classes=5).state_dict()
    torch.save({"model": wide}, path)
    with pytest.raises(models.CheckpointError, match=r"48 patches\), not vim-micro .*img_size"):
        models.build("vim-micro", checkpoint=path)
    assert models.build("vim-micro", checkpoint=path, img_size=(32, 24)).grid == (8, 6)
