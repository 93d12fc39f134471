"""The findings a run stores: their schema, written and read back.

Stored findings (``python -m compute findings RUN``), in the run's zarr store
------------------------------------------------------------------------------
Group ``findings`` (absent until computed; present but without ``findings_version`` while
being written, which reads as absent)
    attrs: findings_version (1), mambapanel_version, created (UTC, ISO 8601), order (the
    run's), compared_orders ([name, ...]), seeds (random relabellings averaged)
Group ``findings/stage{s}`` for every stored stage s: one ``xarray.Dataset``
    block (block,) int64, method (method,) str, reference (reference,) str,
    distance (distance,) int64, sequence_distance (sequence_distance,) int64: coordinates
    separation (method,) f64              :func:`block_separation` of the stage's
                                          ``embedding_inter`` per stored method
    self_share, row_share, column_share (block,) f64    :func:`self_row_column_share`
    row_purity, column_purity (block,) f64              :func:`neighbour_purity`
    spatial_correlation (block,) f64      :func:`distance_correlation` of the patterns with
                                          the Euclidean grid distance
    sequence_correlation (block,) f64     the same with :func:`sequence_distance`
    order_share (block, reference) f64    :func:`order_share` with the ``window`` patches
                                          preceding each query along the routes of each
                                          compared order, and of ``random`` (the run's own
                                          routes on randomly relabelled patches, mean over
                                          ``seeds``)
    order_chance (reference,) f64         :func:`order_chance` of each reference
    locality (block, distance) f64        :func:`locality_profile` over the Chebyshev grid
                                          distance; ``pairs`` (distance,) int64 its counts
    sequence_locality (block, sequence_distance) f64, sequence_pairs (sequence_distance,)
                                          the same over the sequence distance
    attrs: stage, grid_height, grid_width, pool, window (default the grid width), seeds,
    row_neighbours, column_neighbours, row_chance, column_chance, notes (["what was not
    computed and why", ...])
Group ``findings/faithfulness`` (runs with explanations): the perturbation test of the
relevance maps (:func:`faithfulness`), one small dataset
    map (map,) str                        the maps tested (rollout, attribution, cls, random)
    most, least (map,) f64                mean area under the class-probability curve with the
                                          most / least relevant patches removed first
    most_error, least_error (map,) f64    their standard errors over images
    images (map,) int64                   images tested
The order-dependent variables (``sequence_correlation``, ``order_share``, ``order_chance``,
``sequence_locality``, ``sequence_pairs``) are absent for a pooled stage: routes visit the
model's patches, which a pooled store no longer holds. ``separation`` is absent before
``python -m compute reduce``. String coordinates read back as numpy StringDType; index
them by position (``isel``), as :mod:`mambapanel.views.data` does for ``method``.
The functions named are those of :mod:`mambapanel.findings.metrics`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from mambapanel import __version__
from mambapanel.storage import Location, location
from mambapanel.store import FINDINGS_GROUP, RunError, findings_group

FINDINGS_VERSION = 1
GROUP = FINDINGS_GROUP
RANDOM = "random"  # the reference order made of the run's routes on relabelled patches
FAITHFULNESS = "faithfulness"  # the group of the perturbation test's summary
STRING = object  # zarr v3 specifies variable-length strings, not numpy's fixed-width "<U"


def write_findings(
    path: str | Path | Location,
    stages: Mapping[int, xr.Dataset],
    attrs: Mapping[str, Any],
    faithfulness: xr.Dataset | None = None,
) -> None:
    """Replace the ``findings`` group of the run at ``path`` with ``stages`` (and the
    perturbation test's summary, ``findings/faithfulness``, where the run has one).

    The group's attrs (``findings_version`` among them) are written last, so a write that
    is killed midway leaves findings that read as absent, never half of them.
    """
    run = location(path).zarr_store()
    root = zarr.open_group(run, mode="r+")
    if GROUP in root:
        del root[GROUP]
    root.create_group(GROUP)
    for stage, dataset in stages.items():
        dataset.to_zarr(run, group=findings_group(stage), mode="w", consolidated=False)
    if faithfulness is not None:
        faithfulness.to_zarr(run, group=f"{GROUP}/{FAITHFULNESS}", mode="w", consolidated=False)
    group = zarr.open_group(run, path=GROUP, mode="r+")
    group.attrs.update(
        # As JSON reads them back (tuples become lists), like the run's own attrs.
        json.loads(
            json.dumps(
                {
                    **attrs,
                    "findings_version": FINDINGS_VERSION,
                    "mambapanel_version": __version__,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
        )
    )


@dataclass(frozen=True)
class Findings:
    """The stored findings of one run: ``stages`` {stage: Dataset} (module docstring), the
    ``findings`` group's ``attrs``, and the run's ``name``, ``model`` and ``order``."""

    name: str
    model: str
    order: str
    attrs: dict[str, Any]
    stages: dict[int, xr.Dataset]
    faithfulness: xr.Dataset | None = None  # per map tested: most, least, errors, images


def read_findings(tree: xr.DataTree, name: str) -> Findings | None:
    """The findings stored in an opened run (:func:`mambapanel.store.open_run`), loaded;
    None when the run has none (``python -m compute findings RUN`` adds them).

    Raises
    ------
    ValueError
        Findings of another format version than this mambapanel reads.
    """
    if GROUP not in tree.children:
        return None
    node = tree[GROUP]
    version = node.attrs.get("findings_version")
    if version is None:  # a write that did not finish
        return None
    if version != FINDINGS_VERSION:
        raise RunError(
            f"{name}: findings format version {version} (written by mambapanel "
            f"{node.attrs.get('mambapanel_version')}); this mambapanel reads version "
            f"{FINDINGS_VERSION}: run `python -m compute findings` on it again"
        )
    stages, faithfulness = {}, None
    for child_name, child in node.children.items():
        dataset = child.to_dataset(inherit=False).load()
        if child_name == FAITHFULNESS:
            faithfulness = dataset
        else:
            stages[int(dataset.attrs["stage"])] = dataset
    return Findings(
        name=name,
        model=str(tree.attrs.get("model")),
        order=str(tree.attrs.get("order")),
        attrs=dict(node.attrs),
        stages=dict(sorted(stages.items())),
        faithfulness=faithfulness,
    )


def labels(dataset: xr.Dataset, coordinate: str) -> list[str]:
    """A string coordinate (``method``, ``reference``) as a list of str; [] when absent."""
    if coordinate not in dataset.coords:
        return []
    return [str(value) for value in dataset[coordinate].values]
