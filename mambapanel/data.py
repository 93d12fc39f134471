"""Image sources for extraction: the sample photographs that ship with scikit-learn (no
download), and the preprocessing every model here expects (resize, centre crop, normalise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# The normalisation VMamba was trained with (ImageNet statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LabelledImage:
    image_id: str
    image: Image.Image
    label: str = ""


def sample_images() -> list[LabelledImage]:
    """The two photographs packaged with scikit-learn (china.jpg, flower.jpg)."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    return [
        LabelledImage(image_id=path.rsplit("/", 1)[-1], image=Image.fromarray(pixels))
        for path, pixels in zip(bunch.filenames, bunch.images, strict=True)
    ]


def preprocess(images: list[Image.Image], size: int) -> torch.Tensor:
    """RGB, shorter side to ``size``, centre crop, ImageNet-normalised: r(B, 3, size, size)."""
    batch = []
    for image in images:
        image = image.convert("RGB")
        scale = size / min(image.size)
        width, height = (max(size, round(side * scale)) for side in image.size)
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - size) // 2, (height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        batch.append(np.asarray(image, dtype=np.float32) / 255.0)
    pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (pixels - mean) / std
