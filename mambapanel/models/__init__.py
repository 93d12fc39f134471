"""Vision Mamba models by name, and loading of official or our own checkpoints.

``build("vmamba-tiny-s1l8", order="cross", checkpoint=PATH)`` is the one way in; the same for
Vim, ``build("vim-tiny", checkpoint=PATH)``.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import re
from dataclasses import dataclass
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
from mambapanel.models.vim import BiMamba, Vim, VimScanInputs, grid_size
from mambapanel.models.vmamba import SS2D, VSSM, ScanInputs

__all__ = [
    "CONFIGS",
    "FAMILIES",
    "SS2D",
    "VSSM",
    "BiMamba",
    "CheckpointError",
    "ScanInputs",
    "Vim",
    "VimScanInputs",
    "available",
    "build",
    "input_size",
    "load_checkpoint",
    "read_state_dict",
    "write_checkpoint",
]


@dataclass(frozen=True)
class Family:
    """What a model family's checkpoints look like and how its models are built."""

    title: str  # how messages name it
    model: type[nn.Module]
    default_order: str  # the order of the official checkpoints
    head: str  # the classifier's weight: one row per class
    layer_key: re.Pattern  # keys of its scanning layers: every checkpoint of it has some


FAMILIES: dict[str, Family] = {
    "vmamba": Family(
        "VMamba", VSSM, "cross", "classifier.head.weight", re.compile(r"^layers\.\d+\.blocks\.")
    ),
    "vim": Family("Vim", Vim, "bidirectional", "head.weight", re.compile(r"^layers\.\d+\.mixer\.")),
}

# Name -> family and constructor arguments; the comment names the upstream config.
CONFIGS: dict[str, dict[str, Any]] = {
    # vssm1_tiny_0230s
    "vmamba-tiny-s1l8": dict(
        family="vmamba", dims=(96, 192, 384, 768), depths=(2, 2, 8, 2), ssm_ratio=1.0
    ),
    # vssm1_tiny_0230
    "vmamba-tiny-s2l5": dict(
        family="vmamba", dims=(96, 192, 384, 768), depths=(2, 2, 5, 2), ssm_ratio=2.0
    ),
    # vssm1_small_0229s
    "vmamba-small-s1l20": dict(
        family="vmamba", dims=(96, 192, 384, 768), depths=(2, 2, 20, 2), ssm_ratio=1.0
    ),
    # vssm1_base_0229s
    "vmamba-base-s1l20": dict(
        family="vmamba", dims=(128, 256, 512, 1024), depths=(2, 2, 20, 2), ssm_ratio=1.0
    ),
    # Ours: small enough to train on two CPU cores in minutes (the demo models).
    "vmamba-micro": dict(
        family="vmamba", dims=(16, 32, 64, 128), depths=(2, 2, 2, 2), ssm_ratio=1.0
    ),
    # vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2
    "vim-tiny": dict(family="vim", embed_dim=192, depth=24),
    # vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2
    "vim-tiny-stride8": dict(family="vim", embed_dim=192, depth=24, stride=8),
    # vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2
    "vim-small": dict(family="vim", embed_dim=384, depth=24),
    # vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2
    "vim-small-stride8": dict(family="vim", embed_dim=384, depth=24, stride=8),
    # vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2
    "vim-base": dict(family="vim", embed_dim=768, depth=24),
    # Ours, to train on two CPU cores in minutes: the 8x8 digits upscaled to 32 px, one
    # patch per digit pixel (8x8 patches, 65 tokens). d_state 4, not 16: on a CPU the scan's
    # cost grows faster than N (its states leave the cache), a training step ~7x at N = 16.
    "vim-micro": dict(family="vim", img_size=32, patch_size=4, embed_dim=64, depth=4, d_state=4),
}


def available() -> list[str]:
    return sorted(CONFIGS)


def input_size(name: str) -> int | None:
    """The image side model ``name`` takes: a Vim's is fixed by its position embedding
    (224 unless its config says otherwise); None for VMamba, which takes any."""
    config = CONFIGS[name]
    if config["family"] != "vim":
        return None
    size = config.get("img_size", inspect.signature(Vim).parameters["img_size"].default)
    return size if isinstance(size, int) else size[0]


