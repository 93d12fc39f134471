"""Routes in the views without a browser: the drawn path of a route against the stored order,
a route's attention against its stored matrix, and the errors of a run without routes apart."""

from __future__ import annotations

import shutil

import holoviews as hv
import numpy as np
import pytest

from mambapanel import orders
from mambapanel.store import RunError, open_run, stage_group
from mambapanel.views import Explorer, RunData, export
from mambapanel.views.patch import route_overlay, route_path
from mambapanel.views.style import scaled

STAGE, BLOCK, PATCH = 0, 1, (5, 6)


def test_route_path_visits_the_routes_patches_in_order_also_on_a_pooled_grid():
    routes = orders.routes("hilbert", 6, 4).numpy()
    cols, rows = route_path(routes, 0, (6, 4))
    np.testing.assert_array_equal(rows * 4 + cols, routes[0])  # patch centres, in order
    # Pooled 2x2: each full-grid patch centre lands inside the stored patch that pools it.
    cols, rows = route_path(routes, 1, (6, 4), pool=2)
    full_rows, full_cols = np.divmod(routes[1], 4)
    np.testing.assert_array_equal(np.round(rows), full_rows // 2)
    np.testing.assert_array_equal(np.round(cols), full_cols // 2)
    np.testing.assert_allclose(rows, (full_rows + 0.5) / 2 - 0.5)


def test_the_overlay_draws_route_0_from_its_first_patch_with_its_direction():
    routes = orders.routes("cross", 4, 4).numpy()
    layers = route_overlay(routes, [0], (4, 4), 1)
    path, arrows, start, end = layers
    assert isinstance(path, hv.Path)
    np.testing.assert_array_equal(path.data[0]["row"] * 4 + path.data[0]["col"], routes[0])
    assert (start.dframe().iloc[0]["row"], start.dframe().iloc[0]["col"]) == (0, 0)
    assert (end.dframe().iloc[0]["row"], end.dframe().iloc[0]["col"]) == (3, 3)
    # Row-major: along a row the triangles point right (-90 degrees from up), and the step
    # from a row's end to the next row's start points down and to the left.
    angles = arrows.dframe()["angle"].to_numpy()
    assert np.allclose(angles[:3], -90)
    assert len(route_overlay(routes, [0, 3], (4, 4), 1)) == 8
    assert len(route_overlay(None, [0], (4, 4), 1)) == 0


def test_a_chosen_route_shows_its_stored_matrix_row_and_the_merged_view_the_mean(by_route_run):
    group = open_run(by_route_run)[stage_group(STAGE)]
    explorer = Explorer(by_route_run, stage=STAGE, block=BLOCK, patch=PATCH)
    patches = explorer.sides[0].patches
    width = group.attrs["grid_width"]
    query = PATCH[0] * width + PATCH[1]
    assert explorer.param.route.objects == [None, 0, 1, 2, 3]
    merged = patches.values()
    np.testing.assert_array_equal(
        merged.ravel(), scaled(group["attention_mean"].values[BLOCK, query], "strength")
    )
    explorer.param.update(route=3, routes=[0, 3])
    assert (patches.route, patches.routes) == (3, [0, 3])
    np.testing.assert_array_equal(
        patches.values().ravel(),
        scaled(group["attention_mean_by_route"].values[BLOCK, 3, query], "strength"),
    )
    assert explorer.sides[0].image.route == 3
    image_row = explorer.sides[0].image.attention()
    np.testing.assert_array_equal(
        image_row.ravel(), group["attention_mean_by_route"].values[BLOCK, 3, query]
    )
    captions = [caption for caption, _ in export.side_figures(*explorer.sides[0].views())]
    assert "· route 3 ·" in captions[1] and "· route 3 (mean) ·" in captions[2]


def test_a_run_without_routes_apart_refuses_a_route_by_name(small_run):
    run = RunData(small_run)
    with pytest.raises(RunError, match="extracted without --by-route"):
        run.attention_row(1, 0, (0, 0), route=1)
    explorer = Explorer(small_run, stage=1, block=0)
    assert explorer.param.route.objects == [None]  # no route to choose
    assert explorer.param.routes.objects == [0, 1, 2, 3]  # but its routes can be drawn
    explorer.url_state.attach(explorer)
    explorer.url_state.route = "1"
    (problem,) = explorer.url_state.problems
    assert problem.startswith("route=1 ignored (run small-run stores no matrices by route")
    assert explorer.route is None


def test_a_run_made_before_routes_were_recorded_offers_none_to_draw(small_run, tmp_path):
    old = tmp_path / "old-run"
    shutil.copytree(small_run, old)
    for stage in (1, 2):
        shutil.rmtree(old / stage_group(stage) / "routes")
    assert RunData(old).routes(1) is None
    explorer = Explorer(old, stage=1, block=0, routes=[])
    assert explorer.param.routes.objects == [] and explorer.param.route.objects == [None]
    patches = explorer.sides[0].patches
    patches.routes = [0]  # asked anyway: nothing to draw, nothing fails
    assert len(patches._plot[0].object) == 2  # the grid and the clicked patch's outline
