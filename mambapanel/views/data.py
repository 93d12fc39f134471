"""Read-only access to a stored run for the views: grids, embeddings, attention rows and
thumbnails, read lazily from the run's zarr store and shared by every session of a process.

Addressing is the store's: stage, block, patch (row, col) on the stored grid, image index.
The views read the zarr arrays directly, not through xarray: opening a run as a DataTree
builds an index per coordinate and makes xarray import Dask and SciPy, a large part of a
served dashboard's first render, for a few small array reads.

A run that is damaged on disk (a chunk file deleted or cut short, a ``zarr.json`` that is
not metadata) raises :class:`mambapanel.store.RunError` on the read that meets it, naming
the run, the array and what is wrong, for the view to show.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from mambapanel.storage import Location, location
from mambapanel.store import (
    CLS_TEST,
    EMBEDDING_INTER,
    EMBEDDING_INTRA,
    RunError,
    check_run,
    open_run,
    read_member,
    run_attrs,
    stage_group,
)

if TYPE_CHECKING:
    import xarray as xr
    import zarr

    from mambapanel.findings.record import Findings

T = TypeVar("T")
Patch = tuple[int, int]
# The attention of query patches: ``from`` them to each patch (rows of the matrix, query ->
# key), or ``to`` them from each patch (columns).
DIRECTIONS = ("from", "to")


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

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self._arrays())

    def frozen(self) -> Embedding:
        """This embedding with its arrays made read-only (every session shares it)."""
        for array in self._arrays():
            array.flags.writeable = False
        return self

    def _arrays(self) -> list[np.ndarray]:
        values = (getattr(self, field.name) for field in fields(self))
        return [array for array in values if array is not None]


class SharedReads:
    """What the sessions of a process read from their runs, read once and shared: opened
    stores, stage attributes, image ids, embeddings, thumbnails, stored findings.

    Keys start with the run's resolved path and its layout on disk
    (:func:`layout_version`): a run changed on disk since (``compute reduce`` adds a method,
    ``compute findings`` its findings) is read anew by the sessions opened after the change.
    Bounded: beyond ``max_bytes`` (arrays at their size, anything else at
    :data:`ENTRY_BYTES`) the least recently used values go. Values are never written to:
    arrays are read-only.
    """

    ENTRY_BYTES = 1024

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._values: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # sessions may run on Panel's threads (--num-threads)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: tuple, read: Callable[[], T]) -> T:
        """The value of ``key``, read by ``read()`` unless held (an error is not held)."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key][0]
        value = read()  # outside the lock: a read can take a while; two reads are harmless
        size = self._size(value)
        with self._lock:
            if key not in self._values and size <= self.max_bytes:
                self._values[key] = (value, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (_, dropped) = self._values.popitem(last=False)
                    self._bytes -= dropped
        return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._bytes = 0

    def _size(self, value: object) -> int:
        if isinstance(value, np.ndarray | Embedding):
            return max(value.nbytes, self.ENTRY_BYTES)
        return self.ENTRY_BYTES


# Embeddings and thumbnails of a few runs take a few MB; 256 MB holds those of large runs
# (1,000 images x 8 blocks of inter-block points, 3,136 patches per intra-block embedding)
# and the transposed mean matrices of a few blocks (39 MB each at 3,136 patches) that
# queries of columns read.
SHARED = SharedReads(max_bytes=int(os.environ.get("MAMBAPANEL_SHARED_MB", "256")) * 2**20)


def layout_version(path: Path) -> tuple:
    """When the layout of the run at ``path`` last changed: the modification times of its
    directory, of the groups and arrays directly in it, and of their ``zarr.json``. Adding,
    replacing or deleting a group or an array (what ``compute reduce`` and ``findings`` do)
    changes one of them; a dozen ``stat`` calls, no reads."""

    def mtimes(directory: Path) -> tuple[int | None, int | None]:
        times = []
        for where in (directory, directory / "zarr.json"):
            try:
                times.append(where.stat().st_mtime_ns)
            except OSError:
                times.append(None)
        return tuple(times)

    try:
        members = sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    except OSError:
        members = []
    return (mtimes(path), *((name, *mtimes(path / name)) for name in members))


class RunData:
    """One run, opened and validated on first use, read on demand.

    Nothing is read when a RunData is made, so that a dashboard of many runs opens only the
    one it shows; the first read validates the run. What is read is shared with the other
    RunData of the same run in this process (:data:`SHARED`): each session makes its own
    RunData, and ten sessions read a run once.

    Parameters
    ----------
    path : a run made by ``python -m compute extract`` (and ``reduce`` for embeddings)
    name : how the dashboard lists it (default: the directory name)
    shared : where reads are kept for every session (default :data:`SHARED`)

    Raises
    ------
    mambapanel.store.RunError
        On first use: ``path`` is missing, not a run, or incomplete (the message names the
        path); on any read: the run is damaged there (the message names the run, the array
        and what is wrong).
    """

    def __init__(
        self, path: str | Path | Location, name: str | None = None, shared: SharedReads = SHARED
    ) -> None:
        # A URL (s3://, gs://) opens through fsspec, with the FSSPEC_<SCHEME>_* variables of
        # the server's environment or the options of a Location.
        url = isinstance(path, Location) or "://" in str(path)
        self.path = location(path) if url else Path(path)
        self.name = name or self.path.name
        self.shared = shared

    def __repr__(self) -> str:
        return f"RunData({self.name!r}, path={str(self.path)!r})"

    @cached_property
    def _key(self) -> tuple:
        """The run as :attr:`shared` knows it: its resolved path and layout version, taken
        once, when this RunData is first used."""
        if isinstance(self.path, Location):  # an object store: no directory times to read
            return (str(self.path), ())
        return (str(self.path.resolve()), layout_version(self.path))

    def _shared(self, key: tuple, read: Callable[[], T]) -> T:
        return self.shared.get((*self._key, *key), read)

    @cached_property
    def root(self) -> zarr.Group:
        """The run's root group, validated (:func:`mambapanel.store.check_run`)."""

        def validated() -> zarr.Group:
            root = check_run(self.path)
            if not root.attrs["complete"]:
                open_run(self.path)  # refuses an incomplete run, with the store's message
            return root

        return self._shared(("root",), validated)

    @property
    def opened(self) -> bool:
        """Whether the run has been opened (by :meth:`open` or a first read)."""
        return "root" in self.__dict__  # where functools.cached_property keeps the group

    def open(self) -> RunData:
        """Validate the run now (it is otherwise validated on first use) and read its image
        ids (every view needs them); returns it.

        Raises
        ------
        mambapanel.store.RunError
            See the class.
        """
        _ = self.image_ids
        return self

    @cached_property
    def tree(self) -> xr.DataTree:
        """The run as an ``xarray.DataTree`` (:func:`mambapanel.store.open_run`), opened on
        first use: the dashboard's own views do not need it."""
        return open_run(self.path)

    def findings(self) -> Findings | None:
        """The run's stored findings (:func:`mambapanel.findings.record.read_findings`), None
        before ``python -m compute findings``."""
        from mambapanel.findings.record import read_findings

        return self._shared(("findings", self.name), lambda: read_findings(self.tree, self.name))

    @property
    def stages(self) -> list[int]:
        return [int(stage) for stage in self.root.attrs["stages"]]

    @property
    def image_ids(self) -> list[str]:
        def read() -> list[str]:
            return [str(image_id) for image_id in self._read(self.root, "image_id").tolist()]

        return self._shared(("image_ids",), read)

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

        def read() -> list[str]:
            group = self._stage_group(stage)
            if EMBEDDING_INTRA not in group or "method" not in group:
                return []
            return [str(method) for method in self._read(group, "method").tolist()]

        return list(self._shared(("methods", stage), read))

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

        def read() -> Embedding:
            values = self._embedding(stage, EMBEDDING_INTER, method, ("image", "block", "xy"))
            n_images, n_blocks, _ = values.shape
            image, block = np.divmod(np.arange(n_images * n_blocks), n_blocks)
            points = values.reshape(-1, 2).astype(np.float64)
            return Embedding(points[:, 0], points[:, 1], image=image, block=block).frozen()

        return self._shared(("inter", stage, method), read)

    def intra_embedding(self, stage: int, block: int, method: str) -> Embedding:
        """Mode 2: the p² points of ``embedding_intra`` of one block (one per query patch)."""

        def read() -> Embedding:
            values = self._embedding(stage, EMBEDDING_INTRA, method, ("query", "xy"), block=block)
            row, col = np.divmod(np.arange(len(values)), self.grid(stage)[1])
            points = values.astype(np.float64)
            return Embedding(points[:, 0], points[:, 1], row=row, col=col).frozen()

        return self._shared(("intra", stage, block, method), read)

    def attention_row(
        self, stage: int, block: int, patch: Patch, route: int | None = None
    ) -> np.ndarray:
        """Algorithm 2: ``attention_mean`` from ``patch`` to every patch, f32(height, width);
        with ``route``, that route's part of it (``attention_mean_by_route``).

        Raises
        ------
        mambapanel.store.RunError
            A ``route`` of a run that does not keep its routes apart, or that it lacks.
        """
        query = self.patch_index(stage, patch)
        group = self._stage_group(stage)
        if route is None:
            row = self._read(group, "attention_mean", ("key",), block=block, query=query)
        else:
            self.check_route(stage, route)
            row = self._read(
                group, "attention_mean_by_route", ("key",), block=block, route=route, query=query
            )
        return row.reshape(self.grid(stage))

    def query_attention(
        self,
        stage: int,
        block: int,
        query: Sequence[Patch],
        direction: str = "from",
        route: int | None = None,
    ) -> np.ndarray:
        """Algorithm 2 for a set of patches: the mean of the ``attention_mean`` rows of
        ``query`` (``from``: the attention they give each patch) or of its columns (``to``:
        the attention each patch gives them), f32(height, width); with ``route``, of that
        route's part of it (``attention_mean_by_route``, :meth:`check_route`).

        Reads those rows; columns span every chunk of the block, so its whole matrix is
        read once, its columns kept as rows (in :attr:`shared`, for every session).
        :func:`query_mean` on the whole matrix is the reference.
        """
        if route is None:
            return self._query_mean(stage, query, direction, "attention_mean", block=block)
        self.check_route(stage, route)
        return self._query_mean(
            stage, query, direction, "attention_mean_by_route", block=block, route=route
        )

    def image_query_attention(
        self, stage: int, block: int, image: int, query: Sequence[Patch], direction: str = "from"
    ) -> np.ndarray:
        """:meth:`query_attention` on one image's ``attention``, f32(height, width). Its
        matrix is one chunk, read whole for a row as for a column, and not kept.

        Raises
        ------
        mambapanel.store.RunError
            A sketched run keeps no matrices of ``image`` (see :meth:`image_attention_row`).
        """
        self._check_kept(image)
        return self._query_mean(stage, query, direction, "attention", image=image, block=block)

    def _query_mean(
        self, stage: int, query: Sequence[Patch], direction: str, variable: str, **index: int
    ) -> np.ndarray:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if not query:
            raise ValueError("no query patches: the mean of no rows or columns is undefined")
        patches = [self.patch_index(stage, patch) for patch in query]
        if direction == "to" and variable == "attention_mean":
            values = self._columns(stage, index["block"])[patches]
        else:  # rows of f(query, key), or of its transpose f(key, query) for columns
            dims = ("query", "key") if direction == "from" else ("key", "query")
            group = self._stage_group(stage)
            values = self._read(group, variable, dims, **index, **{dims[0]: patches})
        mean = values.mean(axis=0, dtype=np.float64)
        return mean.astype(np.float32).reshape(self.grid(stage))

    def _columns(self, stage: int, block: int) -> np.ndarray:
        """``attention_mean`` of a block transposed, f32(key, query), C-ordered and
        read-only: its columns as rows."""

        def read() -> np.ndarray:
            group = self._stage_group(stage)
            matrix = self._read(group, "attention_mean", ("key", "query"), block=block)
            columns = np.ascontiguousarray(matrix)
            columns.flags.writeable = False
            return columns

        return self._shared(("columns", stage, block), read)

    @property
    def by_route(self) -> bool:
        """Whether the run keeps each route's mean matrices (``compute extract --by-route``)."""
        return bool(self.attrs["by_route"])

    def routes(self, stage: int) -> np.ndarray | None:
        """The scan routes of ``stage``, int64(K, L) patches row-major on its full grid, read
        only; None for a run made before they were recorded."""

        def read() -> np.ndarray | None:
            group = self._stage_group(stage)
            if "routes" not in group:
                return None
            values = self._read(group, "routes", ("route", "step"))
            values.flags.writeable = False
            return values

        return self._shared(("routes", stage), read)

    def check_route(self, stage: int, route: int) -> None:
        """Refuse a route this run cannot show apart, by name.

        Raises
        ------
        mambapanel.store.RunError
            The run was made without ``--by-route``, or has fewer routes.
        """
        if not self.by_route:
            raise RunError(
                f"run {self.name} stores no matrices by route (it was extracted without "
                f"--by-route): route {route} cannot be shown apart; choose merged, or extract "
                "the run again with python -m compute extract --by-route"
            )
        routes = self.routes(stage)
        if not 0 <= route < len(routes):
            raise RunError(
                f"run {self.name} has {len(routes)} routes at stage {stage}; no route {route}"
            )

    def attention_rows(self, stage: int, patch: Patch) -> np.ndarray:
        """``attention_mean`` from ``patch`` in every block, f32(block, height, width), in one
        read of the store whose chunks zarr fetches together (faster than
        :meth:`attention_row` block by block)."""
        query = self.patch_index(stage, patch)
        group = self._stage_group(stage)
        rows = self._read(group, "attention_mean", ("block", "key"), query=query)
        return rows.reshape(-1, *self.grid(stage))

    def image_attention_row(self, stage: int, block: int, image: int, patch: Patch) -> np.ndarray:
        """One image's ``attention`` from ``patch`` to every patch, f32(height, width).

        Raises
        ------
        mambapanel.store.RunError
            A sketched run keeps no matrices of ``image`` (named, with what it keeps).
        """
        self._check_kept(image)
        query = self.patch_index(stage, patch)
        group = self._stage_group(stage)
        row = self._read(group, "attention", ("key",), image=image, block=block, query=query)
        return row.astype(np.float32).reshape(self.grid(stage))

    @property
    def attrs(self) -> dict:
        """The run's root attrs under today's names (:func:`mambapanel.store.run_attrs`)."""
        return self._shared(("attrs",), lambda: run_attrs(self.root.attrs))

    def _check_kept(self, image: int) -> None:
        kept = self.attrs["keep_images"]
        if image >= kept:
            raise RunError(
                f"run {self.name} keeps the matrices of its first {kept} images only (--keep "
                f"{self.attrs['keep']} --keep-images {kept}): image {image} has none; pick "
                "one of those, or see its scatterplot points and the block's mean"
            )

    @property
    def explanations(self) -> list[str]:
        """The relevance maps stored per image ("rollout", "attribution"); [] without."""
        if not self.attrs["explanations"]:
            return []

        def read() -> list[str]:
            return [str(name) for name in self.root["explanation"][...].tolist()]

        return self._shared(("explanations",), read)

    @property
    def has_cls(self) -> bool:
        """Whether the run stores its CLS token's row and column (a Vim run): the store
        keeps them exactly where the perturbation test tests the CLS map."""

        def stored() -> bool:
            return CLS_TEST in self.root["test"][...].tolist()

        return bool(self.attrs["explanations"]) and self._shared(("cls",), stored)

    def cls_attention(self, stage: int, block: int, image: int) -> np.ndarray:
        """One image's attention from the CLS token to every patch, f32(height, width)."""
        group = self._stage_group(stage)
        row = self._read(group, "attention_from_cls", ("key",), image=image, block=block)
        return row.astype(np.float32).reshape(self.grid(stage))

    @property
    def relevance_grid(self) -> tuple[int, int]:
        """The grid (height, width) of the relevance maps: the first stage's full grid."""
        return int(self.attrs["relevance_grid_height"]), int(self.attrs["relevance_grid_width"])

    def relevance(self, image: int, explanation: str) -> np.ndarray:
        """One image's relevance map ``explanation``, f32(height, width) on
        :attr:`relevance_grid`."""
        index = self.explanations.index(explanation)
        values = self._read(self.root, "relevance", ("patch",), image=image, explanation=index)
        return values.astype(np.float32).reshape(self.relevance_grid)

    def faithfulness(self) -> tuple[list[str], np.ndarray]:
        """The perturbation test's maps and its areas f64(image, test, removal) (removal 0:
        most relevant first, 1: least; NaN for an image not tested): the mean predicted
        class probability over the removed fractions
        (:func:`mambapanel.findings.metrics.curve_area`)."""

        def read() -> tuple[list[str], np.ndarray]:
            from mambapanel.findings.metrics import curve_area

            tests = [str(name) for name in self.root["test"][...].tolist()]
            curves = self._read(self.root, "faithfulness", allow_nan=True)
            areas = curve_area(curves, self.root["fraction"][...])
            areas.flags.writeable = False
            return tests, areas

        return self._shared(("faithfulness",), read)

    def thumbnail(self, image: int) -> np.ndarray:
        """The model's centre crop of ``image``, uint8(64, 64, 3), read-only."""

        def read() -> np.ndarray:
            pixels = self._read(self.root, "thumbnail", ("y", "x", "rgb"), image=image)
            pixels.flags.writeable = False
            return pixels

        return self._shared(("thumbnail", image), read)

    def _stage_group(self, stage: int) -> zarr.Group:
        if stage not in self.stages:
            raise KeyError(f"{self.path}: stores stages {self.stages}, not stage {stage}")
        return self._shared(
            ("group", stage), lambda: read_member(self.path, self.root, stage_group(stage))
        )

    def _stage_attrs(self, stage: int) -> dict:
        return self._shared(("attrs", stage), lambda: dict(self._stage_group(stage).attrs))

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
        group = self._stage_group(stage)
        return self._read(group, variable, dims, method=methods.index(method), **index)

    def _read(
        self,
        group: zarr.Group,
        variable: str,
        dims: tuple[str, ...] | None = None,
        allow_nan: bool = False,
        **index: int | list[int],
    ) -> np.ndarray:
        """``variable`` of ``group`` at integer positions ``index`` {dimension: position or
        list of positions}, with the remaining dimensions (a dimension indexed by a list
        remains) in the order ``dims`` (what ``isel`` and ``transpose`` do on the xarray
        variable; None: as stored).

        Raises
        ------
        mambapanel.store.RunError
            A chunk that cannot be read, or a float value that reads as NaN, the fill value
            of an unwritten chunk: a complete run has none (unless ``allow_nan``: a variable
            whose NaN says "not measured").
        """
        array = self._shared(
            ("array", group.path, variable), lambda: read_member(self.path, group, variable)
        )
        names = tuple(array.metadata.dimension_names)
        kept = [name for name in names if not isinstance(index.get(name, []), int)]
        dims = tuple(kept) if dims is None else dims
        if set(index) - set(names) or set(kept) != set(dims):
            raise KeyError(
                f"{self.path}: {array.path} has dimensions {names}; asked for "
                f"{sorted(index)} and {dims}"
            )
        selection = tuple(index.get(name, slice(None)) for name in names)
        try:
            values = array.oindex[selection] if kept != list(names) else array[selection]
        except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: a codec's
            raise self._damaged(array, selection, index, f"cannot be read ({err})") from err
        if values.dtype.kind == "f" and not allow_nan and np.isnan(values).any():
            raise self._damaged(array, selection, index, "reads NaN, the fill value")
        return np.transpose(values, [kept.index(name) for name in dims])

    def _damaged(
        self, array: zarr.Array, selection: tuple, index: dict[str, int | list[int]], problem: str
    ) -> RunError:
        """What is wrong with the chunk files behind ``array[selection]``, as a RunError."""

        def chunks(position: int | list[int] | slice, size: int, length: int) -> list[int]:
            if isinstance(position, slice):
                return list(range(-(-length // size)))
            return sorted({index // size for index in np.atleast_1d(position).tolist()})

        ranges = [chunks(*axis) for axis in zip(selection, array.chunks, array.shape, strict=True)]
        files = [
            Path(array.path, array.metadata.encode_chunk_key(coords))
            for coords in itertools.product(*ranges)
        ]
        local = isinstance(self.path, Path)  # chunk files of an object store are not looked at
        missing = [file for file in files if local and not (self.path / file).is_file()]
        where = ", ".join(_positions(name, position) for name, position in index.items()) or "all"
        if not local:
            what = f"{where} {problem}"
        elif missing:
            what = f"chunk file {missing[0]} is missing ({where} {problem})"
        else:
            sizes = ", ".join(f"{(self.path / file).stat().st_size} bytes" for file in files)
            what = f"{where} {problem}; chunk file {files[0]}: {sizes}"
            if not array.compressors:  # stored raw: a chunk's size is known
                expected = int(np.prod(array.chunks)) * array.dtype.itemsize
                what += f", {expected} bytes expected"
        return RunError(f"run {self.name} ({self.path}): {array.path}: {what}")


def _positions(name: str, position: int | list[int]) -> str:
    """Where along dimension ``name`` a read was, in words: ``query 21``, ``key 3, 4, 9``."""
    listed = np.atleast_1d(position).tolist()
    return f"{name} {', '.join(map(str, listed[:8]))}{' …' if len(listed) > 8 else ''}"


def query_mean(matrix: np.ndarray, query: Sequence[int], direction: str) -> np.ndarray:
    """The plain definition behind :meth:`RunData.query_attention`: the mean of the rows
    (``from``) or the columns (``to``) ``query`` of an attention matrix f(query, key), one
    at a time, f64(key) or f64(query)."""
    picked = [matrix[index] if direction == "from" else matrix[:, index] for index in query]
    return np.mean(np.array(picked, dtype=np.float64), axis=0)


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
