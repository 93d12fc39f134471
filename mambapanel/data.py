"""Image sources for extraction (a folder, flat or ImageNet-style, or a packaged source:
``demo``, the held-out digits of the demo models, and ``photos``, the two photographs shipped
with scikit-learn) and the preprocessing every model here expects (8-bit RGB, resize, centre
crop, normalise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mambapanel.errors import MambapanelError

# The normalisation VMamba was trained with (ImageNet statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What transparent pixels are laid on: white, as a web page shows an image. A new run lists
# the images it composited (compute extract).
BACKGROUND = (255, 255, 255)
# 16-bit grayscale, as Pillow (>= 10.3) opens PNG and TIFF files: scaled to 8 bits.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# 32-bit pixels, integer or float, have no known range: refused rather than guessed.
UNKNOWN_RANGE_MODES = ("I", "F")

T = TypeVar("T")


class ImageSourceError(MambapanelError, ValueError):
    """A source that does not exist or holds too few readable images."""


def transparent(image: Image.Image) -> bool:
    """Whether ``image`` has transparency: an alpha band, or a palette or colour key with one."""
    return bool({"A", "a"} & set(image.getbands())) or "transparency" in image.info


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, as the models take it. ``convert("RGB")`` alone would clip 16-bit grayscale
    to 255 (most of such an image turns white) and drop transparency; here 16-bit grayscale
    is scaled (65535 -> 255) and transparent pixels are composited on :data:`BACKGROUND`.

    Raises
    ------
    ValueError
        32-bit pixels (modes ``I``, ``F``), whose range is unknown.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray(np.rint(np.asarray(image) / 257).astype(np.uint8)).convert("RGB")
    if image.mode in UNKNOWN_RANGE_MODES:
        raise ValueError(
            f"32-bit pixels (mode {image.mode}) have no known range; save the image with 8 or "
            "16 bits per channel"
        )
    if transparent(image):
        background = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class ImageFile:
    """One image of a source: ``image_id`` is its path relative to the source root ('/'
    separated); ``label`` its class folder ('' in a flat folder). A packaged source may hold
    its images in memory: then ``path`` is None and ``read`` returns the image."""

    image_id: str
    label: str
    path: Path | None
    read: Callable[[], Image.Image] | None = field(default=None, compare=False, repr=False)

    def open(self, convert: Callable[[Image.Image], T] = to_rgb) -> T:
        """``convert`` of the image as decoded (default :func:`to_rgb`: 8-bit RGB)."""
        return convert(self.read()) if self.read is not None else load_image(self.path, convert)


@dataclass(frozen=True)
class LabelledImage:
    image_id: str
    image: Image.Image
    label: str = ""


@dataclass(frozen=True)
class Selection:
    """The images chosen from a source, the files passed over as ``"id: reason"``, and the
    ids of chosen images whose transparency is composited on :data:`BACKGROUND`."""

    source: str
    images: list[ImageFile]
    skipped: list[str] = field(default_factory=list)
    composited: list[str] = field(default_factory=list)


def _sklearn_photographs() -> list[ImageFile]:
    """The two photographs packaged with scikit-learn (china.jpg, flower.jpg): no download."""
    root = Path(str(resources.files("sklearn.datasets.images")))
    return [ImageFile(path.name, "", path) for path in sorted(root.glob("*.jpg"))]


def _demo_digits() -> list[ImageFile]:
    """The held-out split of the demo dataset (``mambapanel.datasets``), labelled 0-9."""
    from mambapanel import datasets

    test = datasets.load("demo").test
    return [
        ImageFile(image_id, str(label), None, read=image.copy)
        for image_id, label, image in zip(test.ids, test.labels, test.images, strict=True)
    ]


# Packaged sources by name: a function listing its files. ``--images NAME`` picks one;
# anything else given to ``--images`` is a directory.
PACKAGED_SOURCES: dict[str, Callable[[], list[ImageFile]]] = {
    "demo": _demo_digits,
    "photos": _sklearn_photographs,
}


def resolve_source(source: str | Path) -> str:
    """The canonical spelling of a source: a packaged name as is, a directory made absolute
    (workers and later runs may start elsewhere)."""
    source = str(source)
    return source if source in PACKAGED_SOURCES else str(Path(source).expanduser().resolve())


def list_files(source: str | Path) -> list[ImageFile]:
    """Every candidate file of a source, sorted by ``image_id`` (deterministic order).

    A directory is walked recursively; files directly in it get label '', files under a
    sub-folder get that first-level folder's name (the ImageNet layout). Hidden files and
    folders (name starting with '.') are left out: they are tool litter, not images.
    """
    source = resolve_source(source)
    if source in PACKAGED_SOURCES:
        return PACKAGED_SOURCES[source]()
    root = Path(source)
    if not root.is_dir():
        packaged = ", ".join(sorted(PACKAGED_SOURCES))
        raise ImageSourceError(
            f"{root}: no such directory (--images takes a directory or one of: {packaged})"
        )
    files = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if path.is_file() and not any(part.startswith(".") for part in parts):
            files.append(ImageFile("/".join(parts), parts[0] if len(parts) > 1 else "", path))
    return sorted(files, key=lambda f: f.image_id)


def open_image(source: str, image_id: str) -> Image.Image:
    """Image ``image_id`` of ``source``, decoded, RGB (how workers read a stored run's images)."""
    if source in PACKAGED_SOURCES:
        files = {f.image_id: f for f in PACKAGED_SOURCES[source]()}
        if image_id not in files:
            raise ImageSourceError(f"packaged source {source!r} has no image {image_id!r}")
        return files[image_id].open()
    return load_image(Path(source, image_id))


def select_images(source: str | Path, n: int | None = None) -> Selection:
    """The first ``n`` readable images of a source (all when ``n`` is None), in sorted order.

    Each candidate is fully decoded once, so a truncated file is caught here and not on a
    worker. Files that are not images or cannot be read are skipped and listed.

    Raises
    ------
    ImageSourceError
        ``n`` is below 1, or the source does not exist, has no readable image, or fewer
        than ``n``.
    """
    source = resolve_source(source)
    if n is not None and n < 1:  # not "no image", and not "all" for a negative n
        raise ImageSourceError(f"{source}: n must be at least 1 image (None: all), got {n}")
    chosen, skipped, composited = [], [], []
    for file in list_files(source):
        if n is not None and len(chosen) == n:
            break
        try:
            if file.open(_convertible_and_transparent):
                composited.append(file.image_id)
        except UnidentifiedImageError:
            skipped.append(f"{file.image_id}: not an image")
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            skipped.append(f"{file.image_id}: unreadable ({err})")
        else:
            chosen.append(file)
    if not chosen or (n is not None and len(chosen) < n):
        found = f"only {len(chosen)} readable images, {n} asked for" if chosen else "no image"
        passed_over = f"; skipped {len(skipped)}: {', '.join(skipped[:5])}" if skipped else ""
        raise ImageSourceError(f"{source}: {found}{passed_over}")
    return Selection(source, chosen, skipped, composited)


def _convertible_and_transparent(image: Image.Image) -> bool:
    to_rgb(image)  # what a worker will do, so that a refusal is a skipped file, not a failure
    return transparent(image)


def load_image(path: str | Path, convert: Callable[[Image.Image], T] = to_rgb) -> T:
    """Decode an image file completely; ``convert`` of it (default :func:`to_rgb`)."""
    with Image.open(path) as image:
        image.load()
        return convert(image)


def sample_images(source: str = "photos") -> list[LabelledImage]:
    """The images of a packaged source (default: the two photographs), decoded."""
    return [LabelledImage(file.image_id, file.open(), file.label) for file in list_files(source)]


def centre_crop(image: Image.Image, size: int) -> Image.Image:
    """8-bit RGB (:func:`to_rgb`), shorter side resized to ``size``, centre crop."""
    image = to_rgb(image)
    scale = size / min(image.size)
    width, height = (max(size, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def preprocess(images: list[Image.Image], size: int) -> torch.Tensor:
    """Centre-cropped to ``size`` and ImageNet-normalised: r(B, 3, size, size)."""
    batch = [np.asarray(centre_crop(image, size), dtype=np.float32) / 255.0 for image in images]
    pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (pixels - mean) / std


def thumbnail(image: Image.Image, size: int) -> np.ndarray:
    """The same centre crop the model sees, at ``size`` pixels: uint8 (size, size, 3)."""
    return np.asarray(centre_crop(image, size), dtype=np.uint8)
