"""Models: every config and order builds and runs; checkpoints load strictly in every
official layout; bad checkpoints give errors that name the file, the keys and the shapes."""

import json
from pathlib import Path

import pytest
import torch

from mambapanel import models, orders

MANIFEST = Path(__file__).parent / "data" / "vssm1_tiny_0230s_manifest.json"


@pytest.mark.parametrize("order", orders.available())
def test_micro_runs_with_every_order_on_non_square_images(order):
    torch.manual_seed(0)
    model = models.build("vmamba-micro", order=order, num_classes=7)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 36, 20))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert model.order == order
    assert {layer.order for layer in _ss2d(model)} == {order}


def _ss2d(model):
    return [model.ss2d(s, b) for s, depth in enumerate(model.depths) for b in range(depth)]


def test_route_count_follows_the_order():
    assert models.build("vmamba-micro", order="bidirectional").ss2d(0, 0).num_routes == 2
    assert models.build("vmamba-micro", order="cross").ss2d(0, 0).num_routes == 4


def test_tiny_matches_the_official_state_dict_manifest():
    manifest = json.loads(MANIFEST.read_text())
    ours = {k: list(v.shape) for k, v in models.build("vmamba-tiny-s1l8").state_dict().items()}
    assert ours == manifest["keys"]
    assert list(ours) == list(manifest["keys"])  # same order too


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vmamba-tiny-s2l5", "vmamba-small-s1l20", "vmamba-base-s1l20"])
def test_official_configs_build(name):
    model = models.build(name)
    n_blocks = sum(model.depths)
    assert n_blocks == sum(models.CONFIGS[name]["depths"])
    assert model.ss2d(2, n_blocks - 7 if name == "vmamba-tiny-s2l5" else 19) is not None


@pytest.fixture(scope="module")
def micro_state():
    torch.manual_seed(1)
    model = models.build("vmamba-micro", num_classes=5)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits = model(images)
    return model.state_dict(), images, logits


def official_names(state_dict):
    """Older upstream key names that the official loader renames."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("patch_embed.0.", "patch_embed.proj.").replace(
            "patch_embed.2.", "patch_embed.norm."
        )
        key = key.replace(".norm.", ".ln_1.") if ".blocks." in key else key
        key = key.replace(".op.", ".self_attention.")
        key = key.replace("classifier.norm.", "norm.").replace("classifier.head.", "head.")
        out[key] = value
    return out


@pytest.mark.parametrize("layout", ["model", "model_ema", "bare", "old_names"])
def test_checkpoint_layouts_load_strictly(layout, micro_state, tmp_path):
    state_dict, images, logits = micro_state
    content = {
        "model": {"model": state_dict, "epoch": 3},
        "model_ema": {"model_ema": state_dict},
        "bare": state_dict,
        "old_names": {"model": official_names(state_dict)},
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(content, path)
    model = models.build("vmamba-micro", checkpoint=path)
    with torch.no_grad():
        assert torch.equal(model(images), logits)
    assert len(model.checkpoint_sha256) == 64


def test_checkpoint_records_order(micro_state, tmp_path):
    state_dict, _, _ = micro_state
    path = tmp_path / "ours.pth"
    torch.save({"model": state_dict, "mambapanel": {"order": "morton"}}, path)
    assert models.build("vmamba-micro", checkpoint=path).order == "morton"
    assert models.build("vmamba-micro", checkpoint=path, order="spiral").order == "spiral"


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(models.CheckpointError, match=r"notes\.pth: not a PyTorch checkpoint"):
        models.build("vmamba-micro", checkpoint=path)
    with pytest.raises(models.CheckpointError, match="no such checkpoint file"):
        models.build("vmamba-micro", checkpoint=tmp_path / "absent.pth")
    torch.save({"epoch": 3, "config": "x"}, tmp_path / "empty.pth")
    with pytest.raises(models.CheckpointError, match=r"holds no tensors.*epoch"):
        models.build("vmamba-micro", checkpoint=tmp_path / "empty.pth")


def test_bad_checkpoint_lists_keys_and_shapes(micro_state, tmp_path):
    state_dict = dict(micro_state[0])
    del state_dict["layers.0.blocks.0.op.Ds"]
    state_dict["layers.0.blocks.0.op.extra"] = torch.zeros(1)
    state_dict["layers.1.blocks.0.op.A_logs"] = torch.zeros(3, 1)
    path = tmp_path / "bad.pth"
    torch.save({"model": state_dict}, path)
    with pytest.raises(models.CheckpointError) as err:
        models.build("vmamba-micro", checkpoint=path)
    message = str(err.value)
    assert "bad.pth" in message and "vmamba-micro" in message
    assert "missing keys (1):\n    layers.0.blocks.0.op.Ds" in message
    assert "unexpected keys (1):\n    layers.0.blocks.0.op.extra" in message
    expected = tuple(micro_state[0]["layers.1.blocks.0.op.A_logs"].shape)  # (4 routes x 32, 1)
    assert f"layers.1.blocks.0.op.A_logs: checkpoint (3, 1), model {expected}" in message


def test_unknown_model_name():
    with pytest.raises(KeyError, match=r"unknown model 'vmamba-huge'.*vmamba-micro"):
        models.build("vmamba-huge")


class TrainingConfig(dict):
    """Like upstream's yacs CfgNode: a dict subclass pickled into training checkpoints."""

    def __setstate__(self, state):
        raise AssertionError("loading a checkpoint must not run code of pickled classes")


def test_training_checkpoint_with_a_pickled_config_loads_without_running_it(micro_state, tmp_path):
    state_dict, images, logits = micro_state
    config = TrainingConfig(MODEL="vssm", EPOCHS=300)
    config.__dict__["note"] = "makes pickle call __setstate__"
    path = tmp_path / "ckpt_epoch_264.pth"
    torch.save({"model": state_dict, "config": config, "epoch": 264}, path)
    with pytest.raises(Exception, match=r"Unsupported global|weights_only"):
        torch.load(path, weights_only=True)  # what a plain safe load says
    model = models.build("vmamba-micro", checkpoint=path)
    with torch.no_grad():
        assert torch.equal(model(images), logits)


def test_conv_shaped_linear_weights_load(micro_state, tmp_path):
    state_dict, images, logits = micro_state
    convs = {
        k: v[:, :, None, None] if k.endswith(("in_proj.weight", "fc1.weight")) else v
        for k, v in state_dict.items()
    }
    torch.save({"model": convs}, tmp_path / "conv.pth")
    model = models.build("vmamba-micro", checkpoint=tmp_path / "conv.pth")
    with torch.no_grad():
        assert torch.equal(model(images), logits)
