"""One address for a piece of a run: the store's group, captions, file names and URL
values, spelled in one place."""

import pytest
import zarr

from mambapanel import store
from mambapanel.address import ALL, Address, block_text, parse_block


def test_address_renders_every_spelling():
    mode1, mode2, route = Address(1), Address(1, 0), Address(2, 3, route=1)
    assert (mode1.mode, mode2.mode) == (1, 2)
    assert mode1.caption() == "stage 1 · all blocks (Mode 1)"
    assert route.caption() == "stage 2 · block 3 · route 1"
    assert (mode1.slug(), mode2.slug(), route.slug()) == (
        "stage1-all", "stage1-block0", "stage2-block3-route1"
    )  # fmt: skip
    assert mode1.url_values() == {"stage": "1", "block": ALL}
    assert route.url_values() == {"stage": "2", "block": "3", "route": "1"}
    assert Address(0, 1) < Address(1) and len({Address(1), Address(1, None)}) == 1


def test_block_text_and_parse_block_are_inverse():
    for block in (None, 0, 7):
        assert parse_block(block_text(block)) == block
    for text in ("-1", "one", ""):
        with pytest.raises(ValueError):
            parse_block(text)


def test_the_group_is_the_stores(small_run):
    root = zarr.open_group(small_run, mode="r")
    for stage in root.attrs["stages"]:
        assert Address(stage).group == store.stage_group(stage) in root
    assert store.findings_group(1) == f"{store.FINDINGS_GROUP}/{Address(1).group}"
