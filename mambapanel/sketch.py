"""Count sketches of attention matrices: a seeded random projection of a flattened L x L
matrix to k numbers that keeps the distances Algorithm 1 reduces, made on the worker in a
few passes over the matrix (never as a k x L² matrix), with the plain hashed form beside it.

Construction (one per stage: every image and block of a stage shares it, so that their
sketches compare). The F = L² features are laid out as R = ceil(F / k) rows of k
(feature f = r·k + c; the last row's tail, past F, counts as 0). Each row gets a shift s_r
in 0..k-1, balanced: a seeded permutation of g·k slots (g = ceil(R / k)) gives slot p to a
row and the shift p // g, so every shift has g slots (the slots left over hold no row).
Each feature gets a seeded sign σ_f = ±1, and goes to bucket h(f) = (c + s_r) mod k:

    sketch[j] = Σ_{f : h(f) = j} σ_f · x[f]

Two features of one row never share a bucket; two of different rows do with probability
at most (1/k)·(1 + 1/(g·k - 1)). Hence, for any x (e.g. the difference of two matrices):

    E ‖S x‖² = ‖x‖²,   Var ‖S x‖² = 2 Σ_{f≠f'} x_f² x_f'² P[h(f) = h(f')]
                                  <= (2 / k) · (1 + 1/(g·k - 1)) · ‖x‖⁴

so the relative error of every squared distance between sketches has mean 0 and standard
deviation at most sqrt(2 / k) (4.4 % at k = 1,024; the distance itself about half that),
and by Chebyshev lies within t such standard deviations for all but 1/t² of the pairs.
Inner products keep likewise, so PCA of sketches approximates PCA of the matrices.

The fast form sums, in one batched reduction, the rows sorted by shift (a gather of
contiguous rows), then rolls each shift's sum into place: no atomics, so it gives the same
bits on every run on a device (a resumed run equals an uninterrupted one).

torch is imported where a sketch is computed: the store reads a sketch's width from here, and
the dashboard, which reads stores, never imports torch.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    Tensor = torch.Tensor

SKETCH_DIM = 1024  # k: the default width of a sketch
SKETCH_SEED = 0


@dataclass(frozen=True)
class CountSketch:
    """The count sketch of ``features``-long vectors to ``width`` numbers drawn from ``seed``
    (module docstring). Vectors of at most ``width`` features are kept as they are: there a
    sketch would be no smaller and only less exact."""

    features: int
    width: int = SKETCH_DIM
    seed: int = SKETCH_SEED

    @property
    def exact(self) -> bool:
        """Whether the sketch is the vector itself (``features <= width``)."""
        return self.features <= self.width

    @property
    def out_features(self) -> int:
        """The length of a sketch: ``width``, or ``features`` when :attr:`exact`."""
        return self.features if self.exact else self.width

    @property
    def rows(self) -> int:
        """R: the features as rows of ``width``."""
        return math.ceil(self.features / self.width)

    @property
    def slots_per_shift(self) -> int:
        """g: slots of each shift, g·k >= R."""
        return math.ceil(self.rows / self.width)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Sketch r(b, F) (or r(b, ...) of F elements each) to f32(b, k), on ``x``'s device.

        Images go one at a time, so that the scratch is one matrix, not a batch of them.
        """
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.features:
            raise ValueError(f"expected {self.features} features per row, got {x.shape[1]}")
        import torch

        if self.exact:
            return x.float()
        k, g = self.width, self.slots_per_shift
        tables = _tables(self.features, k, self.seed, x.device)
        padded_length = self.rows * k
        sorted_rows = _workspace((g * k, k), x.device) if tables.dense else None
        sketches = []
        for vector in x:
            vector = vector.float()
            if padded_length != self.features:  # a copy only when F is not a multiple of k
                vector = torch.nn.functional.pad(vector, (0, padded_length - self.features))
            rows = vector.view(self.rows, k)
            if tables.dense:
                torch.index_select(rows, 0, tables.slot_rows, out=sorted_rows)
                sorted_rows.mul_(tables.signs)  # 0 in slots without a row and past F
                per_shift = sorted_rows.view(k, g, k).sum(1)  # (shift, column)
                # sketch[j] = Σ_s per_shift[s, (j - s) mod k]
                sketches.append(per_shift.gather(1, tables.roll).sum(0))
            else:  # fewer rows than shifts: roll each row into place, R·k work, not k²
                sketches.append((rows * tables.signs).gather(1, tables.roll).sum(0))
        return torch.stack(sketches)

    def buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """(bucket int64(F,), sign f32(F,)) of every feature: the hash as the docstring
        writes it, for :func:`sketch_reference`."""
        k, g = self.width, self.slots_per_shift
        slot_rows, signs = (t.numpy() for t in _draw(self.features, k, self.seed))
        feature = np.arange(self.features)
        row, column = np.divmod(feature, k)
        filled = signs.any(1)  # a slot without a row has only signs of 0
        slot_of_row = np.empty(self.rows, dtype=np.int64)
        slot_of_row[slot_rows[filled]] = np.flatnonzero(filled)
        slot = slot_of_row[row]
        return (column + slot // g) % k, signs[slot, column]


def sketch_reference(sketch: CountSketch, x: np.ndarray) -> np.ndarray:
    """:class:`CountSketch` as written: each feature added, with its sign, to its bucket.
    r(b, F) -> f64(b, k). The tests' oracle (F·b scattered additions)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if sketch.exact:
        return x
    bucket, sign = sketch.buckets()
    out = np.zeros((len(x), sketch.width))
    for row, vector in zip(out, x, strict=True):
        np.add.at(row, bucket, sign * vector)
    return out


# Per thread, one scratch matrix per shape: a fresh one would cost more in first-touch page
# faults than the three passes of the sketch (benchmarks/RESULTS.md, Figures behind choices).
_scratch = threading.local()


def _workspace(shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    import torch

    buffers = _scratch.__dict__.setdefault("buffers", {})
    if (shape, device) not in buffers:
        buffers[shape, device] = torch.empty(shape, device=device)
    return buffers[shape, device]


@dataclass(frozen=True)
class _Tables:
    """A sketch's hash as the fast form uses it. ``dense`` (at least k rows): slot_rows
    int64(g·k,) the row in each slot (0, with signs of 0, for a slot without one), signs
    f32(g·k, k) by slot, roll int64(k, k) = (j - s) mod k. Otherwise (fewer rows than
    shifts, so one row per shift at most): signs f32(R, k) and roll int64(R, k) =
    (j - s_r) mod k by row."""

    dense: bool
    slot_rows: torch.Tensor | None
    signs: torch.Tensor
    roll: torch.Tensor


@functools.lru_cache(maxsize=8)
def _tables(features: int, width: int, seed: int, device: torch.device | str) -> _Tables:
    """The hash of one sketch (:class:`_Tables`), drawn on the CPU (the same on every device)
    and kept per process: a stage's sketch serves all its images and blocks."""
    import torch

    slot_rows, signs = _draw(features, width, seed)
    k = width
    rows = math.ceil(features / k)
    steps = torch.arange(k)
    if rows >= k:
        roll = (steps[None, :] - steps[:, None]) % k
        return _Tables(True, slot_rows.to(device), signs.to(device), roll.to(device))
    filled = signs.any(1)  # g = 1: slot p is shift p
    slot_of_row = torch.empty(rows, dtype=torch.int64)
    slot_of_row[slot_rows[filled]] = torch.nonzero(filled)[:, 0]
    roll = (steps[None, :] - slot_of_row[:, None]) % k
    return _Tables(False, None, signs[slot_of_row].to(device), roll.to(device))


def _draw(features: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot_rows int64(g·k,), signs f32(g·k, k)): the seeded permutation of slots (slot p
    holds row slot_rows[p]; 0 with signs of 0 for a slot without a row) and every feature's
    sign by slot (0 past F)."""
    import torch

    k = width
    rows = math.ceil(features / k)
    slots = math.ceil(rows / k) * k
    # One stream per (seed, F, k): stages of other sizes draw independent sketches.
    entropy = np.random.SeedSequence([seed, features, k]).generate_state(1)[0]
    generator = torch.Generator().manual_seed(int(entropy))
    permutation = torch.randperm(slots, generator=generator)  # slot p -> row permutation[p]
    signs = torch.randint(0, 2, (slots, k), generator=generator).float().mul_(2).sub_(1)
    empty = permutation >= rows
    signs[empty] = 0.0
    tail = features - (rows - 1) * k  # columns of the last row that are real features
    signs[permutation == rows - 1, tail:] = 0.0
    return permutation.masked_fill(empty, 0), signs
