"""Explanations beyond raw attention: attention rollout across blocks (and, for VMamba,
across stages), gradient-weighted attribution, and the perturbation test that says how
faithful a map is.

Shape legend: B images, L patches of a grid (row-major), T tokens (Vim: patches and CLS),
gh x gw the grid a relevance map lives on.

Rollout (Abnar & Zuidema 2020). Per block l, Â_l = rownorm(A_l + I), with A_l a
non-negative patch-to-patch matrix (row = query, the output; column = key, the input); the
product R = Â_last ⋯ Â_first gives R[i, j], the share of input patch j in output patch i
through the residual path and every block. The raw map takes A_l = |α_l| (hidden attention
can be negative), the attribution map A_l = (mean over channels of ∂y_c/∂α ⊙ α)⁺, y_c the
predicted class's logit. Vim reads R's CLS row. VMamba has no CLS token: its classifier
averages the last stage's patches, so the map is the mean row of R, and R crosses a
downsampling by mapping a coarse patch to the k x k fine patches under it (k the stride, 2),
each with weight 1/k², an approximation of the 3 x 3 stride-2 conv that is said wherever the
map is shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from mambapanel import store
from mambapanel.attention.capture import Capture
from mambapanel.models.vim import VimScanInputs

Tensor = torch.Tensor

FRACTIONS = store.FRACTIONS  # shares of patches the perturbation test removes: 0 .. 90 %


def normalised(matrix: Tensor) -> Tensor:
    """rownorm(A + I) of a non-negative r(B, L, L): each row sums to 1."""
    augmented = matrix + torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return augmented / augmented.sum(-1, keepdim=True)


def rollout(blocks: Sequence[Tensor]) -> Tensor:
    """R = Â_last ⋯ Â_first of non-negative r(B, L, L) matrices, first block first."""
    result = normalised(blocks[0])
    for matrix in blocks[1:]:
        result = normalised(matrix) @ result
    return result


def rollout_reference(blocks: Sequence[Tensor]) -> Tensor:
    """:func:`rollout` as a sum over paths, for small L (the tests' oracle): R[i, j] =
    Σ over token sequences j = t_0, t_1, ..., t_n = i of Π_l Â_l[t_l, t_{l-1}]."""
    steps = [normalised(matrix) for matrix in blocks]
    B, L, _ = steps[0].shape
    result = torch.zeros_like(steps[0])
    for path in np.ndindex(*(L,) * (len(steps) - 1)):
        for start in range(L):
            for end in range(L):
                tokens = (start, *path, end)
                weight = torch.ones(B, dtype=steps[0].dtype)
                for layer, step in enumerate(steps):
                    weight = weight * step[:, tokens[layer + 1], tokens[layer]]
                result[:, end, start] += weight
    return result


def downsampling(coarse: tuple[int, int], fine: tuple[int, int]) -> Tensor:
    """r(Lc, Lf): coarse patch c spread evenly over the fine patches under it (the stride
    k = fine / coarse in each axis; at an uneven edge, what is there). Rows sum to 1."""
    (ch, cw), (fh, fw) = coarse, fine
    rows, cols = np.divmod(np.arange(fh * fw), fw)
    parent = (rows * ch // fh) * cw + cols * cw // fw  # the coarse patch over each fine one
    matrix = torch.zeros(ch * cw, fh * fw, dtype=torch.float64)
    matrix[parent, np.arange(fh * fw)] = 1.0
    return matrix / matrix.sum(-1, keepdim=True)


# Rows of a matrix that propagate converts to float64 at a time (about 4 MiB).
_PROPAGATE_ELEMENTS = 2**19


def propagate(
    relevance: Tensor,
    blocks: Iterable[Tensor],
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """relevance · Â_last ⋯ Â_first, one vector-matrix product per block (never the L x L
    rollout itself): ``relevance`` r(B, L) over the last block's outputs, ``blocks`` their
    r(B, L, L) matrices, **last block first** (they may be made one at a time), non-negative
    or made so by ``transform`` (an element-wise function such as ``torch.abs``, not in place).

    In ``relevance``'s dtype, in one pass over each matrix and without an L x L temporary:
    with s = rowsum(A) + 1 and w = relevance / s, relevance · rownorm(A + I) = w · A + w,
    and both s and w · A are summed over blocks of rows, each converted (and transformed)
    on its own while it is in the cache.
    """
    for matrix in blocks:
        rows = max(1, _PROPAGATE_ELEMENTS // matrix.shape[-1])
        weights = torch.empty_like(relevance)
        product = torch.zeros_like(relevance)
        for start in range(0, matrix.shape[-2], rows):
            part = matrix[:, start : start + rows].to(relevance.dtype)
            if transform is not None:
                part = transform(part)
            part_weights = relevance[:, start : start + rows] / (part.sum(-1) + 1)
            weights[:, start : start + rows] = part_weights
            product += (part_weights[:, None, :] @ part)[:, 0]
        relevance = product + weights
    return relevance


def stage_rollout(
    stages: Sequence[Iterable[Tensor]],
    grids: Sequence[tuple[int, int]],
    batch: int,
    device: torch.device | str = "cpu",
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """VMamba's map: r(B, L0) over the first stage's patches, the mean row of
    R_S · M_S ⋯ M_1 · R_0 (R_s the rollout of stage s's blocks, M_s stage s's coarse patches
    spread over stage s-1's, :func:`downsampling`); it sums to 1.

    Parameters
    ----------
    stages : per stage (first to last), its blocks' non-negative r(B, L_s, L_s), **last
        block first**
    grids : per stage, its grid (H, W)
    batch : B
    device : where the matrices are
    transform : applied to the matrices, as :func:`propagate` does
    """
    last = grids[-1][0] * grids[-1][1]
    # The classifier averages the last stage's patches.
    relevance = torch.full((batch, last), 1 / last, dtype=torch.float64, device=device)
    for index in range(len(stages) - 1, -1, -1):
        relevance = propagate(relevance, stages[index], transform)
        if index:
            spread = downsampling(grids[index], grids[index - 1]).to(device)
            relevance = relevance @ spread
    return relevance


def relevance_maps(
    cap: Capture,
    *,
    channels: str = "mean",
    attention: Callable[[int, int], Tensor] | None = None,
    **options,
) -> dict[str, Tensor]:
    """Per image, where the model's decision comes from, over the first stage's patches
    (Vim: its patches), from one captured forward pass of every block: ``rollout`` of |α|
    and, when the capture holds gradients of the predicted classes' logits,
    ``attribution`` (rollout of (∂y_c/∂α ⊙ α)⁺ over channels). Each r(B, P), float64,
    summing to 1 per image, on the capture's device. ``options``: backend, dtype, tile of the
    attention.

    ``attention(stage, block)``, if given, supplies each block's item attention (as
    ``cap.item_attention(stage, block, reduce=channels, **options)`` would), once per block:
    extraction passes the matrices it computes for the store anyway.
    """
    addresses = cap.keys()
    missing = sorted(set(cap.layers) - set(addresses))
    if missing:
        raise ValueError(f"relevance maps need every block captured; missing {missing[:4]}")
    stages = sorted({stage for stage, _ in addresses})
    blocks = {stage: sorted(b for s, b in addresses if s == stage) for stage in stages}
    if attention is None:

        def attention(stage: int, block: int) -> Tensor:
            return cap.item_attention(stage, block, reduce=channels, **options)

    # Each kind: its matrices, and what makes them non-negative (applied a few rows at a
    # time by propagate: a whole transformed copy of a stage-0 matrix costs more).
    kinds = {"rollout": (attention, torch.abs)}
    if all(address in cap.gradients for address in addresses):
        kinds["attribution"] = (
            lambda s, b: cap.attribution(s, b, **options),
            lambda part: part.clamp(min=0),
        )
    first = cap.inputs(0, 0)
    batch, device = first.delta.shape[0], first.delta.device
    maps = {}
    for name, (matrix, transform) in kinds.items():
        per_stage = [_last_first(matrix, s, blocks[s]) for s in stages]
        if isinstance(first, VimScanInputs):  # the classifier reads the CLS token
            tokens = first.routes.shape[1]
            start = torch.zeros(batch, tokens, dtype=torch.float64, device=device)
            start[:, first.cls_token] = 1.0
            relevance = propagate(start, per_stage[0], transform)[:, : first.cls_token]
            # No attention at all leaves everything on the CLS token: then zeros, not NaN.
            maps[name] = relevance / relevance.sum(-1, keepdim=True).clamp_min(1e-300)
        else:
            grids = [cap.inputs(s, 0).grid for s in stages]
            maps[name] = stage_rollout(per_stage, grids, batch, device, transform)
    return maps


def _last_first(
    matrix: Callable[[int, int], Tensor], stage: int, blocks: Sequence[int]
) -> Iterator[Tensor]:
    """The matrices of ``stage``'s blocks, last block first, each made when it is needed."""
    for block in reversed(blocks):
        yield matrix(stage, block)


def perturbation_curves(
    score: Callable[[Tensor], Tensor],
    image: Tensor,
    relevance: Tensor,
    *,
    fractions: Sequence[float] = FRACTIONS,
    fill: float = 0.0,
    batch: int | None = None,
    clean: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The perturbation test of one map: the class score as the most relevant patches are
    removed first, and as the least relevant are (Chefer et al. 2021). A faithful map makes
    the first curve fall fast and the second stay high.

    Parameters
    ----------
    score : images r(n, 3, H, W) -> r(n,) the score of the class the model predicts for the
        unperturbed image (e.g. its softmax probability)
    image : r(3, H, W), normalised as the model takes it
    relevance : r(gh, gw) (or r(gh * gw,)) over a grid that tiles the image
    fill : what removed pixels become (0: the dataset mean, in normalised values)
    batch : images per call of ``score`` (default: all at once). On a CPU a forward pass of
        many images is slower per image than one of a few (its activations leave the
        caches); each call's result does not depend on the others.
    clean : the score of the unperturbed image, where known: a fraction that removes no
        patch then takes it instead of scoring the image again (once per map and order).

    Returns
    -------
    (most relevant removed first, least relevant removed first): f64(len(fractions),) each
    """
    gh, gw = relevance.shape if relevance.dim() == 2 else (math.isqrt(relevance.numel()),) * 2
    ranked = torch.argsort(relevance.reshape(-1).double(), descending=True, stable=True)
    counts = [round(fraction * gh * gw) for fraction in fractions]
    masked = []  # the perturbed images to score, most relevant first then least
    for order in (ranked, ranked.flip(0)):
        for count in counts:
            if count == 0 and clean is not None:
                continue
            keep = torch.ones(gh * gw, dtype=image.dtype, device=image.device)
            keep[order[:count]] = 0.0
            masks = cell_mask(keep.view(gh, gw), image.shape[-2:])
            masked.append(image * masks + fill * (1 - masks))
    images = torch.stack(masked)
    step = batch or len(images)
    with torch.no_grad():
        scored = iter(
            torch.cat([score(images[i : i + step]) for i in range(0, len(images), step)])
            .double()
            .cpu()
            .tolist()
        )
    scores = [clean if count == 0 and clean is not None else next(scored) for count in counts * 2]
    return np.array(scores[: len(counts)]), np.array(scores[len(counts) :])


def cell_mask(cells: Tensor, size: tuple[int, int]) -> Tensor:
    """r(gh, gw) values per grid cell -> r(H, W) per pixel; cell (r, c) covers rows
    r*H//gh .. (r+1)*H//gh and the columns alike (cells tile the image exactly)."""
    H, W = size
    gh, gw = cells.shape
    rows = torch.arange(H, device=cells.device) * gh // H
    cols = torch.arange(W, device=cells.device) * gw // W
    return cells[rows][:, cols]
