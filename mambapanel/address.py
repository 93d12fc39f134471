"""One address for a piece of a run: a stage, one block of it or all of them (Mode 1), and a
route or the routes merged; it renders the store's group name, captions, file names and URL
values, so that every part of mambapanel spells them alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from mambapanel.store import stage_group

ALL = "all"  # every block of a stage (Mode 1, inter-block, Algorithm 1), in URLs and files
ALL_LABEL = "all blocks (Mode 1)"  # the same, for people


@dataclass(frozen=True, order=True)
class Address:
    """Stage ``stage``; ``block`` None: every block of it (Mode 1, the inter-block scatter of
    Algorithm 1), else that block (Mode 2, Algorithm 2); ``route`` None: the routes merged."""

    stage: int
    block: int | None = None
    route: int | None = None

    @property
    def mode(self) -> int:
        """1: every block of the stage (one point per image and block); 2: one block."""
        return 1 if self.block is None else 2

    @property
    def group(self) -> str:
        """The stage's group in the run's store."""
        return stage_group(self.stage)

    def caption(self) -> str:
        """For people: ``stage 1 · all blocks (Mode 1)``, ``stage 1 · block 0 · route 2``."""
        where = ALL_LABEL if self.block is None else f"block {self.block}"
        route = "" if self.route is None else f" · route {self.route}"
        return f"stage {self.stage} · {where}{route}"

    def slug(self) -> str:
        """For file names: ``stage1-all``, ``stage1-block0-route2``."""
        where = ALL if self.block is None else f"block{self.block}"
        route = "" if self.route is None else f"-route{self.route}"
        return f"{self.group}-{where}{route}"

    def url_values(self) -> dict[str, str]:
        """For a URL query: stage, block (``all`` for Mode 1) and, when one, route."""
        values = {"stage": str(self.stage), "block": block_text(self.block)}
        if self.route is not None:
            values["route"] = str(self.route)
        return values


def block_text(block: int | None) -> str:
    """A block as a URL or a menu holds it: its number, or ``all`` (Mode 1)."""
    return ALL if block is None else str(block)


def block_label(block: int | None) -> str:
    """A block as a menu shows it: its number, or ``all blocks (Mode 1)``."""
    return ALL_LABEL if block is None else str(block)


def parse_block(text: str) -> int | None:
    """The inverse of :func:`block_text`.

    Raises
    ------
    ValueError
        Neither ``all`` nor a block number.
    """
    if text == ALL:
        return None
    block = int(text)
    if block < 0:
        raise ValueError(f"a block is a number >= 0 or {ALL!r}, got {text!r}")
    return block
