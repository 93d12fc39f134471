"""Every metric of one stage, as stored in a run's ``findings/stage{s}`` group
(:mod:`mambapanel.findings.record` has the schema), and of a whole run read from its store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mambapanel.findings.metrics import (
    block_separation,
    distance_correlation,
    faithfulness,
    grid_distance,
    locality_profile,
    neighbour_purity,
    order_chance,
    order_share,
    pair_ranks,
    pattern_distances,
    preceding_mask,
    relabelled_routes,
    self_row_column_share,
    sequence_distance,
)
from mambapanel.findings.record import RANDOM, STRING, write_findings
from mambapanel.storage import Location
from mambapanel.store import EMBEDDING_INTER, open_run, stage_group

#: Orders whose "preceding patches" every run is measured against (the paper's three, the
#: two of the original models and Hilbert); a run's own order is added when it is not here.
COMPARED_ORDERS = ("cross", "bidirectional", "diagonal", "morton", "spiral", "hilbert")
SEEDS = 8


def stage_findings(
    attention_mean: np.ndarray,
    height: int,
    width: int,
    *,
    embeddings: Mapping[str, np.ndarray] | None = None,
    routes: np.ndarray | None = None,
    compared: Mapping[str, np.ndarray] | None = None,
    window: int | None = None,
    seeds: int = SEEDS,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Every metric of one stage, as stored in ``findings/stage{s}`` (module docstring).

    Parameters
    ----------
    attention_mean : r(block, L, L)
    embeddings : {method: r(image, block, 2)}
        The stage's ``embedding_inter``; none gives no ``separation``.
    routes : int(K, L) or None
        The run's own order on this grid; None (a pooled stage) gives no order-dependent
        variables.
    compared : {order: int(K, L)}
        Orders whose preceding patches :func:`order_share` is measured against; ``random``
        (the run's routes relabelled, mean over ``seeds``) is added.
    window : int
        Steps back along a route that count as preceding; default W, one grid row's worth
        (under row-major, the rest of the query's row to the left and the end of the row
        above).
    attrs : stored with the dataset (e.g. stage, pool)
    """
    magnitude = np.abs(np.asarray(attention_mean, dtype=np.float64))
    n_blocks = len(magnitude)
    window = width if window is None else window
    blocks = range(n_blocks)
    shares = [self_row_column_share(magnitude[b], height, width) for b in blocks]
    distances = [pattern_distances(magnitude[b]) for b in blocks]
    purities = [neighbour_purity(distances[b], height, width) for b in blocks]
    pattern_ranks = [pair_ranks(distances[b]) for b in blocks]
    del distances  # L² floats per block
    grid_ranks = pair_ranks(grid_distance(height, width, "euclidean"))
    chebyshev = grid_distance(height, width, "chebyshev")
    locality = [locality_profile(magnitude[b], chebyshev) for b in blocks]
    data: dict[str, tuple] = {
        "self_share": ("block", [s["self"] for s in shares]),
        "row_share": ("block", [s["row"] for s in shares]),
        "column_share": ("block", [s["column"] for s in shares]),
        "row_purity": ("block", [p["row"] for p in purities]),
        "column_purity": ("block", [p["column"] for p in purities]),
        "spatial_correlation": (
            "block",
            [distance_correlation(pattern_ranks[b], grid_ranks) for b in blocks],
        ),
        "locality": (("block", "distance"), np.stack([profile for profile, _ in locality])),
        "pairs": ("distance", locality[0][1]),
    }
    coords: dict[str, Any] = {
        "block": np.arange(n_blocks),
        "distance": np.arange(len(locality[0][1])),
    }
    if embeddings:
        methods = list(embeddings)
        data["separation"] = ("method", [block_separation(embeddings[m]) for m in methods])
        coords["method"] = np.array(methods, dtype=STRING)
    if routes is not None:
        routes = np.atleast_2d(np.asarray(routes))
        sequence = sequence_distance(routes)
        sequence_ranks = pair_ranks(sequence)
        data["sequence_correlation"] = (
            "block",
            [distance_correlation(pattern_ranks[b], sequence_ranks) for b in blocks],
        )
        masks = {name: [preceding_mask(r, window)] for name, r in (compared or {}).items()}
        masks[RANDOM] = [
            preceding_mask(relabelled_routes(routes, seed), window) for seed in range(seeds)
        ]
        data["order_share"] = (
            ("block", "reference"),
            [
                [np.mean([order_share(magnitude[b], m) for m in masks[name]]) for name in masks]
                for b in blocks
            ],
        )
        data["order_chance"] = ("reference", [order_chance(masks[name][0]) for name in masks])
        coords["reference"] = np.array(list(masks), dtype=STRING)
        profiles = [locality_profile(magnitude[b], sequence) for b in blocks]
        data["sequence_locality"] = (
            ("block", "sequence_distance"),
            np.stack([profile for profile, _ in profiles]),
        )
        data["sequence_pairs"] = ("sequence_distance", profiles[0][1])
        coords["sequence_distance"] = np.arange(len(profiles[0][1]))
    return xr.Dataset(
        {name: (dims, np.asarray(values)) for name, (dims, values) in data.items()},
        coords=coords,
        attrs={
            **(attrs or {}),
            "grid_height": height,
            "grid_width": width,
            "window": window,
            "seeds": seeds,
            "row_neighbours": width - 1,
            "column_neighbours": height - 1,
            "row_chance": purities[0]["row_chance"],
            "column_chance": purities[0]["column_chance"],
            "notes": list((attrs or {}).get("notes", [])),
        },
    )


