"""Training of small VMamba and Vim models on a packaged dataset (``python -m compute train``).

The demo models are trained here: one ``vmamba-micro`` per patch order on the ``demo``
dataset (:mod:`mambapanel.datasets`), each with a fixed seed, so that the committed
checkpoints can be reproduced by the commands in ``tools/train_demo.sh``.

A checkpoint has the layout of the official VMamba ones, ``{"model": state_dict}``, plus a
``mambapanel`` entry of metadata (model, order, dataset, image size, accuracies, command);
or, when the output's name ends in ``.safetensors``, the same tensors and metadata (JSON) in
that format.

Initialisation. Training starts from D = 0 and x_proj in ±1 (both recorded in the
checkpoint), not Mamba's D = 1 and ±1/sqrt(d_inner): with Mamba's, the small models learned
to classify through the skip alone and their scans, so their hidden attention, showed
nothing learned (the figures: benchmarks/RESULTS.md, Figures behind choices).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mambapanel import data, datasets, models, orders
from mambapanel.errors import MambapanelError, check_writable_folder
from mambapanel.models.vim import BiMamba, Vim, token_routes
from mambapanel.models.vmamba import SS2D, VSSM

STORAGE_DTYPES = ("float32", "float16")
DEFAULT_SIZE = 64  # VMamba's input side when none is given: the 8x8 digits upscaled


class TrainError(MambapanelError, ValueError):
    """A training run that cannot start: a bad setting or an output that cannot be written."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (recorded in the checkpoint)."""

    model: str = "vmamba-micro"
    order: str = "cross"
    dataset: str = "demo"
    image_size: int | None = None  # None: the model's own (a Vim's), else DEFAULT_SIZE
    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    shift: int = 4
    seed: int = 0
    # Two departures from Mamba's initialisation (D = 1, x_proj uniform in ±1/sqrt(d_inner)),
    # see the module docstring.
    skip_init: float = 0.0
    x_proj_init: float = 1.0

    def resolved(self) -> TrainConfig:
        """This config with its image size decided; a Vim takes only its own size."""
        own = models.input_size(self.model)
        if own is not None and self.image_size not in (None, own):
            raise TrainError(
                f"train: {self.model} takes {own} px images (its position embedding has one "
                f"row per patch), got image_size {self.image_size}"
            )
        return replace(self, image_size=self.image_size or own or DEFAULT_SIZE)

    def check(self) -> None:
        """Refuse values that would fail later or train nothing, naming the setting."""
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "image_size": self.image_size if self.image_size is not None else 1,
            "lr": self.lr,
        }
        for name, value in positive.items():
            if not value > 0:
                raise TrainError(f"train: {name} must be positive, got {value}")
        if self.shift < 0:
            raise TrainError(f"train: shift must be 0 or more, got {self.shift}")


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")


def check_output(out: Path) -> None:
    """Refuse an output that could not be written once the training is done."""
    if out.suffix not in CHECKPOINT_SUFFIXES:
        raise TrainError(
            f"{out}: a checkpoint's name ends in one of {', '.join(CHECKPOINT_SUFFIXES)} "
            f"(.safetensors holds tensors only), found {out.suffix or 'no suffix'!r}"
        )
    if out.is_dir():
        raise TrainError(f"{out}: is a directory; give the checkpoint file to write")
    check_writable_folder(out.parent, str(out))


