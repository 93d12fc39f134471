"""Read-only access to a stored run for the views: grids, embeddings, attention rows and
thumbnails, read lazily from the run's zarr store and cached per run.

Addressing is the store's: stage, block, patch (row, col) on the stored grid, image index.
The views read the zarr arrays directly, not through xarray: opening a run as a DataTree
builds an index per coordinate and makes xarray import Dask and SciPy, 0.5-0.8 s of a
served dashboard's first render here, for a few small array reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mambapanel.storage import Location, location
from mambapanel.store import RunError, check_run, open_run

if TYPE_CHECKING:
    import xarray as xr
    import zarr

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
    """One run, opened and validated on first use, read on demand.

    Nothing is read when a RunData is made, so that a dashboard of many runs opens only the
    one it shows; the first read validates the run.

    Parameters
    ----------
    path : a run made by ``python -m compute extract`` (and ``reduce`` for embeddings)
    name : how the dashboard lists it (default: the directory name)

    Raises
    ------
    mambapanel.store.RunError
        On first use: ``path`` is missing, not a run, or incomplete (the message names the
        path).
    """

    def __init__(self, path: str | Path | Location, name: str | None = None) -> None:
        # A URL (s3://, gs://) opens through fsspec, with the FSSPEC_<SCHEME>_* variables of
        # the server's environment or the options of a Location.
        url = isinstance(path, Location) or "://" in str(path)
        self.path = location(path) if url else Path(path)
        self.name = name or self.path.name
        self._inter: dict[tuple[int, str], Embedding] = {}
        self._intra: dict[tuple[int, int, str], Embedding] = {}
        # Stage groups, their attrs and method lists, read once: each read is a file read.
        self._groups: dict[int, zarr.Group] = {}
        self._attrs: dict[int, dict] = {}
        self._methods: dict[int, list[str]] = {}

    def __repr__(self) -> str:
        return f"RunData({self.name!r}, path={str(self.path)!r})"

    @cached_property
    def root(self) -> zarr.Group:
        """The run's root group, validated (:func:`mambapanel.store.check_run`)."""
        root = check_run(self.path)
        if not root.attrs["complete"]:
            open_run(self.path)  # refuses an incomplete run, with the store's message
        return root

    @property
    def opened(self) -> bool:
        """Whether the run has been opened (by :meth:`open` or a first read)."""
        return "root" in self.__dict__  # where functools.cached_property keeps the group

    def open(self) -> RunData:
        """Validate the run now (it is otherwise validated on first use); returns it.

        Raises
        ------
        mambapanel.store.RunError
            See the class.
        """
        _ = self.root
        return self

    @cached_property
    def tree(self) -> xr.DataTree:
        """The run as an ``xarray.DataTree`` (:func:`mambapanel.store.open_run`), opened on
        first use: the dashboard's own views do not need it."""
        return open_run(self.path)

    @cached_property
    def stages(self) -> list[int]:
        return [int(stage) for stage in self.root.attrs["stages"]]

    @cached_property
    def image_ids(self) -> list[str]:
        return [str(image_id) for image_id in self.root["image_id"][...].tolist()]

    @property
    def order(self) -> str:
        return str(self.root.attrs["order"])

    def n_blocks(self, stage: int) -> int:
        return int(self._stage_attrs(stage)["n_blocks"])

    def grid(self, stage: int) -> tuple[int, int]:
        """The stored grid (height, width), after pooling."""
        attrs = self._stage_attrs(stage)
        return int(attrs["grid_height"]), int(attrs["grid_width"])

    def full_grid(self, stage: int) -> tuple[int, int]:
        """The model's grid (height, width) at ``stage``, before pooling."""
        attrs = self._stage_attrs(stage)
        return int(attrs["full_grid_height"]), int(attrs["full_grid_width"])

    def pool(self, stage: int) -> int:
        return int(self._stage_attrs(stage)["pool"])

    def methods(self, stage: int) -> list[str]:
        """Stored reduction methods of ``stage`` ([] before ``python -m compute reduce``)."""
        if stage not in self._methods:
            group = self._stage_group(stage)
            stored = "embedding_intra" in group and "method" in group
            self._methods[stage] = [str(m) for m in group["method"][...].tolist()] if stored else []
        return list(self._methods[stage])

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
            values = self._embedding(stage, "embedding_inter", method, ("image", "block", "xy"))
            n_images, n_blocks, _ = values.shape
            image, block = np.divmod(np.arange(n_images * n_blocks), n_blocks)
            points = values.reshape(-1, 2).astype(np.float64)
            self._inter[key] = Embedding(points[:, 0], points[:, 1], image=image, block=block)
        return self._inter[key]

    def intra_embedding(self, stage: int, block: int, method: str) -> Embedding:
        """Mode 2: the p² points of ``embedding_intra`` of one block (one per query patch)."""
        key = (stage, block, method)
        if key not in self._intra:
            values = self._embedding(stage, "embedding_intra", method, ("query", "xy"), block=block)
            row, col = np.divmod(np.arange(len(values)), self.grid(stage)[1])
            points = values.astype(np.float64)
            self._intra[key] = Embedding(points[:, 0], points[:, 1], row=row, col=col)
        return self._intra[key]

    def attention_row(self, stage: int, block: int, patch: Patch) -> np.ndarray:
        """Algorithm 2: ``attention_mean`` from ``patch`` to every patch, f32(height, width)."""
        query = self.patch_index(stage, patch)
        row = self._read(stage, "attention_mean", ("key",), block=block, query=query)
        return row.reshape(self.grid(stage))

    def image_attention_row(self, stage: int, block: int, image: int, patch: Patch) -> np.ndarray:
        """One image's ``attention`` from ``patch`` to every patch, f32(height, width)."""
        query = self.patch_index(stage, patch)
        row = self._read(stage, "attention", ("key",), image=image, block=block, query=query)
        return row.astype(np.float32).reshape(self.grid(stage))

    def thumbnail(self, image: int) -> np.ndarray:
        """The model's centre crop of ``image``, uint8(64, 64, 3)."""
        return self.root["thumbnail"][image]

    def _stage_group(self, stage: int) -> zarr.Group:
        if stage not in self._groups:
            if stage not in self.stages:
                raise KeyError(f"{self.path}: stores stages {self.stages}, not stage {stage}")
            self._groups[stage] = self.root[f"stage{stage}"]
        return self._groups[stage]

    def _stage_attrs(self, stage: int) -> dict:
        if stage not in self._attrs:
            self._attrs[stage] = dict(self._stage_group(stage).attrs)
        return self._attrs[stage]

    def _embedding(
        self, stage: int, variable: str, method: str, dims: tuple[str, ...], **index: int
    ) -> np.ndarray:
        methods = self.methods(stage)
        if method not in methods:
            raise KeyError(
                f"{self.path}: stage {stage} stores {variable} for methods {methods}, not "
                f"{method!r} (add it with `python -m compute reduce {self.path} --methods "
                f"{method}`)"
            )
        return self._read(stage, variable, dims, method=methods.index(method), **index)

    def _read(self, stage: int, variable: str, dims: tuple[str, ...], **index: int) -> np.ndarray:
        """``variable`` of ``stage`` at integer positions ``index`` {dimension: position},
        with the remaining dimensions in the order ``dims`` (what ``isel`` and
        ``transpose`` do on the xarray variable)."""
        array = self._stage_group(stage)[variable]
        names = tuple(array.metadata.dimension_names)
        if set(index) - set(names) or set(names) - set(index) != set(dims):
            raise KeyError(
                f"{self.path}: stage{stage}/{variable} has dimensions {names}; asked for "
                f"{sorted(index)} and {dims}"
            )
        values = array[tuple(index.get(name, slice(None)) for name in names)]
        kept = [name for name in names if name not in index]
        return np.transpose(values, [kept.index(name) for name in dims])


Run = str | Path | Location
RunsLike = Run | RunData | Sequence[Run | RunData] | Mapping[str, Run]


def load_runs(runs: RunsLike) -> dict[str, RunData]:
    """Name runs: {name: RunData}, in the order given; each is opened on first use.

    Parameters
    ----------
    runs : a path, URL or ``RunData``, a sequence of them, or a mapping {name: path}
        A name defaults to the directory name; directories with the same name are told
        apart by their full path.

    Raises
    ------
    mambapanel.store.RunError
        No run given, or the same run twice.
    """
    if isinstance(runs, str | Path | Location | RunData):
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
