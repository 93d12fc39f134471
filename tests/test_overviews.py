"""The overviews without a browser (mambapanel.views.overview): what they read against the
store read through xarray, the colours of each map, the clicks that open a stage or a
block in the Explorer, and the update for a new patch against a fresh render; on the
session's small run (stages 1 (8x8) and 2 (4x4), 2 blocks, 2 images)."""

from __future__ import annotations

import numpy as np
import panel as pn
import pytest
from bokeh.document import Document
from bokeh.events import Tap
from panel.io.state import set_curdoc

from mambapanel.store import open_run, stage_group
from mambapanel.views import Explorer, RunData
from mambapanel.views.geometry import patch_at_location
from mambapanel.views.overview import (
    BlockOverview,
    Overview,
    StageOverview,
    normalised,
    side_by_side,
)


@pytest.fixture
def explorer(small_run):
    return Explorer(small_run, stage=1, block=0, method="pca")


def stored_row(run, stage: int, block: int, patch: tuple[int, int]) -> np.ndarray:
    """attention_mean from ``patch`` in ``block``, read through xarray (the reference)."""
    node = open_run(run)[stage_group(stage)]
    row, col = patch
    query = (node["query_row"] == row) & (node["query_col"] == col)
    values = node["attention_mean"].isel(block=block).where(query, drop=True).squeeze("query")
    return values.values.reshape(RunData(run).grid(stage))


def test_block_maps_are_the_stored_rows_at_the_same_image_location(small_run):
    blocks = BlockOverview(run=RunData(small_run), stage=1, patch=(2, 5))
    maps = blocks.maps()
    assert list(maps) == [1, 2]  # the patch's stage first
    assert maps[1][0] == (2, 5)
    assert maps[2][0] == patch_at_location((2, 5), (8, 8), (4, 4)) == (1, 2)
    for stage, (patch, rows) in maps.items():
        assert rows.shape == (2, *RunData(small_run).grid(stage))
        for block in range(2):
            np.testing.assert_array_equal(rows[block], stored_row(small_run, stage, block, patch))
    # From stage 2 the patch goes back to stage 1's grid by image location too.
    blocks.param.update(stage=2, patch=(3, 0))
    assert blocks.stages() == [2, 1] and blocks.patch_in(1) == (7, 1)  # under its centre
    np.testing.assert_array_equal(blocks.maps()[1][1][1], stored_row(small_run, 1, 1, (7, 1)))


def test_without_a_clicked_patch_the_centre_patch_is_shown(small_run):
    blocks = BlockOverview(run=RunData(small_run), stage=1)
    assert blocks.clicked == (4, 4) and "no patch clicked" in blocks.heading(1)


def test_each_map_is_coloured_on_its_own_range():
    values = np.array([[-2.0, 0.0], [1.0, 4.0]])
    np.testing.assert_allclose(normalised(values, "strength"), [[0.5, 0.0], [0.25, 1.0]])
    np.testing.assert_allclose(normalised(values, "signed"), [[0.25, 0.5], [0.625, 1.0]])
    logged = normalised(values, "log")
    assert np.isnan(logged[0, 1])  # an exact zero: no colour
    np.testing.assert_allclose(logged[[0, 1, 1], [0, 0, 1]], [0.5, 0.0, 1.0])


def test_a_stages_maps_side_by_side_and_a_tap_finds_its_block(small_run):
    maps = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    row = side_by_side(maps, gap=1)
    assert row.shape == (3, 9)
    np.testing.assert_array_equal(row[:, :4], maps[0])
    assert np.isnan(row[:, 4]).all()
    np.testing.assert_array_equal(row[:, 5:], maps[1])

    blocks = BlockOverview(run=RunData(small_run), stage=1, patch=(2, 5), scale="signed")
    rows = blocks.maps()[1][1]
    gap = blocks.gap(1)
    np.testing.assert_array_equal(
        blocks.row(1), side_by_side(np.array([normalised(r, "signed") for r in rows]), gap)
    )
    assert [blocks.block_at(1, x) for x in (0, 7, 7.6, 8 + gap, 15 + gap, 16 + gap)] == [
        0, 0, None, 1, 1, None,
    ]  # fmt: skip


