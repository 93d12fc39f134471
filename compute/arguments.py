"""Argument types of the command line that check values, not only syntax: argparse reports
a refused value as ``error: argument --NAME: ...`` and exits with status 2; and the options
every command that runs on a Dask cluster shares."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from mambapanel.errors import MambapanelError
from mambapanel.storage import parse_storage_options


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``minimum`` .. ``maximum`` (no upper bound if None)."""
    expected = f"an integer >= {minimum}" if maximum is None else f"{minimum}..{maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


POSITIVE = integer(1)
PORT = integer(1, 65535)  # 0 would be a random port, which no allowed host name could name


def storage_options(text: str) -> dict:
    """An argparse type: ``--storage-options``, a JSON object."""
    try:
        return parse_storage_options(text)
    except MambapanelError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_cluster_options(p: argparse.ArgumentParser, command: str) -> None:
    """--scheduler, --workers and --storage-options of a command that runs on a cluster."""
    local = (
        "a local cluster of this many processes (default: 2, one per GPU with --device cuda)"
        if command == "extract"
        else "a local cluster of this many processes (default: none, all in this process)"
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="address of a Dask scheduler whose workers do the work (tcp://HOST:8786); they "
        "need the package, the images and the run at the same path, or the run at a URL "
        "(README: Running on a Dask cluster)",
    )
    p.add_argument("--workers", type=POSITIVE, default=None, help=f"{local}; not with --scheduler")
    p.add_argument(
        "--storage-options",
        type=storage_options,
        default=None,
        help='for runs at s3:// or gs:// URLs: fsspec options as JSON, e.g. \'{"endpoint_url": '
        '"http://host:9000"}\' (also FSSPEC_S3_* variables, on every machine)',
    )
