"""The findings report of ``python -m compute findings``: compute and store each run's
findings, then write ``findings.md`` (markdown tables) and its PNG figures.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from mambapanel.address import Address
from mambapanel.errors import OptionError, check_writable_folder
from mambapanel.findings.figures import heatmap, locality_figure
from mambapanel.findings.record import Findings, read_findings
from mambapanel.findings.stage import SEEDS, compute_run
from mambapanel.findings.tables import (
    LEGEND,
    ORDER_INTRODUCTION,
    markdown_table,
    order_matrix,
    order_section,
    run_sections,
)
from mambapanel.storage import Location, location
from mambapanel.store import RunError, open_run

REPORT = "findings.md"


def report(
    runs: Sequence[str | Path | Location],
    out: str | Path,
    *,
    window: int | None = None,
    seeds: int = SEEDS,
    compute: Callable[[Sequence[Location], int | None, int], None] | None = None,
) -> Path:
    """Compute and store the findings of every run, then write ``out/findings.md`` (markdown
    tables) and its PNG figures (locality profiles per run, the cross-run order matrix).

    Parameters
    ----------
    runs : paths or URLs of complete runs (``python -m compute extract``; ``reduce`` for the
        block separation)
    out : the report's directory, created if missing
    compute : ``compute(runs, window, seeds)`` computes and stores every run's findings
        (:func:`mambapanel.findings.stage.compute_run`); default one run after the other
        here, ``compute findings --scheduler`` on the workers

    Returns
    -------
    Path of ``findings.md``.

    Raises
    ------
    mambapanel.store.RunError
        No run, or a path that is not a complete run (checked for every run before any
        computation).
    mambapanel.errors.OptionError
        ``window`` or ``seeds`` below 1.
    mambapanel.errors.OutputError
        ``out`` cannot be written (checked before any computation too).
    """
    if not runs:
        raise RunError("no run given: pass the path of a run made by `python -m compute extract`")
    if window is not None and window < 1:
        raise OptionError(f"window must be at least 1 patch, got {window}")
    if seeds < 1:
        raise OptionError(f"seeds must be at least 1, got {seeds}")
    paths = [location(run) for run in runs]
    for path in paths:
        open_run(path)
    out = check_writable_folder(out, f"findings report {out}")
    names = run_names(paths)
    (compute or compute_each)(paths, window, seeds)
    found = []
    for path, name in zip(paths, names, strict=True):
        findings = read_findings(open_run(path), name)
        if findings is None:  # written just now: cannot be missing
            raise RunError(f"{path}: findings were written but cannot be read back")
        found.append(findings)
    document = out / REPORT
    document.write_text(markdown(found, paths, out))
    return document


def compute_each(paths: Sequence[Location], window: int | None, seeds: int) -> None:
    """Compute and store the findings of every run, one after the other, here."""
    for path in paths:
        compute_run(path, window=window, seeds=seeds)
        print(f"{path}: findings stored", flush=True)


def run_names(paths: Sequence[Location]) -> list[str]:
    """Each run's directory (or key) name, or its full path where two runs share a name."""
    names = [path.name for path in paths]
    return [str(path) if names.count(path.name) > 1 else path.name for path in paths]


def markdown(found: Sequence[Findings], paths: Sequence[Location], out: Path) -> str:
    """The report's text; writes its figures into ``out`` as it goes."""
    parts = [
        "# Findings",
        "Numbers for the findings of *Visual Attention Exploration in Vision-Based Mamba "
        "Models* (arXiv 2502.20764, §4-§5), made by `python -m compute findings`; "
        "definitions in `mambapanel/findings/metrics.py`.",
        LEGEND,
        markdown_table(runs_table(found, paths)),
    ]
    stages = sorted({stage for findings in found for stage in findings.stages})
    sections = {stage: order_section(found, stage) for stage in stages}
    if any(sections.values()):
        parts += ["## Patch order across runs", ORDER_INTRODUCTION]
    for stage, section in sections.items():
        if section:
            figure = f"order-matrix-{Address(stage).group}.png"
            title = f"stage {stage}: attention on preceding patches / chance"
            heatmap(order_matrix(found, stage), title).save(out / figure)
            parts += [*section, f"![order matrix, stage {stage}]({figure})"]
    for findings in found:
        parts += run_sections(findings)
        figure = f"locality-{slug(findings.name)}.png"
        locality_figure(findings).save(out / figure)
        parts.append(f"![locality profiles of {findings.name}]({figure})")
    return "\n\n".join(parts) + "\n"


def runs_table(found: Sequence[Findings], paths: Sequence[Location]) -> pd.DataFrame:
    """One row per run: model, order, stages with findings, path."""
    frame = pd.DataFrame(
        {
            "model": [f.model for f in found],
            "order": [f.order for f in found],
            "stages": [", ".join(map(str, f.stages)) for f in found],
            "path": [str(path) for path in paths],
        },
        index=[f.name for f in found],
    )
    frame.index.name = "run"
    return frame


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
