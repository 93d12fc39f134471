"""`python -m compute findings RUN [RUN ...]`: the study's findings in numbers, computed into
each run's store (its ``findings`` group) and reported as markdown tables and PNG figures.

The metrics are :mod:`mambapanel.findings`'s; this module adds the patch orders' routes
(torch, through :mod:`mambapanel.orders`), the report and its figures (Pillow).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import colorcet
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from mambapanel import orders
from mambapanel.findings import (
    COMPARED_ORDERS,
    LEGEND,
    ORDER_INTRODUCTION,
    SEEDS,
    Findings,
    markdown_table,
    order_matrix,
    order_section,
    read_findings,
    relative_profile,
    run_sections,
    stage_findings,
    write_findings,
)
from mambapanel.store import RunError, open_run

REPORT = "findings.md"


def compute_run(
    path: str | Path,
    *,
    window: int | None = None,
    seeds: int = SEEDS,
    compared: Sequence[str] = COMPARED_ORDERS,
) -> None:
    """Compute every finding of the run at ``path`` and store it in the run (replacing any
    stored before); see :mod:`mambapanel.findings` for the metrics and the stored schema.

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
    tree = open_run(path)
    order = str(tree.attrs["order"])
    known = set(orders.available())
    compared = [name for name in dict.fromkeys([*compared, order]) if name in known]
    stages = {}
    for stage in tree.attrs["stages"]:
        node = tree[f"stage{stage}"]
        attrs = node.attrs
        height, width = attrs["grid_height"], attrs["grid_width"]
        notes = []
        embeddings = {}
        if "embedding_inter" in node.data_vars:
            inter = node["embedding_inter"].transpose("method", "image", "block", "xy").values
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
                "(mambapanel.orders.register it, then call compute.findings.report)"
            )
        else:
            routes = orders.routes(order, height, width).numpy()
            compared_routes = {
                name: orders.routes(name, height, width).numpy() for name in compared
            }
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
    write_findings(path, stages, {"order": order, "compared_orders": compared, "seeds": seeds})


