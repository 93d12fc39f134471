"""Querying patches without a browser: the box and lasso tools of the patch grid select query
patches whose mean attention (rows: ``from``, columns: ``to``) colours the patch and image
views, checked against the plain mean of the stored matrices; the fast reads pinned to that
reference; compare mode, URL state (round trip and bad values) and export."""

from __future__ import annotations

import numpy as np
import pytest
from panel.io.location import Location
from panel.io.state import set_curdoc
from test_views import _figure, _rendered

from mambapanel.store import open_run, stage_group
from mambapanel.views import Explorer, RunData
from mambapanel.views.data import query_mean
from mambapanel.views.url import parse_patches

STAGE, BLOCK, WIDTH = 1, 0, 8  # the small run's stage 1: an 8 x 8 grid


@pytest.fixture(scope="module")
def stored(small_run):
    """Block 0 of stage 1 as xarray reads it (not through RunData): the mean matrix and
    image 1's, f(query, key)."""
    group = open_run(small_run)[stage_group(STAGE)]
    return {
        "mean": group["attention_mean"].isel(block=BLOCK).values,
        "image": group["attention"].isel(image=1, block=BLOCK).values,
    }


@pytest.fixture
def explorer(small_run):
    return Explorer(small_run, stage=STAGE, block=BLOCK, method="pca", image=1)


def indices(patches: list[tuple[int, int]]) -> list[int]:
    return [row * WIDTH + col for row, col in patches]


def reference(matrix: np.ndarray, patches: list[tuple[int, int]], direction: str) -> np.ndarray:
    return query_mean(matrix, indices(patches), direction).reshape(WIDTH, WIDTH)


@pytest.mark.parametrize("direction", ["from", "to"])
def test_the_mean_of_query_rows_and_columns_equals_the_plain_mean(small_run, stored, direction):
    """The fast reads (rows, or columns through zarr's orthogonal selection) against the mean
    of the whole matrix's rows or columns taken one at a time; a column differs from the
    row of the same patch (the matrix is not symmetric), so the direction is checked."""
    run = RunData(small_run)
    rng = np.random.default_rng(0)
    for size in (1, 2, 13, 64):
        picked = rng.choice(WIDTH * WIDTH, size, replace=False)
        patches = [divmod(int(index), WIDTH) for index in picked]
        mean = run.query_attention(STAGE, BLOCK, patches, direction)
        assert mean.dtype == np.float32 and mean.shape == (WIDTH, WIDTH)
        np.testing.assert_allclose(mean, reference(stored["mean"], patches, direction), rtol=1e-6)
        image = run.image_query_attention(STAGE, BLOCK, 1, patches, direction)
        np.testing.assert_allclose(
            image, reference(stored["image"], patches, direction), rtol=1e-6, atol=1e-12
        )
    row, column = (run.query_attention(STAGE, BLOCK, [(2, 5)], way) for way in ("from", "to"))
    np.testing.assert_array_equal(row, run.attention_row(STAGE, BLOCK, (2, 5)))
    assert np.abs(row - column).max() > 1e-3 * np.abs(row).max()
    with pytest.raises(ValueError, match="direction"):
        run.query_attention(STAGE, BLOCK, [(0, 0)], "both")
    with pytest.raises(KeyError, match="outside"):
        run.query_attention(STAGE, BLOCK, [(0, 8)])


