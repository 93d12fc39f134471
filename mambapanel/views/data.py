"""Read-only access to a stored run for the views: grids, embeddings, attention rows and
thumbnails, read lazily through :func:`mambapanel.store.open_run` and cached per run.

Addressing is the store's: stage, block, patch (row, col) on the stored grid, image index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from mambapanel.store import RunError, open_run

Patch = tuple[int, int]


@dataclass(frozen=True)
class Embedding:
    """Points of one scatterplot: ``x``, ``y`` f64(n,) and what each point is.

    Mode 1 (inter-block): point ``image * n_blocks + block``; ``image`` and ``block`` are
    int64(n,). Mode 2 (intra-block): point ``row * width + col`` (the query patch);
    ``row`` and ``col`` are int64(n,).
    """

    x: np.ndarray
    y: np.ndarray
    image: np.ndarray | None = None
    block: np.ndarray | None = None
    row: np.ndarray | None = None
    col: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)


class RunData:
    """One run, opened and validated once, read on demand.

    Parameters
    ----------
    path : a run made by ``python -m compute extract`` (and ``reduce`` for embeddings)
    name : how the dashboard lists it (default: the directory name)

    Raises
    ------
    mambapanel.store.RunError
        ``path`` is missing, not a run, or incomplete (the message names the path).
    """

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self.tree: xr.DataTree = open_run(self.path)
        self._inter: dict[tuple[int, str], Embedding] = {}
        self._intra: dict[tuple[int, int, str], Embedding] = {}

    def __repr__(self) -> str:
        return f"RunData({self.name!r}, path={str(self.path)!r})"

    @property
    def stages(self) -> list[int]:
        return [int(stage) for stage in self.tree.attrs["stages"]]

    @property
    def image_ids(self) -> list[str]:
        return [str(image_id) for image_id in self.tree["image_id"].values]

    @property
    def order(self) -> str:
        return str(self.tree.attrs["order"])

    def node(self, stage: int) -> xr.DataTree:
        if stage not in self.stages:
            raise KeyError(f"{self.path}: stores stages {self.stages}, not stage {stage}")
        return self.tree[f"stage{stage}"]

    def n_blocks(self, stage: int) -> int:
        return int(self.node(stage).attrs["n_blocks"])

    def grid(self, stage: int) -> tuple[int, int]:
        """The stored grid (height, width), after pooling."""
        attrs = self.node(stage).attrs
        return int(attrs["grid_height"]), int(attrs["grid_width"])

    def full_grid(self, stage: int) -> tuple[int, int]:
        """The model's grid (height, width) at ``stage``, before pooling."""
        attrs = self.node(stage).attrs
        return int(attrs["full_grid_height"]), int(attrs["full_grid_width"])

    def pool(self, stage: int) -> int:
        return int(self.node(stage).attrs["pool"])

    def methods(self, stage: int) -> list[str]:
        """Stored reduction methods of ``stage`` ([] before ``python -m compute reduce``)."""
        node = self.node(stage)
        if "embedding_intra" not in node.data_vars:
            return []
        return [str(method) for method in node["method"].values]

    def patch_index(self, stage: int, patch: Patch) -> int:
        """The row-major query/key index of ``patch`` (row, col) on the stored grid."""
        height, width = self.grid(stage)
        row, col = patch
        if not (0 <= row < height and 0 <= col < width):
            raise KeyError(
                f"{self.path}: stage {stage} has a {height}x{width} grid; patch (row {row}, "
                f"col {col}) is outside it"
            )
        return row * width + col

    def inter_embedding(self, stage: int, method: str) -> Embedding:
        """Mode 1: the m x n points of ``embedding_inter`` (one per image and block)."""
        key = (stage, method)
        if key not in self._inter:
            values = self._embedding(stage, "embedding_inter", method)  # (image, block, xy)
            n_images, n_blocks, _ = values.shape
            image, block = np.divmod(np.arange(n_images * n_blocks), n_blocks)
            points = values.reshape(-1, 2).astype(np.float64)
            self._inter[key] = Embedding(points[:, 0], points[:, 1], image=image, block=block)
        return self._inter[key]

    def intra_embedding(self, stage: int, block: int, method: str) -> Embedding:
        """Mode 2: the p² points of ``embedding_intra`` of one block (one per query patch)."""
        key = (stage, block, method)
        if key not in self._intra:
            values = self._embedding(stage, "embedding_intra", method)[block]  # (query, xy)
            row, col = np.divmod(np.arange(len(values)), self.grid(stage)[1])
            points = values.astype(np.float64)
            self._intra[key] = Embedding(points[:, 0], points[:, 1], row=row, col=col)
        return self._intra[key]

    def _embedding(self, stage: int, variable: str, method: str) -> np.ndarray:
        methods = self.methods(stage)
        if method not in methods:
            raise KeyError(
                f"{self.path}: stage {stage} stores {variable} for methods {methods}, not "
                f"{method!r} (add it with `python -m compute reduce {self.path} --methods "
                f"{method}`)"
            )
        # By position: `.sel(method=...)` on the StringDType coordinate that zarr v3 strings
        # read back as selects every method (xarray 2025), not the one asked for.
        variable = self.node(stage)[variable].isel(method=methods.index(method))
        return variable.transpose(..., "xy").values

    def attention_row(self, stage: int, block: int, patch: Patch) -> np.ndarray:
        """Algorithm 2: ``attention_mean`` from ``patch`` to every patch, f32(height, width)."""
        query = self.patch_index(stage, patch)
        row = self.node(stage)["attention_mean"].isel(block=block, query=query).values
        return row.reshape(self.grid(stage))

    def image_attention_row(self, stage: int, block: int, image: int, patch: Patch) -> np.ndarray:
        """One image's ``attention`` from ``patch`` to every patch, f32(height, width)."""
        query = self.patch_index(stage, patch)
        row = self.node(stage)["attention"].isel(image=image, block=block, query=query)
        return row.values.astype(np.float32).reshape(self.grid(stage))

    def thumbnail(self, image: int) -> np.ndarray:
        """The model's centre crop of ``image``, uint8(64, 64, 3)."""
        return self.tree["thumbnail"].isel(image=image).values


RunsLike = str | Path | RunData | Sequence[str | Path | RunData] | Mapping[str, str | Path]


def load_runs(runs: RunsLike) -> dict[str, RunData]:
    """Open runs and name them: {name: RunData}, in the order given.

    Parameters
    ----------
    runs : a path or ``RunData``, a sequence of them, or a mapping {name: path}
        A name defaults to the directory name; directories with the same name are told
        apart by their full path.

    Raises
    ------
    mambapanel.store.RunError
        No run given, or a path that is not a usable run (the first one found).
    """
    if isinstance(runs, str | Path | RunData):
        runs = [runs]
    if isinstance(runs, Mapping):
        return {
            name: run if isinstance(run, RunData) else RunData(run, name)
            for name, run in runs.items()
        }
    if not runs:
        raise RunError("no run given: pass the path of a run made by `python -m compute extract`")
    opened = [run if isinstance(run, RunData) else RunData(run) for run in runs]
    names = [run.name for run in opened]
    if len(set(names)) < len(names):  # two runs/.../a and other/.../a
        for run in opened:
            if names.count(run.name) > 1:
                run.name = str(run.path)
    named = {run.name: run for run in opened}
    if len(named) < len(opened):
        raise RunError(f"the same run given twice: {[str(run.path) for run in opened]}")
    return named