def build(
    name: str,
    *,
    order: str | None = None,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a model by name, optionally loading a checkpoint (strict).

    Parameters
    ----------
    name : str
        One of :func:`available`.
    order : str, optional
        Patch order (``mambapanel.orders``). Default: the order recorded in the checkpoint
        by ``compute train``, else the official one: ``cross`` for VMamba, ``bidirectional``
        for Vim.
    checkpoint : path, optional
        An official checkpoint (``model`` / ``model_ema`` / bare state_dict) or one of ours.
    num_classes : int, optional
        Classifier width; default 1000, or the checkpoint's head size.
    overrides
        Constructor arguments that replace the config's (e.g. ``img_size`` of a Vim).
    """
    if name not in CONFIGS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available())}")
    config = {**CONFIGS[name], **overrides}
    family = FAMILIES[config.pop("family")]
    state_dict, meta = (None, {})
    if checkpoint is not None:
        state_dict, meta = read_state_dict(checkpoint)
        if num_classes is None and family.head in state_dict:
            num_classes = state_dict[family.head].shape[0]
        if order is None:
            order = meta.get("order")
    model = family.model(
        **config, num_classes=num_classes or 1000, order=order or family.default_order
    )
    model.name = name
    if state_dict is not None:
        load_checkpoint(model, state_dict, source=str(checkpoint))
        model.checkpoint_sha256 = meta["sha256"]
    model.eval()
    return model


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file into (state_dict, metadata); the official VMamba renames are
    applied to any checkpoint that is not a Vim one.

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
    if checkpoint_family(tensors) != "vim":
        tensors = rename_official_keys(tensors)
    return tensors, meta


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


def checkpoint_family(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The family (a key of :data:`FAMILIES`) whose scanning layers the checkpoint holds."""
    for name, family in FAMILIES.items():
        if any(family.layer_key.match(key) for key in state_dict):
            return name
    return None


def check_family_and_size(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str
) -> None:
    """Refuse a checkpoint of another family, naming both and the first keys that differ,
    or a Vim checkpoint of another size, naming its size."""
    ours = next((n for n, f in FAMILIES.items() if isinstance(model, f.model)), None)
    found = checkpoint_family(state_dict)
    name = getattr(model, "name", type(model).__name__)
    expected = model.state_dict()
    if ours is not None and found is not None and found != ours:
        extra = [k for k in state_dict if k not in expected][:5]
        lacking = [k for k in expected if k not in state_dict][:5]
        raise CheckpointError(
            f"{source}: a {FAMILIES[found].title} checkpoint, but {name} is a "
            f"{FAMILIES[ours].title} model; first mismatching keys:\n"
            f"  in the checkpoint, not in the model: {', '.join(extra)}\n"
            f"  in the model, not in the checkpoint: {', '.join(lacking)}"
        )
    if ours == "vim":
        size, model_size = _vim_size(state_dict), _vim_size(expected)
        if size is not None and size != model_size:
            named = [n for n, c in CONFIGS.items() if c["family"] == "vim" and _size(c) == size]
            what = f"a {named[0]} checkpoint" if named else "a Vim checkpoint of another size"
            raise CheckpointError(
                f"{source}: {what} (embed_dim {size[0]}, depth {size[1]}, "
                f"{_patches(size[2])}), not {name} ({model_size[0]}, {model_size[1]}, "
                f"{_patches(model_size[2])})"
                + (
                    "; give build() the img_size it was trained at"
                    if size[:2] == model_size[:2]
                    else ""
                )
            )


def _vim_size(state_dict: dict[str, torch.Tensor]) -> tuple[int, int, int] | None:
    """(embed_dim, depth, patches) of a Vim state_dict, from pos_embed and the layer keys."""
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is None or pos_embed.dim() != 3:
        return None
    layers = {m[1] for key in state_dict if (m := re.match(r"layers\.(\d+)\.", key))}
    return pos_embed.shape[2], len(layers), pos_embed.shape[1] - 1


def _size(config: dict[str, Any]) -> tuple[int, int, int]:
    """:func:`_vim_size` of the model a Vim config builds."""
    c = {p.name: p.default for p in inspect.signature(Vim).parameters.values()} | config
    H, W = grid_size(c["img_size"], c["patch_size"], c["stride"] or c["patch_size"])
    return c["embed_dim"], c["depth"], H * W


def _patches(count: int) -> str:
    side = math.isqrt(count)
    return f"{side}x{side} patches" if side * side == count else f"{count} patches"


def load_checkpoint(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly. A checkpoint of another family or (Vim) size is refused by name
    (:func:`check_family_and_size`); otherwise the error lists missing/unexpected keys and
    shape mismatches."""
    check_family_and_size(model, state_dict, source)
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
