"""Record what every SS2D scan reads during a forward pass, and compute hidden attention
from those records on request; the model's output is untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields

import torch
from torch import nn

from mambapanel.attention.hidden import hidden_attention
from mambapanel.models.vmamba import SS2D, ScanInputs

Tensor = torch.Tensor


def ss2d_layers(model: nn.Module) -> dict[tuple[int, int], SS2D]:
    """Every SS2D addressed by (stage, block), from module names ``layers.S.blocks.B.op``."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, SS2D):
            parts = name.split(".")
            if len(parts) >= 4 and parts[0] == "layers" and parts[2] == "blocks":
                found[int(parts[1]), int(parts[3])] = module
    if not found:
        raise ValueError(f"{type(model).__name__} has no SS2D layers under layers.S.blocks.B.op")
    return found


class Capture:
    """The scan inputs of the last forward pass, by (stage, block); see :func:`capture`."""

    def __init__(self, layers: dict[tuple[int, int], SS2D]) -> None:
        self.layers = layers
        self.records: dict[tuple[int, int], ScanInputs] = {}

    def keys(self) -> list[tuple[int, int]]:
        """The (stage, block) addresses recorded so far, sorted."""
        return sorted(self.records)

    def inputs(self, stage: int, block: int) -> ScanInputs:
        """What the scan of (stage, block) read in the last forward pass."""
        if (stage, block) not in self.records:
            known = ", ".join(f"({s}, {b})" for s, b in sorted(self.layers))
            state = "was not captured" if (stage, block) in self.layers else "does not exist"
            raise KeyError(
                f"stage {stage}, block {block} {state}; this model has: {known}"
                + ("" if self.records else " (no forward pass ran inside the capture)")
            )
        return self.records[stage, block]

    def attention(self, stage: int, block: int, **options) -> Tensor:
        """Hidden attention of (stage, block): r(B, L, L), row = query patch, row-major.

        ``options`` are those of :func:`mambapanel.attention.hidden_attention` (reduce,
        by_route, mode, backend, dtype, tile); ``reduce=None`` gives r(B, D, L, L),
        ``by_route=True`` adds a route axis after B.
        """
        return hidden_attention(self.inputs(stage, block), **options)

    def _record(self, address: tuple[int, int]):
        def record(module: SS2D, inputs: ScanInputs) -> None:
            values = {f.name: getattr(inputs, f.name) for f in fields(inputs)}
            self.records[address] = ScanInputs(
                **{k: v.detach() if isinstance(v, Tensor) else v for k, v in values.items()}
            )

        return record


@contextmanager
def capture(model: nn.Module, blocks: Iterable[tuple[int, int]] | None = None) -> Iterator[Capture]:
    """Record the scans of ``model`` (all, or only the given (stage, block) addresses).

    Examples
    --------
    >>> with capture(model) as cap:
    ...     logits = model(images)
    >>> a = cap.attention(stage=0, block=1)  # (B, L, L)
    """
    layers = ss2d_layers(model)
    chosen = sorted(layers) if blocks is None else sorted(set(map(tuple, blocks)))
    for address in chosen:
        if address not in layers:
            raise KeyError(f"stage {address[0]}, block {address[1]} is not in this model")
    cap = Capture(layers)
    attached = []
    try:
        for address in chosen:
            recorder = cap._record(address)
            layers[address].scan_recorders.append(recorder)
            attached.append((layers[address], recorder))
        yield cap
    finally:
        for layer, recorder in attached:
            layer.scan_recorders.remove(recorder)