def _tensors(split: datasets.Split, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return data.preprocess(list(split.images), size), torch.as_tensor(split.labels)


def _shifted(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to ``shift`` pixels in x and y; the border repeats the edge
    (the digits' background), so no artificial frame appears."""
    if shift == 0:
        return images
    size = images.shape[-1]
    padded = F.pad(images, (shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (len(images), 2), generator=generator)
    return torch.stack(
        [
            padded[i, :, dy : dy + size, dx : dx + size]
            for i, (dy, dx) in enumerate(offsets.tolist())
        ]
    )


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` whose arg-max logit is the label (eval mode, batches of 256)."""
    model.eval()
    correct = sum(
        int((model(images[i : i + 256]).argmax(-1) == labels[i : i + 256]).sum())
        for i in range(0, len(images), 256)
    )
    return correct / len(images)


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    storage: str = "float16",
    command: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``config.model`` with ``config.order`` on ``config.dataset``; save to ``out``.

    AdamW with a linear warm-up (one epoch) and cosine decay, cross-entropy, random shifts
    of up to ``config.shift`` pixels. The test accuracy is measured on the held-out split
    with the weights as saved (``storage`` dtype, cast back to float32 on loading).

    Returns the checkpoint's metadata.
    """
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {STORAGE_DTYPES}, got {storage!r}")
    config.check()
    config = config.resolved()
    out = Path(out)
    check_output(out)  # before the training, not after it
    dataset = datasets.load(config.dataset)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = models.build(config.model, order=config.order, num_classes=len(dataset.classes))
    with torch.no_grad():
        for layer in ssm_layers(model):
            skips, projections = _skips_and_projections(layer)
            for skip in skips:
                skip.fill_(config.skip_init)
            for projection in projections:
                torch.nn.init.uniform_(projection, -config.x_proj_init, config.x_proj_init)
    train_x, train_y = _tensors(dataset.train, config.image_size)
    test_x, test_y = _tensors(dataset.test, config.image_size)

    steps_per_epoch = math.ceil(len(train_x) / config.batch_size)
    total = config.epochs * steps_per_epoch
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: (
            min(1.0, (step + 1) / steps_per_epoch) * 0.5 * (1 + math.cos(math.pi * step / total))
        ),
    )
    started = time.perf_counter()
    bar = tqdm(total=total, desc=f"train {config.order}", unit="batch", disable=not progress)
    history = []
    for epoch in range(config.epochs):
        model.train()
        permutation = torch.randperm(len(train_x), generator=generator)
        seen, loss_sum = 0, 0.0
        for start in range(0, len(train_x), config.batch_size):
            index = permutation[start : start + config.batch_size]
            images = _shifted(train_x[index], config.shift, generator)
            loss = F.cross_entropy(model(images), train_y[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            seen += len(index)
            loss_sum += float(loss.detach()) * len(index)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}")
        history.append(round(loss_sum / seen, 5))
    bar.close()

    state_dict = {
        key: value.detach().to(getattr(torch, storage)).clone()
        for key, value in model.state_dict().items()
    }
    # Accuracy of the weights as saved: load them back the way every user will.
    model.load_state_dict(state_dict)
    meta = {
        "model": config.model,
        "order": config.order,
        "config": asdict(config),
        "classes": list(dataset.classes),
        "dataset": dataset.description,
        "n_train": len(train_x),
        "n_test": len(test_x),
        "train_accuracy": accuracy(model, train_x, train_y),
        "test_accuracy": accuracy(model, test_x, test_y),
        # How much the model relies on its scans, and on their order.
        "test_accuracy_without_scan": accuracy_without_scan(model, test_x, test_y),
        "test_accuracy_other_order": {
            order: accuracy(with_order(model, order), test_x, test_y)
            for order in ("cross", "random")
            if _scans_differently(model, order, config.order)
        },
        "loss_per_epoch": history,
        "storage_dtype": storage,
        "seconds": round(time.perf_counter() - started, 1),
        "torch": str(torch.__version__),
        "command": " ".join(command),
    }
    models.write_checkpoint(out, state_dict, meta)
    return meta


def ssm_layers(model: torch.nn.Module) -> list[SS2D | BiMamba]:
    """The scanning layers of a VMamba (SS2D) or a Vim (its mixers)."""
    return [module for module in model.modules() if isinstance(module, SS2D | BiMamba)]


def _skips_and_projections(
    layer: SS2D | BiMamba,
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """A layer's skip weights D and its x_proj weights (Vim: one of each per route)."""
    if isinstance(layer, SS2D):
        return [layer.Ds], [layer.x_proj_weight]
    return [layer.D, layer.D_b], [layer.x_proj.weight, layer.x_proj_b.weight]


def _scans_differently(model: torch.nn.Module, order: str, own: str) -> bool:
    """``order`` can replace ``own`` in ``model`` (VMamba: as many routes) and scans other
    paths (Vim scans route 0 of an order and its reverse: cross's is row-major too)."""
    if order == own:
        return False
    if isinstance(model, Vim):
        grid = model.grid
        return not torch.equal(token_routes(order, *grid), token_routes(own, *grid))
    return orders.routes(order, 2, 2).shape[0] == orders.routes(own, 2, 2).shape[0]


def with_order(model: VSSM | Vim, order: str) -> VSSM | Vim:
    """A copy of ``model`` that scans in ``order`` (same weights; same number of routes)."""
    other = copy.deepcopy(model)
    for layer in ssm_layers(other):
        if isinstance(layer, SS2D):  # a Vim's mixers take their routes from the model
            layer.order = order
    other.order = order
    return other


def accuracy_without_scan(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> float:
    """:func:`accuracy` with every scan's attention term removed (α = 0): each block's
    scan output is its skip term alone (``SS2D.skip``, ``BiMamba.skip``)."""
    layers = ssm_layers(model)
    for layer in layers:
        layer.scan = layer.skip
    try:
        return accuracy(model, images, labels)
    finally:
        for layer in layers:
            del layer.scan  # the class's scan again
