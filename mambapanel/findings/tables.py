"""The findings as tables: per block, per order, per stage and across runs, as DataFrames
and markdown (the report of ``python -m compute findings`` and the dashboard's Findings tab).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from mambapanel.findings.metrics import near_ratio
from mambapanel.findings.record import RANDOM, Findings, labels


@dataclass(frozen=True)
class Column:
    """A column of the per-block table: its legend, its values (one per block) and its
    value for attention with no structure (the table's ``chance`` row), all in one place."""

    name: str
    legend: str
    values: Callable[[xr.Dataset, str], np.ndarray]  # (stage dataset, run's order) -> (block,)
    chance: Callable[[xr.Dataset, str], float]


def _variable(name: str) -> Callable[[xr.Dataset, str], np.ndarray]:
    def values(dataset: xr.Dataset, order: str) -> np.ndarray:
        return dataset[name].values if name in dataset else _missing(dataset)

    return values


def _missing(dataset: xr.Dataset) -> np.ndarray:
    return np.full(dataset.sizes["block"], np.nan)


def _reference_share(reference: str | None) -> Callable[[xr.Dataset, str], np.ndarray]:
    """``order_share`` under ``reference`` (None: the run's own order)."""

    def values(dataset: xr.Dataset, order: str) -> np.ndarray:
        references = labels(dataset, "reference")
        name = order if reference is None else reference
        if name not in references:
            return _missing(dataset)
        return dataset["order_share"].isel(reference=references.index(name)).values

    return values


def _near(profile: str, pairs: str) -> Callable[[xr.Dataset, str], np.ndarray]:
    def values(dataset: xr.Dataset, order: str) -> np.ndarray:
        if profile not in dataset:
            return _missing(dataset)
        return np.array([near_ratio(p, dataset[pairs].values) for p in dataset[profile].values])

    return values


def _patches(dataset: xr.Dataset) -> int:
    return dataset.attrs["grid_height"] * dataset.attrs["grid_width"]


def _if_ordered(value: float) -> Callable[[xr.Dataset, str], float]:
    """A chance level that exists only where the order-dependent variables do."""
    return lambda dataset, order: value if "order_share" in dataset else float("nan")


def _own_chance(dataset: xr.Dataset, order: str) -> float:
    references = labels(dataset, "reference")
    if order not in references:
        return float("nan")
    return float(dataset["order_chance"].values[references.index(order)])


#: The per-block table, column by column: the legend of the report and the dashboard, the
#: values and the chance row.
BLOCK_COLUMNS: tuple[Column, ...] = (
    Column(
        "self",
        "share of a query's |α| on itself",
        _variable("self_share"),
        lambda dataset, order: 1 / _patches(dataset),
    ),
    Column(
        "row",
        "share on the other patches of its grid row",
        _variable("row_share"),
        lambda dataset, order: (dataset.attrs["grid_width"] - 1) / _patches(dataset),
    ),
    Column(
        "column",
        "share on the other patches of its grid column",
        _variable("column_share"),
        lambda dataset, order: (dataset.attrs["grid_height"] - 1) / _patches(dataset),
    ),
    Column(
        "row purity",
        "of each patch's W-1 nearest patches by attention pattern (rows of |α| scaled to sum "
        "1), the fraction on its grid row",
        _variable("row_purity"),
        lambda dataset, order: dataset.attrs["row_chance"],
    ),
    Column(
        "column purity",
        "the same with H-1 neighbours and the grid column",
        _variable("column_purity"),
        lambda dataset, order: dataset.attrs["column_chance"],
    ),
    Column(
        "ρ grid",
        "Spearman correlation over patch pairs of pattern distance with grid distance: 1 = "
        "nearer patches always attend more alike",
        _variable("spatial_correlation"),
        lambda dataset, order: 0.0,
    ),
    Column(
        "ρ sequence",
        "the same with sequence distance (fewest steps along one of the routes)",
        _variable("sequence_correlation"),
        _if_ordered(0.0),
    ),
    Column(
        "preceding, own",
        "share of a query's |α| on other patches that falls on the `window` patches "
        "preceding it along the run's own routes",
        _reference_share(None),
        _own_chance,
    ),
    Column(
        "preceding, random",
        "the same along the run's routes on randomly relabelled patches",
        _reference_share(RANDOM),
        _own_chance,
    ),
    Column(
        "near ÷ mean, grid",
        "mean |α| at Chebyshev distance 1 over mean |α| at distance ≥ 1",
        _near("locality", "pairs"),
        lambda dataset, order: 1.0,
    ),
    Column(
        "near ÷ mean, sequence",
        "the same at sequence distance 1",
        _near("sequence_locality", "sequence_pairs"),
        _if_ordered(1.0),
    ),
)
CHANCE = "chance"
LEGEND = (
    "Every number uses |α| of a block's image-mean attention (`attention_mean`). Columns "
    "of the per-block tables:\n\n"
    + "\n".join(f"- **{column.name}**: {column.legend}" for column in BLOCK_COLUMNS)
    + "\n\nRows *chance*: the value of attention with no structure. *window*: how many "
    "patches back along a route count as preceding."
)


def block_summary(dataset: xr.Dataset, order: str) -> pd.DataFrame:
    """One stage's per-block metrics (:data:`BLOCK_COLUMNS`), one row per block, and a last
    row ``chance``: the value of attention with no structure (uniform for the shares, no
    organisation for purity and ρ, no locality for the ratios).

    Parameters
    ----------
    dataset : a stage of :class:`~mambapanel.findings.record.Findings`
    order : the run's own order
    """
    frame = pd.DataFrame(
        {column.name: column.values(dataset, order) for column in BLOCK_COLUMNS},
        index=[str(block) for block in dataset["block"].values],
    )
    frame.loc[CHANCE] = [column.chance(dataset, order) for column in BLOCK_COLUMNS]
    frame.index.name = "block"
    return frame


def order_summary(dataset: xr.Dataset) -> pd.DataFrame:
    """``order_share`` of one stage: rows = blocks and ``chance`` (:func:`order_chance`),
    columns = the orders that define "preceding", ``random`` last."""
    references = labels(dataset, "reference")
    frame = pd.DataFrame(
        dataset["order_share"].values,
        index=[str(block) for block in dataset["block"].values],
        columns=references,
    )
    frame.loc[CHANCE] = dataset["order_chance"].values
    frame.index.name = "block"
    return frame


def separation_summary(findings: Findings) -> pd.DataFrame:
    """Silhouette of block labels: rows = stages, columns = stored methods (NaN where a
    stage lacks the method); empty when no stage has embeddings."""
    frame = pd.DataFrame(
        {
            stage: pd.Series(
                dataset["separation"].values if "separation" in dataset else [],
                index=labels(dataset, "method"),
                dtype=float,
            )
            for stage, dataset in findings.stages.items()
        }
    ).T
    frame.index.name = "stage"
    return frame


def stage_summary(findings: Findings) -> pd.DataFrame:
    """Early vs late: rows = block separation per method and every per-block metric
    averaged over the stage's blocks, columns = stages from first to last, and, with
    several stages, the change from the first to the last."""
    separation = separation_summary(findings)
    columns = {}
    for stage, dataset in findings.stages.items():
        means = block_summary(dataset, findings.order).drop(index=CHANCE)
        with warnings.catch_warnings():  # a metric that is NaN in every block stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            values = means.apply(lambda metric: np.nanmean(metric.to_numpy(float)))
        if not separation.empty:
            values = pd.concat([separation.loc[stage].rename(lambda m: f"separation, {m}"), values])
        columns[f"stage {stage}"] = values
    frame = pd.DataFrame(columns)
    if len(columns) > 1:
        first, last = frame.columns[0], frame.columns[-1]
        frame[f"{first} → {last}"] = frame[last] - frame[first]
    frame.index.name = "metric (mean over blocks)"
    return frame


def complementary(dataset: xr.Dataset) -> str:
    """Finding 2 in a line: the blocks most and least focused on the query itself, its row
    and its column ("" with fewer than two blocks)."""
    focus = (dataset["self_share"] + dataset["row_share"] + dataset["column_share"]).values
    if len(focus) < 2 or not np.isfinite(focus).all():
        return ""
    high, low = int(np.argmax(focus)), int(np.argmin(focus))
    return (
        f"Share on self + row + column: highest in block {high} ({focus[high]:.3f}), "
        f"lowest in block {low} ({focus[low]:.3f})."
    )


def order_matrix(runs: Sequence[Findings], stage: int) -> pd.DataFrame:
    """§5 across runs: rows = the runs that measured ``stage`` ("name (order)"), columns =
    the orders that define "preceding" (their union, ``random`` last), values =
    ``order_share`` ÷ ``order_chance`` averaged over blocks: how many times its chance
    level a block's attention puts on the preceding patches. The study predicts each run's
    largest value under the order it was trained with. NaN where not measured.

    Orders can nest: ``bidirectional``'s two routes are two of ``cross``'s four, so a cross
    model whose attention follows its row-major routes more than its column-major ones
    scores higher under ``bidirectional`` (same preceding patches on those routes, half the
    chance level) than under ``cross``.
    """
    measured = [f for f in runs if stage in f.stages and "order_share" in f.stages[stage]]
    columns = list(
        dict.fromkeys(
            r for f in measured for r in labels(f.stages[stage], "reference") if r != RANDOM
        )
    )
    frame = pd.DataFrame(
        np.nan,
        index=[f"{f.name} ({f.order})" for f in measured],
        columns=[*columns, RANDOM] if measured else [],
    )
    for findings, name in zip(measured, frame.index, strict=True):
        dataset = findings.stages[stage]
        lift = (dataset["order_share"] / dataset["order_chance"]).mean("block").values
        for reference, value in zip(labels(dataset, "reference"), lift, strict=True):
            frame.loc[name, reference] = value
    frame.index.name = "run (trained order)"
    return frame


def own_order_first(runs: Sequence[Findings], stage: int) -> tuple[int, int]:
    """(runs whose largest :func:`order_matrix` value is under their own order, runs). A tie
    counts: two orders can define the same preceding patches (a Vim scans route 0 of an
    order and its reverse, and cross's route 0 is bidirectional's)."""
    matrix = order_matrix(runs, stage).drop(columns=RANDOM, errors="ignore")
    measured = [f for f in runs if stage in f.stages and "order_share" in f.stages[stage]]
    first = sum(
        bool(row.notna().any()) and bool(np.isclose(row.get(findings.order), row.max()))
        for findings, (_, row) in zip(measured, matrix.iterrows(), strict=True)
    )
    return first, len(measured)


def markdown_table(frame: pd.DataFrame, digits: int = 3, bold_max: bool = False) -> str:
    """``frame`` as a markdown table, numbers to ``digits`` places, NaN as "–"; with
    ``bold_max`` each row's largest value is bold."""

    def cell(value: object, bold: bool) -> str:
        if isinstance(value, float | np.floating):
            text = "–" if not np.isfinite(value) else f"{value:.{digits}f}"
        else:
            text = str(value)
        return f"**{text}**" if bold else text

    header = [frame.index.name or "", *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in frame.iterrows():
        values = row.to_numpy()
        numeric = np.array([v if isinstance(v, float) else np.nan for v in values], dtype=float)
        best = int(np.nanargmax(numeric)) if bold_max and np.isfinite(numeric).any() else -1
        cells = [cell(v, i == best) for i, v in enumerate(values)]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines)


def faithfulness_summary(findings: Findings) -> pd.DataFrame:
    """The perturbation test of a run's maps: rows = the maps tested (``random`` the
    baseline); columns: the mean area with the most and with the least relevant patches
    removed first, their difference, the standard errors, the images tested. Empty for a
    run without a test."""
    dataset = findings.faithfulness
    if dataset is None:
        return pd.DataFrame()
    most, least = dataset["most"].values, dataset["least"].values
    errors = [
        f"{m:.3f} / {lo:.3f}"
        for m, lo in zip(dataset["most_error"].values, dataset["least_error"].values, strict=True)
    ]
    frame = pd.DataFrame(
        {
            "most relevant first": most,
            "least relevant first": least,
            "least − most": least - most,
            "± (standard errors)": errors,
            "images": dataset["images"].values.astype(int),
        },
        index=labels(dataset, "map"),
    )
    frame.index.name = "map"
    return frame


def faithfulness_section(findings: Findings, level: int) -> list[str]:
    """The perturbation test in markdown ([] for a run without one)."""
    frame = faithfulness_summary(findings)
    if frame.empty:
        return []
    return [
        f"{'#' * level} Are the explanations faithful? (perturbation test)",
        "Mean probability of the predicted class while 0-90 % of the patches are removed "
        "(set to the dataset mean), the most relevant first (lower: the map finds what the "
        "decision rests on) or the least relevant first (higher is better); `random` is a "
        "map that knows nothing. A map is worth reading where it beats `random` on both.",
        markdown_table(frame),
    ]


def run_sections(
    findings: Findings, stages: Sequence[int] | None = None, level: int = 2
) -> list[str]:
    """One run's markdown sections: block separation, early vs late, then for each of
    ``stages`` (default all) the per-block table, the complementary blocks and the order
    table; headings start at ``level``."""
    h = "#" * level
    separation = separation_summary(findings)
    parts = [
        f"{h} {findings.name}: {findings.model}, order {findings.order}",
        f"{h}# Blocks of a stage differ (silhouette of block labels, inter-block embedding)",
        markdown_table(separation)
        if not separation.empty
        else "No embeddings stored: `python -m compute reduce RUN` adds them.",
        f"{h}# Early vs late",
        markdown_table(stage_summary(findings)),
        *faithfulness_section(findings, level + 1),
    ]
    for stage in findings.stages if stages is None else stages:
        dataset = findings.stages.get(stage)
        if dataset is None:
            parts.append(f"No findings for stage {stage} in this run.")
            continue
        attrs = dataset.attrs
        pool = f", pooled {attrs['pool']}x{attrs['pool']}" if attrs["pool"] > 1 else ""
        parts += [
            f"{h}# Stage {stage}: grid {attrs['grid_height']}x{attrs['grid_width']}{pool}, "
            f"window {attrs['window']}",
            markdown_table(block_summary(dataset, findings.order)),
        ]
        if line := complementary(dataset):
            parts.append(line)
        if "order_share" in dataset:
            parts += [
                f"Share on the {attrs['window']} patches preceding each query, by the order "
                f"that defines them ({RANDOM}: the run's routes, patches relabelled, mean of "
                f"{attrs['seeds']} seeds):",
                markdown_table(order_summary(dataset)),
            ]
        parts += [f"Not computed: {note}." for note in attrs["notes"]]
    return parts


def order_section(runs: Sequence[Findings], stage: int, level: int = 3) -> list[str]:
    """The cross-run order matrix of ``stage`` in markdown ([] unless at least two runs of
    different orders measured it)."""
    matrix = order_matrix(runs, stage)
    measured = [f for f in runs if stage in f.stages and "order_share" in f.stages[stage]]
    if len({f.order for f in measured}) < 2:
        return []
    first, _ = own_order_first(runs, stage)
    return [
        f"{'#' * level} Stage {stage}",
        markdown_table(matrix, digits=2, bold_max=True),
        f"Own order largest in {first} of {len(measured)} runs.",
    ]


ORDER_INTRODUCTION = (
    'Attention on the patches preceding each query, by the order that defines "preceding", '
    "in multiples of its chance level (mean over blocks; each row's largest in bold). The "
    "study (§5) predicts the largest under the run's own order."
)