def compute_run(
    path: str | Path | Location,
    *,
    window: int | None = None,
    seeds: int = SEEDS,
    compared: Sequence[str] = COMPARED_ORDERS,
) -> None:
    """Compute every finding of the run at ``path`` and store it in the run (replacing any
    stored before); see :mod:`mambapanel.findings.metrics` for the metrics and the stored schema.

    Parameters
    ----------
    window : int
        Steps back along a route that count as "preceding" (default: each stage's grid
        width, one grid row's worth).
    seeds : int
        Random relabellings averaged for the ``random`` reference.
    compared : orders whose preceding patches are measured; the run's own order is added.

    Raises
    ------
    mambapanel.store.RunError
        ``path`` is not a complete run.
    """
    from mambapanel import orders  # torch: only where findings are computed, not read

    tree = open_run(path)
    order = str(tree.attrs["order"])
    model_routes = _routes_of(str(tree.attrs["model"]))
    known = set(orders.available())
    compared = [name for name in dict.fromkeys([*compared, order]) if name in known]
    stages = {}
    for stage in tree.attrs["stages"]:
        node = tree[stage_group(stage)]
        attrs = node.attrs
        height, width = attrs["grid_height"], attrs["grid_width"]
        notes = []
        embeddings = {}
        if EMBEDDING_INTER in node.data_vars:
            inter = node[EMBEDDING_INTER].transpose("method", "image", "block", "xy").values
            embeddings = {str(m): inter[i] for i, m in enumerate(node["method"].values)}
        else:
            notes.append(
                "block separation: the run stores no inter-block embedding "
                f"(`python -m compute reduce {path}` adds it)"
            )
        routes = compared_routes = None
        if attrs["pool"] > 1:
            notes.append(
                f"order-dependent metrics (ρ sequence, preceding, sequence locality): the "
                f"stage is stored pooled {attrs['pool']}x{attrs['pool']}, and routes visit "
                f"the model's {attrs['full_grid_height']}x{attrs['full_grid_width']} patches"
            )
        elif order not in known:
            notes.append(
                f"order-dependent metrics: the run's order {order!r} is not registered here "
                "(mambapanel.orders.register it, then call mambapanel.findings.report.report)"
            )
        else:
            routes = model_routes(order, height, width)
            compared_routes = {name: model_routes(name, height, width) for name in compared}
        stages[stage] = stage_findings(
            node["attention_mean"].transpose("block", "query", "key").values,
            height,
            width,
            embeddings=embeddings,
            routes=routes,
            compared=compared_routes,
            window=window,
            seeds=seeds,
            attrs={"stage": stage, "pool": attrs["pool"], "notes": notes},
        )
    write_findings(
        path,
        stages,
        {"order": order, "compared_orders": compared, "seeds": seeds},
        run_faithfulness(tree),
    )


def _routes_of(model: str):
    """routes(order, H, W) -> int(K, L) as the run's model family scans an order: VMamba all
    of the order's routes, Vim route 0 and its reverse (the model's own patches, the CLS
    token left out)."""
    from mambapanel import models, orders

    if models.CONFIGS.get(model, {}).get("family") != "vim":
        return lambda order, height, width: orders.routes(order, height, width).numpy()

    def routes(order: str, height: int, width: int) -> np.ndarray:
        route = orders.single_route(order, height, width).numpy()
        return np.stack([route, route[::-1]])

    return routes


def run_faithfulness(tree: xr.DataTree) -> xr.Dataset | None:
    """The perturbation test's summary of an opened run (``findings/faithfulness``), or None
    when the run stores no test."""
    if not tree.attrs.get("faithfulness_images"):
        return None
    curves = tree["faithfulness"].transpose("image", "test", "removal", "fraction").values
    summary = faithfulness(curves, tree["fraction"].values)
    return xr.Dataset(
        # "map", not the run's "test": a child's coordinate equal to its parent's would
        # read back as inherited, not as the child's own.
        {name: ("map", values) for name, values in summary.items()},
        coords={"map": np.array([str(t) for t in tree["test"].values], dtype=STRING)},
    )
