"""Image sources: folders (flat and ImageNet-style), the packaged demo, skipping of files
that are not readable images, and the crop shared by the model input and the thumbnail."""

import re

import numpy as np
import pytest
from PIL import Image

from mambapanel import data


def write_image(path, size=(40, 30), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_flat_folder_sorted_with_unreadable_files_skipped_and_named(tmp_path):
    write_image(tmp_path / "b.png")
    write_image(tmp_path / "a.jpg", seed=1)
    (tmp_path / "notes.txt").write_text("not an image")
    write_image(tmp_path / "whole.jpg", seed=2)
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:200])
    (tmp_path / "whole.jpg").unlink()
    write_image(tmp_path / ".hidden" / "c.png")  # tool litter: not listed at all
    selection = data.select_images(tmp_path)
    assert [image.image_id for image in selection.images] == ["a.jpg", "b.png"]
    assert [image.label for image in selection.images] == ["", ""]
    assert selection.source == str(tmp_path.resolve())
    assert selection.skipped[0] == "notes.txt: not an image"
    assert selection.skipped[1].startswith("truncated.jpg: unreadable")


def test_imagenet_layout_gives_labels_and_first_n(tmp_path):
    for name in ("dog/2.png", "cat/1.png", "dog/1.png"):
        write_image(tmp_path / name)
    selection = data.select_images(tmp_path, n=2)
    assert [(i.image_id, i.label) for i in selection.images] == [
        ("cat/1.png", "cat"),
        ("dog/1.png", "dog"),
    ]
    reread = np.asarray(data.open_image(selection.source, "dog/2.png"))
    np.testing.assert_array_equal(reread, np.asarray(Image.open(tmp_path / "dog/2.png")))


def test_empty_missing_and_too_small_sources_are_errors_naming_the_path(tmp_path):
    with pytest.raises(data.ImageSourceError, match=f"{tmp_path}: no image"):
        data.select_images(tmp_path)
    (tmp_path / "readme.md").write_text("#")
    with pytest.raises(
        data.ImageSourceError, match=re.escape("skipped 1: readme.md: not an image")
    ):
        data.select_images(tmp_path)
    with pytest.raises(data.ImageSourceError, match="missing: no such directory"):
        data.select_images(tmp_path / "missing")
    write_image(tmp_path / "one.png")
    with pytest.raises(data.ImageSourceError, match="only 1 readable images, 3 asked for"):
        data.select_images(tmp_path, n=3)


def test_packaged_sources_and_registry(tmp_path, monkeypatch):
    photos = data.select_images("photos")
    assert [i.image_id for i in photos.images] == ["china.jpg", "flower.jpg"]
    assert photos.source == "photos" and photos.skipped == []
    assert data.open_image("photos", "china.jpg").size == (640, 427)
    assert [s.image_id for s in data.sample_images()] == ["china.jpg", "flower.jpg"]
    write_image(tmp_path / "x.png")
    files = [data.ImageFile("x.png", "thing", tmp_path / "x.png")]
    monkeypatch.setitem(data.PACKAGED_SOURCES, "tiny", lambda: files)
    assert data.select_images("tiny").images == files
    with pytest.raises(data.ImageSourceError, match=re.escape("has no image 'y.png'")):
        data.open_image("tiny", "y.png")


def test_demo_source_is_the_held_out_digits_in_memory():
    from mambapanel import datasets

    demo = data.select_images("demo")
    dataset = datasets.load("demo")
    assert len(demo.images) == len(dataset.test) == 360
    assert not set(dataset.test.ids) & set(dataset.train.ids)  # held out
    assert [f.label for f in demo.images[:5]] == [str(y) for y in dataset.test.labels[:5]]
    assert np.bincount(dataset.test.labels).min() >= 35  # stratified: every digit present
    first = data.open_image("demo", demo.images[0].image_id)
    assert first.mode == "RGB" and first.size == (8, 8)
    assert np.asarray(first).max() > 200 and np.asarray(first).min() == 0


def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped(tmp_path):
    gradient = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(gradient).save(tmp_path / "depth.png")  # a 16-bit grayscale PNG
    with Image.open(tmp_path / "depth.png") as stored:
        assert stored.mode == "I;16"
    pixels = np.asarray(data.load_image(tmp_path / "depth.png"))
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    expected = np.rint(gradient / 257).astype(np.uint8)  # 65535 -> 255
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], expected)
    assert (pixels == 255).mean() < 0.01  # convert("RGB") alone: 99.6 % white


def test_transparency_is_composited_on_the_stated_background_and_listed(tmp_path, capsys):
    from compute.extract import report_selection

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = (200, 0, 0, 255)  # opaque red
    rgba[2] = (200, 0, 0, 100)  # partly transparent red
    rgba[3] = (0, 0, 0, 0)  # transparent (black underneath, as often stored)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 10, 20, 30])
    palette.paste(1, (0, 0, 4, 2))
    palette.save(tmp_path / "b.png", transparency=0)  # index 0 (black) is transparent
    write_image(tmp_path / "c.png")
    selection = data.select_images(tmp_path)
    assert selection.composited == ["a.png", "b.png"] and selection.skipped == []

    white = np.array(data.BACKGROUND, np.float64)
    pixels = np.asarray(data.load_image(tmp_path / "a.png")).astype(np.float64)
    np.testing.assert_array_equal(pixels[:2], np.full((2, 4, 3), (200, 0, 0)))
    partly = (np.array([200, 0, 0]) * 100 + white * 155) / 255
    np.testing.assert_allclose(pixels[2], np.broadcast_to(partly, (4, 3)), atol=1)
    np.testing.assert_array_equal(pixels[3], np.broadcast_to(white, (4, 3)))
    pixels = np.asarray(data.load_image(tmp_path / "b.png"))
    np.testing.assert_array_equal(pixels[:2], np.full((2, 4, 3), (10, 20, 30), np.uint8))
    np.testing.assert_array_equal(pixels[2:], np.full((2, 4, 3), 255, np.uint8))

    report_selection(selection)
    assert (
        "2 images have transparency: the model sees them laid on the background RGB "
        "(255, 255, 255): a.png, b.png"
    ) in capsys.readouterr().out


def test_32_bit_images_of_unknown_range_are_skipped_with_the_reason(tmp_path):
    Image.fromarray(np.full((8, 8), 1000.5, np.float32)).save(tmp_path / "f.tif")
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "i.tif")
    write_image(tmp_path / "ok.png")
    selection = data.select_images(tmp_path)
    assert [image.image_id for image in selection.images] == ["ok.png"]
    assert selection.skipped == [
        f"{name}.tif: unreadable (32-bit pixels (mode {mode}) have no known range; save the "
        "image with 8 or 16 bits per channel)"
        for name, mode in (("f", "F"), ("i", "I"))
    ]


def test_thumbnail_is_the_model_crop():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), np.uint8))
    thumb = data.thumbnail(image, 16)
    assert thumb.shape == (16, 16, 3) and thumb.dtype == np.uint8
    pixels = data.preprocess([image], 16)[0].permute(1, 2, 0).numpy()
    unnormalised = pixels * np.array(data.IMAGENET_STD) + np.array(data.IMAGENET_MEAN)
    np.testing.assert_allclose(unnormalised * 255, thumb, atol=1e-3)
