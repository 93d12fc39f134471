"""`python -m compute findings RUN [RUN ...]`: the study's findings in numbers, stored in
each run and reported as markdown tables and PNG figures (:mod:`mambapanel.findings`); with
``--scheduler`` (or ``--workers``) each run's numbers are computed on a Dask worker.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from pathlib import Path

from compute.arguments import add_cluster_options
from mambapanel.findings.report import report
from mambapanel.findings.stage import SEEDS, compute_run
from mambapanel.storage import Location, location


def findings(args: argparse.Namespace) -> int:
    """Compute the study's findings for runs, store them in each run and write a report
    (markdown tables and PNG figures)."""
    from compute.cluster import connect, run_tasks

    runs = [location(run, args.storage_options) for run in args.runs]
    out = args.out
    if out is None:  # beside the first run; for a run at a URL, here
        out = (runs[0].path.parent if runs[0].is_local else Path.cwd()) / "findings"
    if args.scheduler is None and args.workers is None:
        document = report(runs, out, window=args.window, seeds=args.seeds)
    else:
        with connect(args.scheduler, args.workers, command=args.command_line) as client:

            def on_workers(paths: Sequence[Location], window: int | None, seeds: int) -> None:
                """One task per run: its numbers computed and stored by a worker."""
                task = functools.partial(compute_run, window=window, seeds=seeds)
                run_tasks(
                    client,
                    task,
                    [(path,) for path in paths],
                    on_done=lambda _: print("findings stored", flush=True),
                )

            document = report(runs, out, window=args.window, seeds=args.seeds, compute=on_workers)
    print(f"report: {document}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``findings`` command to ``python -m compute``'s sub-commands."""
    p = commands.add_parser(
        "findings",
        help="the study's findings in numbers: stored in each run, reported in markdown",
        description=findings.__doc__,
    )
    p.add_argument(
        "runs", nargs="+", metavar="RUN", help="runs made by `compute extract` (paths or URLs)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory of the report (default: findings/ beside the first run; here for a "
        "run at a URL)",
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
    add_cluster_options(p, "findings")
    p.set_defaults(handler=findings)
    return p
