"""Training (`python -m compute train`) and the committed demo checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from compute import demo
from compute.__main__ import main
from mambapanel import data, datasets, models, train


def tiny_dataset() -> datasets.Dataset:
    """Two classes a small model learns in a few steps: a bright square top-left vs
    bottom-right on black, 24 training and 12 test images."""
    rng = np.random.default_rng(0)

    def split(n: int, offset: int) -> datasets.Split:
        images, labels = [], []
        for i in range(n):
            label = i % 2
            pixels = rng.integers(0, 40, (8, 8), dtype=np.uint8)
            corner = slice(0, 4) if label == 0 else slice(4, 8)
            pixels[corner, corner] = 255
            images.append(Image.fromarray(pixels).convert("RGB"))
            labels.append(label)
        ids = tuple(f"tiny-{offset + i}" for i in range(n))
        return datasets.Split(tuple(images), np.array(labels), ids)

    return datasets.Dataset("tiny", "two corners", ("top-left", "bottom-right"), split(24, 0),
                            split(12, 100))  # fmt: skip


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(datasets.DATASETS, "tiny", tiny_dataset)
    datasets.load.cache_clear()
    yield "tiny"
    datasets.load.cache_clear()


def test_shift_moves_each_image_by_its_offset_and_repeats_the_edge():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    generator = torch.Generator().manual_seed(3)
    offsets = torch.randint(0, 5, (2, 2), generator=torch.Generator().manual_seed(3))
    shifted = train._shifted(images, 2, generator)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="replicate")
    for i, (dy, dx) in enumerate(offsets.tolist()):
        torch.testing.assert_close(shifted[i], padded[i, :, dy : dy + 6, dx : dx + 6])
    assert train._shifted(images, 0, generator) is images


def test_train_writes_an_official_layout_checkpoint_that_reloads_with_its_accuracy(tiny, tmp_path):
    config = train.TrainConfig(order="morton", dataset=tiny, image_size=32, epochs=4,
                               batch_size=8, shift=1)  # fmt: skip
    meta = train.train(config, tmp_path / "m.pth", progress=False)
    saved = torch.load(tmp_path / "m.pth", weights_only=True)
    assert set(saved) == {"model", "mambapanel"}
    assert all(v.dtype == torch.float16 for v in saved["model"].values() if v.is_floating_point())
    assert not (tmp_path / "m.pth.partial").exists()
    # The order and the head size come from the checkpoint; the recorded accuracy is that of
    # the weights as saved.
    model = models.build("vmamba-micro", checkpoint=tmp_path / "m.pth")
    assert model.order == "morton" and model.classifier.head.out_features == 2
    test = datasets.load(tiny).test
    x, y = data.preprocess(list(test.images), 32), torch.as_tensor(test.labels)
    assert train.accuracy(model, x, y) == meta["test_accuracy"]
    assert meta["test_accuracy"] > 0.9  # chance is 0.5
    assert meta["config"]["order"] == "morton" and len(meta["loss_per_epoch"]) == 4
    # Same seed, same weights.
    train.train(config, tmp_path / "again.pth", progress=False)
    again = torch.load(tmp_path / "again.pth", weights_only=True)["model"]
    assert all(torch.equal(again[k], v) for k, v in saved["model"].items())


def test_train_command_line(tiny, tmp_path, capsys):
    out = tmp_path / "cli.pth"
    assert main(["train", "--data", tiny, "--order", "spiral", "--epochs", "1", "--size", "32",
                 "--batch-size", "12", "--storage", "float32", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"{out}: vmamba-micro spiral, test accuracy" in printed
    meta = models.read_state_dict(out)[1]
    assert meta["order"] == "spiral" and meta["storage_dtype"] == "float32"
    assert meta["command"].startswith("python -m compute")
    with pytest.raises(SystemExit):
        main(["train", "--data", "nope", "--out", str(out)])


def test_train_command_line_writes_safetensors(tiny, tmp_path):
    out = tmp_path / "cli.safetensors"
    assert main(["train", "--data", tiny, "--epochs", "1", "--size", "32", "--batch-size",
                 "12", "--out", str(out)]) == 0  # fmt: skip
    assert out.read_bytes()[8:9] == b"{"  # the safetensors header, no pickle
    tensors, meta = models.read_state_dict(out)
    assert meta["config"]["image_size"] == 32 and meta["storage_dtype"] == "float16"
    model = models.build("vmamba-micro", checkpoint=out)
    assert model.classifier.head.out_features == 2
    assert torch.equal(model.state_dict()["classifier.head.weight"],
                       tensors["classifier.head.weight"].float())  # fmt: skip


@pytest.fixture
def no_training(monkeypatch):
    """Training that fails loudly if it starts: each refusal below must come first."""

    def started(name):
        raise AssertionError("the training started before its settings were checked")

    monkeypatch.setattr(datasets, "load", started)


@pytest.mark.parametrize(
    "where, message",
    [
        ("read-only", "cannot write in"),
        ("under-a-file", "is a file; a folder is needed there"),
        ("a-folder", "is a directory"),
        ("no-suffix", "a checkpoint's name ends in one of .pth, .pt, .safetensors"),
    ],
)
def test_train_checks_its_output_before_training(
    where, message, no_training, read_only_folder, tmp_path, capsys
):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder.pth").mkdir()
    out = {
        "read-only": read_only_folder / "m.pth",
        "under-a-file": tmp_path / "file" / "m.pth",
        "a-folder": tmp_path / "folder.pth",
        "no-suffix": tmp_path / "model",
    }[where]
    assert main(["train", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {out}: ") and message in error


@pytest.mark.parametrize("setting", ["epochs", "batch_size", "image_size", "lr"])
def test_train_refuses_settings_that_train_nothing(setting, no_training, tmp_path):
    config = train.TrainConfig(**{setting: 0})
    with pytest.raises(train.TrainError, match=f"train: {setting} must be positive, got 0"):
        train.train(config, tmp_path / "m.pth", progress=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", demo.DEMO_MODELS)
def test_demo_checkpoint_beats_chance_with_its_recorded_accuracy(name):
    path = demo.checkpoint(name)
    _, meta = models.read_state_dict(path)
    assert (meta["model"], meta["order"]) == demo.DEMO_MODELS[name]
    model = models.build(meta["model"], checkpoint=path)
    test = datasets.load("demo").test
    x = data.preprocess(list(test.images), meta["config"]["image_size"])
    y = torch.as_tensor(test.labels)
    accuracy = train.accuracy(model, x, y)
    assert accuracy == meta["test_accuracy"]
    assert accuracy > 0.9  # chance: 0.1 (stratified 10 classes)
    # The demo models rely on their scans (else their hidden attention would mean nothing).
    without = train.accuracy_without_scan(model, x, y)
    assert without == meta["test_accuracy_without_scan"]
    assert without < accuracy - 0.05


def test_without_scan_removes_exactly_the_attention_term():
    torch.manual_seed(0)
    model = models.build("vmamba-micro", num_classes=3)
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        before = model(x)
        for layer in train.ssm_layers(model):
            layer.x_proj_weight.uniform_(-1, 1)  # as train() starts: the scan matters
            layer.Ds.fill_(0.1)
        scanning = model(x)
        assert (scanning - before).abs().max() > 1e-3
        reference = models.build("vmamba-micro", num_classes=3)
        reference.load_state_dict(model.state_dict())
        for layer in train.ssm_layers(reference):
            layer.x_proj_weight[:, -2:].zero_()  # B = C = 0 (d_state 1): α = 0 exactly
        expected = reference(x)
    calls = []
    original = train.accuracy
    train.accuracy = lambda m, images, labels: calls.append(m(images)) or 0.0
    try:
        train.accuracy_without_scan(model, x, y)
    finally:
        train.accuracy = original
    assert train.ssm_layers(model)[0].d_state == 1  # B and C are the last two x_proj rows
    torch.testing.assert_close(calls[0], expected)
    with torch.no_grad():
        torch.testing.assert_close(model(x), scanning)  # the model's own scan is back


def test_train_a_vim_at_its_own_size(tiny, tmp_path):
    config = train.TrainConfig(model="vim-micro", order="morton", dataset=tiny, epochs=1,
                               batch_size=12, shift=1)  # fmt: skip
    meta = train.train(config, tmp_path / "vim.pth", progress=False)
    assert meta["config"]["image_size"] == 32  # vim-micro's own
    model = models.build("vim-micro", checkpoint=tmp_path / "vim.pth")
    assert model.order == "morton" and model.head.out_features == 2
    # The departures from Mamba's initialisation reach both routes of every mixer.
    assert set(meta["test_accuracy_other_order"]) == {"cross", "random"}
    with pytest.raises(train.TrainError, match="vim-micro takes 32 px images"):
        train.train(train.TrainConfig(model="vim-micro", image_size=64, dataset=tiny),
                    tmp_path / "no.pth", progress=False)  # fmt: skip


def test_without_scan_of_a_vim_removes_exactly_the_attention_term():
    torch.manual_seed(0)
    model = models.build("vim-micro", num_classes=3)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for layer in train.ssm_layers(model):
            for skip, projection in zip(*train._skips_and_projections(layer), strict=True):
                skip.fill_(0.3)
                projection.uniform_(-1, 1)
        scanning = model(x)
        reference = models.build("vim-micro", num_classes=3)
        reference.load_state_dict(model.state_dict())
        for layer in train.ssm_layers(reference):  # B = C = 0: α = 0 exactly
            for projection in train._skips_and_projections(layer)[1]:
                projection[-2 * layer.d_state :].zero_()
        expected = reference(x)
    assert (scanning - expected).abs().max() > 1e-3
    calls = []
    original = train.accuracy
    train.accuracy = lambda m, images, labels: calls.append(m(images)) or 0.0
    try:
        train.accuracy_without_scan(model, x, None)
    finally:
        train.accuracy = original
    torch.testing.assert_close(calls[0], expected)
    with torch.no_grad():
        torch.testing.assert_close(model(x), scanning)


def test_demo_checkpoints_are_small():
    total = sum(demo.checkpoint(name).stat().st_size for name in demo.DEMO_MODELS)
    assert total < 20 * 2**20
