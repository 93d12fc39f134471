"""Argument types of the command line that check values, not only syntax: argparse reports
a refused value as ``error: argument --NAME: ...`` and exits with status 2."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
