"""Labelled image datasets for training the demo models (``python -m compute train``).

``demo`` is scikit-learn's handwritten digits (1,797 8x8 greyscale images of 0-9, shipped
inside the scikit-learn wheel, so nothing is downloaded), split once into a stratified
training set and a held-out test set (20 %, seed 0). The held-out images are also the image
source ``demo`` of :mod:`mambapanel.data`, on which the demo runs are extracted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class Split:
    """Images (RGB PIL), integer labels and stable ids (``digit-0123``: index in the set)."""

    images: tuple[Image.Image, ...]
    labels: np.ndarray
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    classes: tuple[str, ...]
    train: Split
    test: Split


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Values are 0..16 ink counts; scale to 0..255 grey and give the model its 3 channels.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    indices = np.arange(len(pixels))
    train, test = train_test_split(
        indices, test_size=TEST_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )

    def split(chosen: np.ndarray) -> Split:
        chosen = np.sort(chosen)
        return Split(
            images=tuple(Image.fromarray(pixels[i]).convert("RGB") for i in chosen),
            labels=digits.target[chosen].astype(np.int64),
            ids=tuple(f"digit-{i:04d}" for i in chosen),
        )

    return Dataset(
        name="demo",
        description="scikit-learn digits (8x8 greyscale, 10 classes), stratified 80/20 split, "
        f"seed {SPLIT_SEED}",
        classes=tuple(str(c) for c in digits.target_names),
        train=split(train),
        test=split(test),
    )


DATASETS: dict[str, Callable[[], Dataset]] = {"demo": _digits}


def available() -> list[str]:
    return sorted(DATASETS)


@functools.lru_cache(maxsize=4)
def load(name: str) -> Dataset:
    """The dataset ``name`` (one of :func:`available`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    return DATASETS[name]()
