"""Record what every scanning layer (VMamba's SS2D, Vim's mixer) reads during a forward pass,
and compute hidden attention from those records on request; the model's output is untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace

import torch
from torch import nn

from mambapanel.attention.hidden import hidden_attention
from mambapanel.attention.vim import split_cls, vim_attention
from mambapanel.models.scan import along_routes
from mambapanel.models.vim import BiMamba, VimScanInputs
from mambapanel.models.vmamba import SS2D, ScanInputs

Tensor = torch.Tensor
ScanLayer = SS2D | BiMamba


def scan_layers(model: nn.Module) -> dict[tuple[int, int], ScanLayer]:
    """Every scanning layer addressed by (stage, block): VMamba's SS2D from module names
    ``layers.S.blocks.B.op``, Vim's mixers from ``layers.B.mixer`` (one stage, 0)."""
    found = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if isinstance(module, SS2D):
            if len(parts) >= 4 and parts[0] == "layers" and parts[2] == "blocks":
                found[int(parts[1]), int(parts[3])] = module
        elif isinstance(module, BiMamba) and len(parts) == 3 and parts[0] == "layers":
            found[0, int(parts[1])] = module
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no scanning layers (SS2D under layers.S.blocks.B.op, "
            "Vim mixers under layers.B.mixer)"
        )
    return found


class Capture:
    """The scan inputs of the last forward pass, by (stage, block); see :func:`capture`."""

    def __init__(self, layers: dict[tuple[int, int], ScanLayer]) -> None:
        self.layers = layers
        self.records: dict[tuple[int, int], ScanInputs | VimScanInputs] = {}
        # ∂(what was back-propagated)/∂(scan output), item order, with gradients=True.
        self.gradients: dict[tuple[int, int], Tensor] = {}

    def keys(self) -> list[tuple[int, int]]:
        """The (stage, block) addresses recorded so far, sorted."""
        return sorted(self.records)

    def inputs(self, stage: int, block: int) -> ScanInputs | VimScanInputs:
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
        ``by_route=True`` adds a route axis after B. For a Vim mixer, the patch-to-patch
        part of :func:`mambapanel.attention.vim.vim_attention` (L = P patches; the CLS token's
        row and column: :meth:`cls_attention`).
        """
        inputs = self.inputs(stage, block)
        if isinstance(inputs, VimScanInputs):
            return split_cls(vim_attention(inputs, **options), inputs.cls_token)[0]
        return hidden_attention(inputs, **options)

    def item_attention(self, stage: int, block: int, **options) -> Tensor:
        """:meth:`attention` over every item the scan orders: VMamba's patches, Vim's tokens
        (the patches row-major, then the CLS token)."""
        inputs = self.inputs(stage, block)
        if isinstance(inputs, VimScanInputs):
            return vim_attention(inputs, **options)
        return hidden_attention(inputs, **options)

    def attribution(self, stage: int, block: int, **options) -> Tensor:
        """Gradient × attention over items (as :meth:`item_attention`): the mean over
        channels of ∂s/∂α ⊙ α, r(B, L, L), for the score s that was back-propagated through
        a forward pass of ``capture(model, gradients=True)``. Exact and as fast as
        :meth:`attention`: with y = α u + D u, ∂s/∂α_d[i, j] = ∂s/∂y_d[i] · u_d[j], so it is
        the channel mean weighted by the output's gradient (queries) and the scan's input
        (keys). ``options``: backend, dtype, tile.
        """
        inputs = self.inputs(stage, block)
        if (stage, block) not in self.gradients:
            raise KeyError(
                f"stage {stage}, block {block}: no gradient recorded; capture with "
                "gradients=True and back-propagate a score through the forward pass"
            )
        gradient = self.gradients[stage, block].flatten(2)  # (B, D, items)
        routes = inputs.routes
        query = along_routes(gradient, routes)
        if isinstance(inputs, VimScanInputs):
            key = inputs.u  # already each route's own input, in its step order
        else:
            key = along_routes(inputs.u.flatten(2), routes)
        return self.item_attention(stage, block, weights=(query, key), **options)

    def cls_attention(self, stage: int, block: int, **options) -> tuple[Tensor, Tensor]:
        """A Vim mixer's attention from its CLS token to every patch (the CLS row) and from
        every patch to the CLS token (its column): (r(B, P), r(B, P)), patches row-major; a
        channel and a route axis as :meth:`attention` gives them.

        Raises
        ------
        TypeError
            (stage, block) is not a Vim mixer: VMamba has no CLS token.
        """
        inputs = self.inputs(stage, block)
        if not isinstance(inputs, VimScanInputs):
            raise TypeError(f"stage {stage}, block {block} is an SS2D layer: it has no CLS token")
        _, from_cls, to_cls = split_cls(vim_attention(inputs, **options), inputs.cls_token)
        return from_cls, to_cls

    def _record(self, address: tuple[int, int], gradients: bool):
        def record(module: ScanLayer, inputs: ScanInputs | VimScanInputs):
            values = {f.name: getattr(inputs, f.name) for f in fields(inputs)}
            self.records[address] = replace(
                inputs, **{k: v.detach() for k, v in values.items() if isinstance(v, Tensor)}
            )
            return self._gradient_hook(address) if gradients else None

        return record

    def _gradient_hook(self, address: tuple[int, int]):
        def on_output(output: Tensor) -> None:
            if not output.requires_grad:
                raise RuntimeError(
                    "capture(gradients=True) needs a forward pass that tracks gradients "
                    "(not under torch.no_grad())"
                )

            def keep(gradient: Tensor) -> None:
                self.gradients[address] = gradient.detach()

            output.register_hook(keep)

        return on_output


@contextmanager
def capture(
    model: nn.Module,
    blocks: Iterable[tuple[int, int]] | None = None,
    *,
    gradients: bool = False,
) -> Iterator[Capture]:
    """Record the scans of ``model`` (all, or only the given (stage, block) addresses); with
    ``gradients``, also the gradient that a backward pass sends to each scan's output (for
    :meth:`Capture.attribution`).

    Examples
    --------
    >>> with capture(model) as cap:
    ...     logits = model(images)
    >>> a = cap.attention(stage=0, block=1)  # (B, L, L)
    """
    layers = scan_layers(model)
    chosen = sorted(layers) if blocks is None else sorted(set(map(tuple, blocks)))
    for address in chosen:
        if address not in layers:
            raise KeyError(f"stage {address[0]}, block {address[1]} is not in this model")
    cap = Capture(layers)
    attached = []
    try:
        for address in chosen:
            recorder = cap._record(address, gradients)
            layers[address].scan_recorders.append(recorder)
            attached.append((layers[address], recorder))
        yield cap
    finally:
        for layer, recorder in attached:
            layer.scan_recorders.remove(recorder)
