"""`python -m compute findings RUN [RUN ...]`: the study's findings in numbers, stored in
each run and reported as markdown tables and PNG figures (:mod:`mambapanel.findings`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mambapanel.findings.report import report
from mambapanel.findings.stage import SEEDS


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