def report(
    runs: Sequence[str | Path],
    out: str | Path,
    *,
    window: int | None = None,
    seeds: int = SEEDS,
) -> Path:
    """Compute and store the findings of every run, then write ``out/findings.md`` (markdown
    tables) and its PNG figures (locality profiles per run, the cross-run order matrix).

    Parameters
    ----------
    runs : paths of complete runs (``python -m compute extract``; ``reduce`` for the block
        separation)
    out : the report's directory, created if missing

    Returns
    -------
    Path of ``findings.md``.

    Raises
    ------
    mambapanel.store.RunError
        No run, or a path that is not a complete run (checked for every run before any
        computation).
    ValueError
        ``window`` or ``seeds`` below 1.
    """
    if not runs:
        raise RunError("no run given: pass the path of a run made by `python -m compute extract`")
    if window is not None and window < 1:
        raise ValueError(f"window must be at least 1 patch, got {window}")
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    paths = [Path(run) for run in runs]
    for path in paths:
        open_run(path)
    names = run_names(paths)
    found = []
    for path, name in zip(paths, names, strict=True):
        compute_run(path, window=window, seeds=seeds)
        print(f"{path}: findings stored", flush=True)
        findings = read_findings(open_run(path), name)
        if findings is None:  # written just now: cannot be missing
            raise RunError(f"{path}: findings were written but cannot be read back")
        found.append(findings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = out / REPORT
    document.write_text(markdown(found, paths, out))
    return document


def run_names(paths: Sequence[Path]) -> list[str]:
    """Each run's directory name, or its full path where two runs share a name."""
    names = [path.name for path in paths]
    return [str(path) if names.count(path.name) > 1 else path.name for path in paths]


def markdown(found: Sequence[Findings], paths: Sequence[Path], out: Path) -> str:
    """The report's text; writes its figures into ``out`` as it goes."""
    parts = [
        "# Findings",
        "Numbers for the findings of *Visual Attention Exploration in Vision-Based Mamba "
        "Models* (arXiv 2502.20764, §4-§5), made by `python -m compute findings`; "
        "definitions in `mambapanel/findings.py`.",
        LEGEND,
        markdown_table(runs_table(found, paths)),
    ]
    stages = sorted({stage for findings in found for stage in findings.stages})
    sections = {stage: order_section(found, stage) for stage in stages}
    if any(sections.values()):
        parts += ["## Patch order across runs", ORDER_INTRODUCTION]
    for stage, section in sections.items():
        if section:
            figure = f"order-matrix-stage{stage}.png"
            title = f"stage {stage}: attention on preceding patches / chance"
            heatmap(order_matrix(found, stage), title).save(out / figure)
            parts += [*section, f"![order matrix, stage {stage}]({figure})"]
    for findings in found:
        parts += run_sections(findings)
        figure = f"locality-{slug(findings.name)}.png"
        locality_figure(findings).save(out / figure)
        parts.append(f"![locality profiles of {findings.name}]({figure})")
    return "\n\n".join(parts) + "\n"


def runs_table(found: Sequence[Findings], paths: Sequence[Path]) -> pd.DataFrame:
    """One row per run: model, order, stages with findings, path."""
    frame = pd.DataFrame(
        {
            "model": [f.model for f in found],
            "order": [f.order for f in found],
            "stages": [", ".join(map(str, f.stages)) for f in found],
            "path": [str(path.resolve()) for path in paths],
        },
        index=[f.name for f in found],
    )
    frame.index.name = "run"
    return frame


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"


# -------------------------------------------------------------------------------------------
# Figures (Pillow: matplotlib is not in the stack).
# -------------------------------------------------------------------------------------------

INK, FAINT, WHITE = (40, 40, 40), (200, 200, 200), (255, 255, 255)
# The dashboard's block colours (mambapanel.views.style.block_colours) and attention scale.
BLOCK_PALETTE = colorcet.palette["glasbey_category10"]
YL_OR_RD = [(255, 255, 204), (254, 217, 118), (253, 141, 60), (227, 26, 28), (128, 0, 38)]


def _font(size: int = 12) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _ticks(low: float, high: float, count: int = 5, integer: bool = False) -> np.ndarray:
    """About ``count`` round values from ``low`` to the first at or above ``high``."""
    raw = max(high - low, 1e-12) / count
    step = 10 ** np.floor(np.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    step = max(step, 1) if integer else step
    first, last = np.floor(low / step), np.ceil(high / step)
    return np.arange(first, last + 0.5) * step


def line_chart(
    title: str,
    x_label: str,
    series: Sequence[tuple[str, str, np.ndarray, np.ndarray]],
    size: tuple[int, int] = (380, 260),
) -> Image.Image:
    """Lines on shared axes from y = 0: ``series`` of (label, colour, integer xs, ys); points
    whose y is not finite are left out and their neighbours joined. The legend stands to the
    right of the ``size`` plot, in as many columns as it needs."""
    left, right, top, bottom = 48, size[0] - 12, 26, size[1] - 34
    per_column = max(1, (bottom - top) // 14)
    legend_columns = -(-len(series) // per_column)
    image = Image.new("RGB", (size[0] + 72 * legend_columns, size[1]), WHITE)
    draw = ImageDraw.Draw(image)
    font = _font()
    draw.text((left, 6), title, fill=INK, font=font)
    kept = [
        (label, colour, np.asarray(xs, float)[ok], np.asarray(ys, float)[ok])
        for label, colour, xs, ys in series
        for ok in [np.isfinite(np.asarray(ys, float))]
    ]
    xs = np.concatenate([x for _, _, x, _ in kept] + [np.zeros(1)])
    ys = np.concatenate([y for _, _, _, y in kept] + [np.zeros(1)])
    x_ticks = _ticks(xs.min(), max(xs.max(), xs.min() + 1), 6, integer=True)
    y_ticks = _ticks(min(ys.min(), 0.0), max(ys.max(), 1e-12))
    (x_low, x_high), (y_low, y_high) = x_ticks[[0, -1]], y_ticks[[0, -1]]

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (right - left),
            bottom - (y - y_low) / (y_high - y_low) * (bottom - top),
        )

    for y in y_ticks:
        _, py = to_pixel(x_low, y)
        draw.line([(left, py), (right, py)], fill=FAINT)
        draw.text((left - 4, py), f"{y:g}", fill=INK, font=font, anchor="rm")
    for x in x_ticks:
        px, _ = to_pixel(x, y_low)
        draw.text((px, bottom + 4), f"{x:g}", fill=INK, font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=INK)
    draw.text(((left + right) / 2, size[1] - 4), x_label, fill=INK, font=font, anchor="ms")
    for index, (label, colour, line_xs, line_ys) in enumerate(kept):
        points = [to_pixel(x, y) for x, y in zip(line_xs, line_ys, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        elif points:  # a single distance (a 2x2 grid): a dot
            (x, y) = points[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        column, row = divmod(index, per_column)
        legend_x, legend_y = size[0] + 72 * column, top + 6 + 14 * row
        draw.line([(legend_x, legend_y), (legend_x + 14, legend_y)], fill=colour, width=2)
        draw.text((legend_x + 18, legend_y), label, fill=INK, font=font, anchor="lm")
    return image


def locality_figure(findings: Findings) -> Image.Image:
    """One row per stage: :func:`mambapanel.findings.relative_profile` by grid distance and
    by sequence distance, one line per block."""
    charts = []
    for stage, dataset in findings.stages.items():
        row = []
        for profile, pairs, axis in (
            ("locality", "pairs", "grid distance (Chebyshev, patches)"),
            ("sequence_locality", "sequence_pairs", "sequence distance (steps)"),
        ):
            if profile not in dataset:
                continue
            series = [
                (
                    f"block {block}",
                    BLOCK_PALETTE[int(block) % len(BLOCK_PALETTE)],
                    *relative_profile(values, dataset[pairs].values),
                )
                for block, values in zip(
                    dataset["block"].values, dataset[profile].values, strict=True
                )
            ]
            title = f"stage {stage}: mean attention by distance (1 = mean)"
            row.append(line_chart(title, axis, series))
        charts.append(row)
    width = max((sum(c.width for c in row) for row in charts), default=1)
    height = sum(max((c.height for c in row), default=0) for row in charts) or 1
    figure = Image.new("RGB", (width, height), WHITE)
    y = 0
    for row in charts:
        x = 0
        for chart in row:
            figure.paste(chart, (x, y))
            x += chart.width
        y += max((c.height for c in row), default=0)
    return figure


def _colour(value: float, low: float, high: float) -> tuple[int, int, int]:
    """``value`` on the light-yellow to dark-red scale between ``low`` and ``high``."""
    if not np.isfinite(value):
        return FAINT
    t = 0.0 if high <= low else float(np.clip((value - low) / (high - low), 0, 1))
    position = t * (len(YL_OR_RD) - 1)
    index = min(int(position), len(YL_OR_RD) - 2)
    fraction = position - index
    start, end = YL_OR_RD[index], YL_OR_RD[index + 1]
    return tuple(round(a + (b - a) * fraction) for a, b in zip(start, end, strict=True))


def heatmap(matrix, title: str, cell: tuple[int, int] = (76, 30)) -> Image.Image:
    """A table of numbers (a DataFrame) as coloured cells, each row's largest outlined."""
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = 12 + max(measure.textlength(str(name), font=font) for name in matrix.index)
    left, top = int(label_width), 48
    width = left + cell[0] * len(matrix.columns) + 10
    height = top + cell[1] * len(matrix) + 10
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill=INK, font=font)
    values = matrix.to_numpy(float)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for column, name in enumerate(matrix.columns):
        x = left + column * cell[0] + cell[0] / 2
        draw.text((x, top - 6), str(name), fill=INK, font=font, anchor="ms")
    for row, name in enumerate(matrix.index):
        y = top + row * cell[1]
        draw.text((left - 6, y + cell[1] / 2), str(name), fill=INK, font=font, anchor="rm")
        best = int(np.nanargmax(values[row])) if np.isfinite(values[row]).any() else -1
        for column, value in enumerate(values[row]):
            x = left + column * cell[0]
            fill = _colour(value, low, high)
            box = [x, y, x + cell[0] - 2, y + cell[1] - 2]
            draw.rectangle(box, fill=fill, outline=INK if column == best else None, width=2)
            text = "-" if not np.isfinite(value) else f"{value:.2f}"
            ink = WHITE if sum(fill) < 380 else INK
            draw.text((x + cell[0] / 2, y + cell[1] / 2), text, fill=ink, font=font, anchor="mm")
    return image


# -------------------------------------------------------------------------------------------
# Command line.
# -------------------------------------------------------------------------------------------


def findings(args: argparse.Namespace) -> int:
    """Compute the study's findings for runs, store them in each run and write a report
    (markdown tables and PNG figures)."""
    out = args.out if args.out is not None else Path(args.runs[0]).resolve().parent / "findings"
    document = report(args.runs, out, window=args.window, seeds=args.seeds)
    print(f"report: {document}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``findings`` command to ``python -m compute``'s sub-commands."""
    p = commands.add_parser(
        "findings",
        help="the study's findings in numbers: stored in each run, reported in markdown",
        description=findings.__doc__,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="runs made by `compute extract`")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory of the report (default: findings/ beside the first run)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="patches back along a route that count as preceding (default: the stage's grid "
        "width, one grid row's worth)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=SEEDS,
        help=f"random relabellings averaged for the random order (default {SEEDS})",
    )
    p.set_defaults(handler=findings)
    return p