def test_a_new_patch_redraws_the_maps_as_a_fresh_render_would(small_run):
    run = RunData(small_run)
    blocks = BlockOverview(run=run, stage=1, patch=(0, 0))
    document = Document()
    document.add_root(pn.panel(blocks).get_root(document))
    with set_curdoc(document):
        blocks.patch = (2, 5)
    fresh = BlockOverview(run=run, stage=1, patch=(2, 5))
    for stage in (1, 2):
        drawn = [source.data for source in blocks._sources[stage]]
        expected = [source.data for source in fresh._sources[stage]]
        np.testing.assert_array_equal(drawn[0]["image"][0], expected[0]["image"][0])
        for key in ("left", "right", "bottom", "top"):
            np.testing.assert_array_equal(drawn[1][key], expected[1][key])
        assert blocks._headings[stage].object == fresh._headings[stage].object
    # The outline of (2, 5) in both maps of stage 1: block 1's starts a map and a gap later.
    assert list(blocks._sources[1][1].data["left"]) == [4.5, 4.5 + 8 + blocks.gap(1)]


def test_stage_multiples_show_every_mode_1_point_coloured_by_block(small_run):
    run = RunData(small_run)
    stages = StageOverview(run=run, method="tsne", stage=2)
    assert list(stages.figures) == [1, 2]
    for stage, fig in stages.figures.items():
        data = fig.renderers[0].data_source.data
        points = run.inter_embedding(stage, "tsne")
        np.testing.assert_array_equal(data["x"], points.x)
        np.testing.assert_array_equal(data["block"], points.block)
        assert fig.title.text == f"stage {stage} · 2 blocks · tsne"
    assert [fig.outline_line_width for fig in stages.figures.values()] == [1, 3]


def test_clicks_open_the_stage_or_the_block_in_the_explorer(explorer):
    shown = []
    overview = Overview(explorer, show=lambda: shown.append(True))
    explorer.patch = (2, 5)
    assert overview.blocks.patch == (2, 5)
    overview.blocks.open(2, 1)  # stage 2's map of block 1: the same image location there
    assert (explorer.stage, explorer.block, explorer.patch) == (2, 1, (1, 2))
    assert overview.blocks.stage == 2 and overview.stages.stage == 2
    overview.stages.open(1)
    assert (explorer.stage, explorer.block, explorer.patch) == (1, None, None)
    overview.stages.open(1)  # the same stage again still shows it
    overview.blocks.open(1, 0)  # no patch clicked: the centre patch
    assert (explorer.stage, explorer.block, explorer.patch) == (1, 0, (4, 4))
    assert shown == [True] * 4


def test_the_overview_follows_the_explorer(explorer):
    overview = Overview(explorer)
    explorer.param.update(scale="log", method="tsne")
    assert overview.blocks.scale == "log" and "log |α|" in overview.blocks.heading(1)
    assert overview.stages.figures[1].title.text.endswith("tsne")


def test_a_hidden_overview_catches_up_with_the_explorer_when_shown(explorer):
    overview = Overview(explorer, visible=False)
    figures = dict(overview.blocks.figures)
    explorer.param.update(stage=2, scale="log")
    assert overview.blocks.figures == figures  # not redrawn while hidden
    assert (overview.blocks.stage, overview.stages.stage) == (1, 1)
    overview.set_visible(True)
    assert (overview.blocks.stage, overview.blocks.scale, overview.stages.stage) == (2, "log", 2)
    assert overview.blocks.figures != figures
    explorer.stage = 1  # shown: follows at once
    assert overview.blocks.stage == 1


def test_the_overview_tab_is_drawn_when_first_opened_and_a_tap_opens_a_stage(explorer):
    tabs = explorer.__panel__()[1]
    assert tabs._names[2] == "Overview"
    assert "Drawing the overviews" in tabs[2][0].object  # nothing drawn yet
    tabs.active = 2
    drawn = tabs[2][0]
    figures = {pane.object.name: pane.object for pane in drawn.select(pn.pane.Bokeh)}
    assert sorted(figures) == [
        "block-overview-1", "block-overview-2", "stage-overview-1", "stage-overview-2",
    ]  # fmt: skip
    stage_2 = figures["stage-overview-2"]
    stage_2._trigger_event(Tap(stage_2, x=0.0, y=0.0))  # a click anywhere in it
    assert tabs.active == 0 and (explorer.stage, explorer.block) == (2, None)
    tabs.active = 2
    assert tabs[2][0] is drawn  # drawn once

    # Hidden (the Explore tab shown), it does not follow; shown again, it does.
    def first_block_row() -> str:  # the block overview's first heading: the stage shown
        return next(
            pane.object
            for pane in drawn.select(pn.pane.HTML)
            if "attention from patch" in pane.object
        )

    assert first_block_row().startswith("<p><b>stage 2</b>")
    tabs.active = 0
    explorer.stage = 1
    assert first_block_row().startswith("<p><b>stage 2</b>")
    tabs.active = 2
    assert first_block_row().startswith("<p><b>stage 1</b>")