def test_box_and_lasso_on_the_patch_grid_show_the_mean_attention_of_the_query(explorer, stored):
    side = explorer.sides[0]
    explorer.patch = (6, 6)
    # A box over the centres of cols 2-3, rows 3-4 (bounds as Bokeh gives them: left,
    # bottom, right, top in (col, row); the y axis is inverted on screen).
    side.patches.box.event(bounds=(1.6, 4.2, 3.4, 2.6))
    query = [(3, 2), (3, 3), (4, 2), (4, 3)]
    assert explorer.query == side.patches.query == side.image.query == query
    assert explorer.patch is None  # the query replaces the clicked patch
    assert side.patches.display == "attention"
    np.testing.assert_allclose(
        side.patches.values(), np.abs(reference(stored["mean"], query, "from")), rtol=1e-6
    )
    np.testing.assert_allclose(
        side.image.attention(), reference(stored["image"], query, "from"), rtol=1e-6
    )
    assert "Attention: from 4 patches (mean): (3, 2) (3, 3) (4, 2) (4, 3)" in (
        explorer.status.object
    )

    explorer.param.update(direction="to", scale="signed")
    np.testing.assert_allclose(
        side.patches.values(), reference(stored["mean"], query, "to"), rtol=1e-6
    )
    np.testing.assert_allclose(
        side.image.attention(), reference(stored["image"], query, "to"), rtol=1e-6
    )
    assert side.patches._content()[1] == "block 0: attention to 4 patches (mean)"

    # The lasso: a triangle whose hypotenuse passes through centres, which the half-open
    # even-odd rule leaves out.
    side.patches.lasso.event(geometry=np.array([[-0.5, -0.5], [2.5, -0.5], [-0.5, 2.5]]))
    lassoed = [(0, 0), (0, 1), (1, 0)]
    assert explorer.query == lassoed
    np.testing.assert_allclose(
        side.patches.values(), reference(stored["mean"], lassoed, "to"), rtol=1e-6
    )
    side.patches.box.event(bounds=(6.6, 6.6, 6.9, 6.9))  # no centre inside: nothing changes
    assert explorer.query == lassoed

    # A click is the query of one, in the direction chosen; the query goes.
    side.patches.tap.event(x=5, y=2)
    assert (explorer.patch, explorer.query) == ((2, 5), [])
    np.testing.assert_allclose(
        side.patches.values(), reference(stored["mean"], [(2, 5)], "to"), rtol=1e-6
    )
    assert side.patches._content()[1] == "block 0: attention to (2, 5)"
    explorer.stage = 2  # another grid: the query goes with the clicked patch
    assert (explorer.patch, explorer.query) == (None, [])


def test_a_query_is_drawn_in_place_as_a_fresh_render_would(explorer, small_run):
    """The grid's values and title and the outline of every query patch, written in place
    (mambapanel.views.inplace), equal a page rendered with that state."""
    document = _rendered(explorer)
    patches = explorer.sides[0].patches
    with set_curdoc(document):
        patches.tap.event(x=1, y=1)  # attention: a new plot; the query is then in place
        patches.box.event(bounds=(0.6, 0.6, 2.4, 1.4))
        explorer.direction = "to"
    grid = _figure(document, "patch-view")
    assert grid["title"] == "block 0: attention to 2 patches (mean)"
    assert grid["glyphs"]["Quad"][0] == {
        "left": [0.5, 1.5], "right": [1.5, 2.5], "bottom": [0.5, 0.5], "top": [1.5, 1.5],
    }  # fmt: skip
    fresh = Explorer(
        small_run, stage=STAGE, block=BLOCK, method="pca", image=1, query=[(1, 1), (1, 2)],
        direction="to",
    )  # fmt: skip
    assert grid == _figure(_rendered(fresh), "patch-view")
    image_id = RunData(small_run).image_ids[1]
    assert _figure(document, "image-view")["title"] == f"{image_id}: block 0, to 2 patches (mean)"


def test_compare_shows_the_same_query_on_both_sides(small_run, demo_runs):
    explorer = Explorer({"a": small_run, "b": small_run}, stage=STAGE, block=0)
    explorer.param.update(compare="blocks", block_b=1, query=[(1, 1), (2, 3)], direction="to")
    left, right = explorer.shown
    run = RunData(small_run)
    assert right.patches.query == right.image.query == [(1, 1), (2, 3)]
    np.testing.assert_array_equal(
        right.patches.values(), np.abs(run.query_attention(STAGE, 1, [(1, 1), (2, 3)], "to"))
    )
    right.patches.box.event(bounds=(4.6, 4.6, 5.4, 6.4))  # a query on the right: both sides
    assert explorer.query == left.patches.query == [(5, 5), (6, 5)]

    # Grids of two sizes (VMamba's 16 x 16 beside Vim's 8 x 8): the same image area.
    runs = {"vmamba": demo_runs / "cross", "vim": demo_runs / "vim-morton"}
    explorer = Explorer(runs, stage=0, block=0, compare="runs", run_b="vim")
    left, right = explorer.shown
    explorer.query = [(4, 4), (4, 5), (5, 4), (5, 5)]
    assert right.patches.query == [(2, 2)]
    right.patches.box.event(bounds=(0.6, 0.6, 1.4, 1.4))
    assert explorer.query == left.patches.query == [(2, 2), (2, 3), (3, 2), (3, 3)]


