"""Vision Mamba models by name, and loading of official or our own checkpoints.

``build("vmamba-tiny-s1l8", order="cross", checkpoint=PATH)`` is the one way in.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mambapanel.models.checkpoint_file import (
    META_KEY,
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)
from mambapanel.models.vmamba import SS2D, VSSM, ScanInputs

__all__ = [
    "CONFIGS",
    "SS2D",
    "VSSM",
    "CheckpointError",
    "ScanInputs",
    "available",
    "build",
    "load_checkpoint",
    "read_state_dict",
    "write_checkpoint",
]

# Name -> constructor arguments; the comment names the upstream classification config.
CONFIGS: dict[str, dict[str, Any]] = {
    # vssm1_tiny_0230s
    "vmamba-tiny-s1l8": dict(dims=(96, 192, 384, 768), depths=(2, 2, 8, 2), ssm_ratio=1.0),
    # vssm1_tiny_0230
    "vmamba-tiny-s2l5": dict(dims=(96, 192, 384, 768), depths=(2, 2, 5, 2), ssm_ratio=2.0),
    # vssm1_small_0229s
    "vmamba-small-s1l20": dict(dims=(96, 192, 384, 768), depths=(2, 2, 20, 2), ssm_ratio=1.0),
    # vssm1_base_0229s
    "vmamba-base-s1l20": dict(dims=(128, 256, 512, 1024), depths=(2, 2, 20, 2), ssm_ratio=1.0),
    # Ours: small enough to train on two CPU cores in minutes (the demo models).
    "vmamba-micro": dict(dims=(16, 32, 64, 128), depths=(2, 2, 2, 2), ssm_ratio=1.0),
}


def available() -> list[str]:
    return sorted(CONFIGS)


def build(
    name: str,
    *,
    order: str | None = None,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> VSSM:
    """Build a model by name, optionally loading a checkpoint (strict).

    Parameters
    ----------
    name : str
        One of :func:`available`.
    order : str, optional
        Patch order (``mambapanel.orders``). Default: the order recorded in the checkpoint
        by ``compute train``, else ``cross`` (what the official checkpoints use).
    checkpoint : path, optional
        An official checkpoint (``model`` / ``model_ema`` / bare state_dict) or one of ours.
    num_classes : int, optional
        Classifier width; default 1000, or the checkpoint's head size.
    """
    if name not in CONFIGS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available())}")
    config = {**CONFIGS[name], **overrides}
    state_dict, meta = (None, {})
    if checkpoint is not None:
        state_dict, meta = read_state_dict(checkpoint)
        if num_classes is None and "classifier.head.weight" in state_dict:
            num_classes = state_dict["classifier.head.weight"].shape[0]
        if order is None:
            order = meta.get("order")
    model = VSSM(**config, num_classes=num_classes or 1000, order=order or "cross")
    model.name = name
    if state_dict is not None:
        load_checkpoint(model, state_dict, source=str(checkpoint))
        model.checkpoint_sha256 = meta["sha256"]
    model.eval()
    return model


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file into (state_dict with official renames applied, metadata).

    Accepts ``.safetensors``, or a torch file holding ``{"model": sd}``, ``{"model_ema": sd}``
    or a bare state_dict, read without running anything it holds
    (:func:`mambapanel.models.checkpoint_file.read_checkpoint`). Metadata holds ``sha256`` of
    the file, the pickled objects that were skipped (``skipped``, names) and, for checkpoints
    written by ``compute train``, their ``mambapanel`` entry (model, order, accuracy ...).
    """
    path = Path(path)
    read = read_checkpoint(path)
    obj = read.content
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    for key in ("model", "model_ema", "state_dict"):
        if isinstance(obj.get(key), dict):
            state_dict = obj[key]
            break
    else:
        state_dict = obj
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path}: holds no tensors; expected a state_dict, or a dict with a 'model' or "
            f"'model_ema' state_dict (found keys: {', '.join(map(str, list(obj)[:10]))})"
        )
    meta = dict(obj.get(META_KEY, {})) if isinstance(obj.get(META_KEY), dict) else {}
    meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta["skipped"] = read.stand_ins
    return rename_official_keys(tensors), meta


# The upstream loader's renames of older key names (its VSSM._load_from_state_dict).
OFFICIAL_RENAMES = [
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]


def rename_official_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply :data:`OFFICIAL_RENAMES` to every key."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in OFFICIAL_RENAMES:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


def load_checkpoint(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly, with an error that lists missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    state_dict = dict(state_dict)
    for key, value in state_dict.items():
        # Upstream's Linear2d also accepts 1x1-conv-shaped weights (out, in, 1, 1).
        if key in expected and value.dim() == 4 and value.shape[2:] == (1, 1):
            if expected[key].shape == value.shape[:2]:
                state_dict[key] = value[:, :, 0, 0]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source}: does not fit model {getattr(model, 'name', type(model).__name__)}"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                shown = "\n    ".join(items[:20])
                more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
                parts.append(f"  {title} ({len(items)}):\n    {shown}{more}")
        raise CheckpointError("\n".join(parts))
    model.load_state_dict(state_dict, strict=True)
