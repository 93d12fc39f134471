"""Image sources for extraction (a folder, flat or ImageNet-style, or a packaged source:
``demo``, the held-out digits of the demo models, and ``photos``, the two photographs shipped
with scikit-learn) and the preprocessing every model here expects (resize, centre crop,
normalise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# The normalisation VMamba was trained with (ImageNet statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageSourceError(ValueError):
    """A source that does not exist or holds too few readable images."""


@dataclass(frozen=True)
class ImageFile:
    """One image of a source: ``image_id`` is its path relative to the source root ('/'
    separated); ``label`` its class folder ('' in a flat folder). A packaged source may hold
    its images in memory: then ``path`` is None and ``read`` returns the image."""

    image_id: str
    label: str
    path: Path | None
    read: Callable[[], Image.Image] | None = field(default=None, compare=False, repr=False)

    def open(self) -> Image.Image:
        """The image, fully decoded, in RGB."""
        return self.read().convert("RGB") if self.read is not None else load_image(self.path)


@dataclass(frozen=True)
class LabelledImage:
    image_id: str
    image: Image.Image
    label: str = ""


@dataclass(frozen=True)
class Selection:
    """The images chosen from a source, and the files passed over as ``"id: reason"``."""

    source: str
    images: list[ImageFile]
    skipped: list[str] = field(default_factory=list)


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


def register_source(name: str, list_files: Callable[[], list[ImageFile]]) -> None:
    """Make a packaged source available by ``name`` (``--images name``)."""
    PACKAGED_SOURCES[name] = list_files


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
    chosen, skipped = [], []
    for file in list_files(source):
        if n is not None and len(chosen) == n:
            break
        try:
            file.open()
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
    return Selection(source, chosen, skipped)


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file completely and convert it to RGB."""
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def sample_images(source: str = "photos") -> list[LabelledImage]:
    """The images of a packaged source (default: the two photographs), decoded."""
    return [LabelledImage(file.image_id, file.open(), file.label) for file in list_files(source)]


def centre_crop(image: Image.Image, size: int) -> Image.Image:
    """RGB, shorter side resized to ``size``, centre ``size`` x ``size`` crop."""
    image = image.convert("RGB")
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