def test_url_keeps_the_query_and_the_direction_and_names_bad_values(explorer):
    location = Location()
    explorer.sync_url(location)
    explorer.param.update(query=[(1, 2), (3, 4)], direction="to")
    assert location.query_params["query"] == "1,2;3,4"
    assert location.query_params["dir"] == "to"
    # A link opened elsewhere reproduces the view.
    other = Explorer(explorer.runs[explorer.run].path)
    elsewhere = Location(search=location.search)
    other.sync_url(elsewhere)
    assert (other.stage, other.block, other.query, other.direction) == (
        STAGE, BLOCK, [(1, 2), (3, 4)], "to",
    )  # fmt: skip
    np.testing.assert_array_equal(
        other.sides[0].patches.values(), explorer.sides[0].patches.values()
    )

    location.search = "?query=5,5;0,1&dir=from"
    assert (explorer.query, explorer.direction) == ([(0, 1), (5, 5)], "from")
    location.search = "?query=0,0;9,1&dir=sideways"
    assert (explorer.query, explorer.direction) == ([(0, 1), (5, 5)], "from")
    assert "URL: query=0,0;9,1 ignored ((9, 1) outside the 8x8 grid)" in explorer.status.object
    assert "URL: dir=sideways ignored (not one of from, to)" in explorer.status.object
    assert location.query_params["query"] == "0,1;5,5"  # corrected to what is shown
    location.search = "?query=1;x"
    assert "URL: query=1;x ignored" in explorer.status.object


def test_parse_patches():
    assert parse_patches("3,4;1,2;3,4") == [(1, 2), (3, 4)]
    assert parse_patches("") == parse_patches(None) == []
    with pytest.raises(ValueError):
        parse_patches("3,4,5")


def test_exports_say_which_attention_is_shown(explorer, small_run, stored):
    from mambapanel.views import export

    explorer.selection = [(0, 1), (5, 5)]  # shown red on grey until a query is made
    explorer.param.update(query=[(2, 2), (2, 3)], direction="to")
    header, rows = explorer.selection_table()
    assert header == [
        "run", "stage", "block", "direction", "query", "patch_row", "patch_col", "attention",
    ]  # fmt: skip
    expected = reference(stored["mean"], [(2, 2), (2, 3)], "to")
    assert [r[3:7] for r in rows] == [["to", "2,2;2,3", 0, 1], ["to", "2,2;2,3", 5, 5]]
    np.testing.assert_allclose([r[7] for r in rows], expected[[0, 5], [1, 5]], rtol=1e-6)
    side = explorer.sides[0]
    captions = [caption for caption, _ in export.side_figures(*side.views())]
    assert captions[1] == "patches: attention to 2 patches (mean): (2, 2) (2, 3) · strength |α|"
    assert captions[2].endswith(", to 2 patches (mean): (2, 2) (2, 3) · strength |α|")
    # Both query patches are outlined in the exported grid.
    picture = np.asarray(export.patch_figure(side.patches))
    factor = picture.shape[0] // WIDTH
    outline = np.array([int("2166ac"[i : i + 2], 16) for i in (0, 2, 4)])
    for row, col in [(2, 2), (2, 3)]:
        assert (picture[row * factor + factor // 2, col * factor] == outline).all()
    assert not (picture[5 * factor + factor // 2, 5 * factor] == outline).all()
