"""The dashboard's views without a browser: selection geometry against a brute-force
reference, streams fired directly (lasso, box, tap), Mode 1 / Mode 2, compare, URL state and
export, on a small run made by the real command line."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from html import escape
from pathlib import Path

import numpy as np
import panel as pn
import pytest
import zarr
from bokeh.document import Document
from panel.io.location import Location
from panel.io.state import set_curdoc
from PIL import Image

from mambapanel.store import RunError, open_run, stage_group
from mambapanel.views import Explorer, RunData, dashboard
from mambapanel.views import scatter as scatter_module
from mambapanel.views.data import SharedReads
from mambapanel.views.geometry import PointIndex, patch_at_location, patches_at_location
from mambapanel.views.scatter import padded_range
from mambapanel.views.style import hex_colours


def crosses(px: float, py: float, vertices: np.ndarray) -> bool:
    """Even-odd rule, one point at a time: the plain reference for PointIndex.in_polygon."""
    inside = False
    for i in range(len(vertices)):
        (x1, y1), (x2, y2) = vertices[i], vertices[(i + 1) % len(vertices)]
        if (y1 > py) != (y2 > py) and px < x1 + (py - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


@pytest.mark.parametrize("seed", range(6))
def test_point_in_polygon_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(2000, 2))
    # Random polygons: star-shaped, self-intersecting, and with vertices on points' y.
    n = rng.integers(3, 40)
    vertices = rng.normal(size=(n, 2)) * 1.5
    if seed % 2:
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        vertices = np.c_[np.cos(angles), np.sin(angles)] * rng.uniform(0.5, 2, (n, 1))
    vertices[0, 1] = points[0, 1]  # a vertex level with a point: counted once
    mask = PointIndex(points[:, 0], points[:, 1]).in_polygon(vertices)
    expected = [crosses(x, y, vertices) for x, y in points]
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.sum() < len(points) or n < 5


def test_polygon_edge_cases():
    index = PointIndex(np.array([0.5, 2.0, 0.5]), np.array([0.5, 0.5, 0.0]))
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    # The bottom edge is horizontal (it crosses nothing) and y = 0 is inside (half-open).
    np.testing.assert_array_equal(index.in_polygon(square), [True, False, True])
    np.testing.assert_array_equal(index.in_polygon(square[:2]), [False, False, False])
    with pytest.raises(ValueError, match=r"\(V, 2\)"):
        index.in_polygon(np.zeros((4, 3)))


def test_bounds_and_nearest():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 500))
    index = PointIndex(x, y)
    expected = (x >= -0.5) & (x <= 1) & (y >= -1) & (y <= 0.25)
    np.testing.assert_array_equal(index.in_bounds(-0.5, -1, 1, 0.25), expected)
    nearest, distance = index.nearest(x[7] + 0.001, y[7], x_scale=2.0, y_scale=1.0)
    assert nearest == 7
    assert distance == pytest.approx(0.0005)


@pytest.fixture
def explorer(small_run):
    return Explorer(small_run, stage=1, block=0, method="pca")


def test_lasso_selects_the_points_inside_and_the_patch_view_shows_them(explorer, small_run):
    scatter, patches = explorer.sides[0].scatter, explorer.sides[0].patches
    points = open_run(small_run)[stage_group(1)]["embedding_intra"].isel(method=0, block=0).values
    centre, spread = points.mean(0), points.std(0)
    polygon = centre + spread * np.array([[-1.5, -1], [1, -1.5], [0.5, 1], [-1, 0.5]])
    scatter.lasso.event(geometry=polygon)
    width = 8
    expected = [divmod(i, width) for i, (x, y) in enumerate(points) if crosses(x, y, polygon)]
    assert expected
    assert explorer.selection == expected
    assert patches.display == "selection"
    mask = np.zeros((8, 8))
    for row, col in expected:
        mask[row, col] = 1
    np.testing.assert_array_equal(patches.values(), mask)
    assert f"{len(expected)} patches selected" in explorer.status.object
    scatter.clear()
    assert explorer.selection == []


def test_box_selects_the_points_in_bounds(explorer, small_run):
    points = open_run(small_run)[stage_group(1)]["embedding_intra"].isel(method=0, block=0).values
    left, bottom = np.percentile(points, 30, axis=0)
    right, top = np.percentile(points, 80, axis=0)
    explorer.sides[0].scatter.box.event(bounds=(left, bottom, right, top))
    inside = (
        (points[:, 0] >= left) & (points[:, 0] <= right)
        & (points[:, 1] >= bottom) & (points[:, 1] <= top)
    )  # fmt: skip
    assert explorer.selection == [divmod(int(i), 8) for i in np.flatnonzero(inside)]


def test_tap_on_a_patch_shows_its_stored_attention_row(explorer, small_run):
    run = open_run(small_run)[stage_group(1)]
    side = explorer.sides[0]
    side.patches.tap.event(x=5.2, y=2.9)  # col 5, row 3
    assert explorer.patch == (3, 5)
    assert side.patches.display == "attention"
    expected = run["attention_mean"].isel(block=0, query=3 * 8 + 5).values.reshape(8, 8)
    np.testing.assert_array_equal(side.patches.values(), np.abs(expected))  # strength
    per_image = run["attention"].isel(image=0, block=0, query=3 * 8 + 5).values.reshape(8, 8)
    np.testing.assert_array_equal(side.image.attention(), per_image)
    assert side.image.patch == (3, 5)
    side.patches.tap.event(x=-3, y=2)  # outside the grid: nothing changes
    assert explorer.patch == (3, 5)
    explorer.scale = "signed"
    np.testing.assert_array_equal(side.patches.values(), expected)
    explorer.scale = "log"
    np.testing.assert_array_equal(side.patches.values(), np.abs(expected))


def test_tap_on_a_mode_2_point_clicks_its_patch(explorer):
    scatter = explorer.sides[0].scatter
    scatter.tap.event(x=scatter.points.x[13], y=scatter.points.y[13])
    assert explorer.patch == divmod(13, 8)


def test_mode_1_points_select_and_open_an_image_and_block(explorer):
    scatter = explorer.sides[0].scatter
    explorer.block = None
    assert scatter.mode == 1
    n_images, n_blocks = 2, 2
    assert len(scatter.points) == n_images * n_blocks
    everything = np.array([[-1e9, -1e9], [1e9, -1e9], [1e9, 1e9], [-1e9, 1e9]])
    scatter.lasso.event(geometry=everything)
    assert len(scatter.selected) == 4
    assert explorer.selection == []
    assert "4 points (image, block) selected, blocks [0, 1]" in explorer.status.object
    point = 1 * n_blocks + 1  # image 1, block 1
    scatter.tap.event(x=scatter.points.x[point], y=scatter.points.y[point])
    assert (explorer.block, explorer.image, scatter.mode) == (1, 1, 2)
    assert len(scatter.points) == 64


def test_switching_stage_and_method_reloads_the_views(explorer, small_run):
    explorer.patch = (7, 7)
    explorer.param.update(stage=2, method="tsne")
    side = explorer.sides[0]
    assert explorer.patch is None  # patches of another grid do not carry over
    assert explorer.block == 0
    stored = open_run(small_run)[stage_group(2)]["embedding_intra"].isel(method=1, block=0).values
    np.testing.assert_array_equal(side.scatter.points.x, stored[:, 0])
    assert side.patches.values().shape == (4, 4)
    explorer.patch = (1, 2)
    assert side.image.attention().shape == (4, 4)


def test_compare_two_blocks_and_two_runs_with_the_same_patch(small_run):
    explorer = Explorer({"cross": small_run, "copy": small_run}, stage=1, block=0)
    explorer.param.update(compare="blocks", block_b=1, patch=(2, 6))
    left, right = explorer.shown
    assert right.patches.block == 1
    assert left.patches.patch == right.patches.patch == (2, 6)
    data = RunData(small_run)
    np.testing.assert_array_equal(right.patches.values(), np.abs(data.attention_row(1, 1, (2, 6))))
    explorer.compare = "runs"
    explorer.run_b = "copy"
    left, right = explorer.shown
    assert right.patches.run.name == "copy"
    assert right.patches.block == 0
    assert right.patches.patch == (2, 6)
    right.patches.tap.event(x=1, y=1)  # a click on either side moves both
    assert left.patches.patch == (1, 1)


@pytest.mark.parametrize(
    ("patches", "source", "target", "expected"),
    [
        ([(2, 6)], (8, 8), (16, 16), [(4, 12), (4, 13), (5, 12), (5, 13)]),
        ([(4, 12), (5, 13)], (16, 16), (8, 8), [(2, 6)]),
        ([(1, 1)], (3, 3), (2, 2), [(1, 1)]),  # centre on a corner: the patch below right
        ([(0, 0)], (14, 14), (14, 14), [(0, 0)]),
        ([(0, 2)], (2, 3), (4, 9), [(0, 6), (0, 7), (0, 8), (1, 6), (1, 7), (1, 8)]),
    ],
)
def test_patches_at_the_same_image_location_on_another_grid(patches, source, target, expected):
    assert patches_at_location(patches, source, target) == expected
    # Brute force: every target patch whose centre lies in a source patch's area.
    centres = [
        (r, c)
        for r in range(target[0])
        for c in range(target[1])
        for row, col in patches
        if int((r + 0.5) * source[0] / target[0]) == row
        and int((c + 0.5) * source[1] / target[1]) == col
    ]
    assert set(centres) <= set(expected)
    assert {patch_at_location(patch, source, target) for patch in patches} <= set(expected)


def test_a_vmamba_run_and_a_vim_run_side_by_side(demo_runs):
    """Grids 16 x 16 (VMamba's stage 0) and 8 x 8 (Vim): the same image location."""
    runs = {"vmamba": demo_runs / "cross", "vim": demo_runs / "vim-morton"}
    explorer = Explorer(runs, stage=0, block=0, compare="runs", run_b="vim")
    left, right = explorer.shown
    assert not right.problem.visible
    assert "grid 8×8: patches at the same image location" in right.caption.object
    explorer.patch = (5, 9)
    assert right.patches.patch == right.image.patch == (2, 4)
    vim = RunData(demo_runs / "vim-morton")
    np.testing.assert_array_equal(right.patches.values(), np.abs(vim.attention_row(0, 0, (2, 4))))
    right.patches.tap.event(x=1, y=6)  # a click on the Vim side: its patch (6, 1) ...
    assert right.patches.patch == (6, 1)
    assert explorer.patch == left.patches.patch == (13, 3)  # ... under it on the left
    explorer.selection = [(0, 0), (0, 1), (15, 15)]
    assert right.patches.selection == right.scatter.selected_patches() == [(0, 0), (7, 7)]
    right.scatter.select_patches([(7, 7)])
    right.scatter.param.trigger("selected")
    assert explorer.selection == [(14, 14), (14, 15), (15, 14), (15, 15)]


def test_the_image_view_shows_cls_attention_and_explanations_with_their_faithfulness(
    demo_runs,
):
    """Vim: attention from the clicked patch or from CLS, rollout, attribution; VMamba: no
    CLS. Each map is the stored one, laid over the whole image; the perturbation test's
    areas beside it are the stored curves' (findings.metrics.curve_area)."""
    from mambapanel.findings.metrics import curve_area

    runs = {"vim": demo_runs / "vim-morton", "vmamba": demo_runs / "cross"}
    explorer = Explorer(runs, stage=0, block=1, image=2)
    image = explorer.sides[0].image
    assert image.maps() == ["patch", "cls", "rollout", "attribution"]
    stored = open_run(runs["vim"])
    image.shown = "cls"
    assert image._attention  # CLS needs a block, no patch
    cls_row = stored[stage_group(0)]["attention_from_cls"].values[2, 1].reshape(8, 8)
    np.testing.assert_array_equal(image.layer_values(), cls_row)
    tests = list(stored["test"].values)
    areas = curve_area(stored["faithfulness"].values, stored["fraction"].values)
    most, least = areas[2, tests.index("cls")]
    assert f"this image: {most:.2f} / {least:.2f}" in image.faithfulness.object
    assert "last block's attention from CLS" in image.faithfulness.object
    random = np.nanmean(areas[:, tests.index("random")], axis=0)
    assert f"a random map, same images: {random[0]:.2f} / {random[1]:.2f}" in (
        image.faithfulness.object
    )

    explorer.run = "vmamba"
    image = explorer.sides[0].image
    assert image.maps() == ["patch", "rollout", "attribution"]
    explorer.stage = 1  # an 8 x 8 stage under the 16 x 16 relevance grid
    image.shown = "attribution"
    relevance = open_run(runs["vmamba"])["relevance"]
    expected = relevance.sel(explanation="attribution").values[2].reshape(16, 16)
    np.testing.assert_array_equal(image.layer_values(), expected)
    layer = image._attention_layer()
    assert layer.range("col") == layer.range("row") == (-0.5, 7.5)  # the whole image
    stored = open_run(runs["vmamba"])
    tests = list(stored["test"].values)
    areas = curve_area(stored["faithfulness"].values, stored["fraction"].values)
    most, least = areas[2, tests.index("attribution")]
    assert f"this image: {most:.2f} / {least:.2f}" in image.faithfulness.object
    with_map = explorer.figures()
    image.shown = "patch"  # no patch clicked: nothing over the image
    assert explorer.figures() != with_map
    assert not image.faithfulness.visible


def test_grids_of_two_sizes_side_by_side_each_frame_their_own(demo_runs):
    """The VMamba side's 16 x 16 grid and the Vim side's 8 x 8 one, each framed on its own
    (patch and image view): linked axes gave both the first extent drawn."""
    runs = {"vmamba": demo_runs / "cross", "vim": demo_runs / "vim-morton"}
    document = _rendered(Explorer(runs, stage=0, block=0, compare="runs", run_b="vim"))
    for name in ("patch-view", "image-view"):
        drawn = document.select({"name": name})
        extents = sorted((f.x_range.start, f.x_range.end, f.y_range.end) for f in drawn)
        assert extents == [(-0.5, 7.5, -0.5), (-0.5, 15.5, -0.5)], name


def test_url_state_round_trip(explorer):
    location = Location()
    explorer.sync_url(location)
    assert location.query_params == {
        "run": explorer.run, "stage": 1, "block": 0, "method": "pca", "image": 0,
        "scale": "strength", "dir": "from",
    }  # fmt: skip
    explorer.patch = (4, 2)
    assert location.query_params["patch"] == "4,2"
    location.search = "?stage=2&block=all&method=tsne&patch=3,1&image=1"
    assert (explorer.stage, explorer.block, explorer.method) == (2, None, "tsne")
    assert (explorer.patch, explorer.image) == ((3, 1), 1)
    location.search = "?scale=signed"
    assert explorer.scale == "signed"
    location.search = "?scale=linear"  # the earlier name of strength
    assert explorer.scale == location.query_params["scale"] == "strength"
    location.search = "?stage=9&patch=8,8"
    assert explorer.stage == 2
    assert explorer.patch == (3, 1)
    assert location.query_params["stage"] == 2  # the URL is corrected to what is shown
    assert "URL: stage=9 ignored" in explorer.status.object
    assert "URL: patch=8,8 ignored (outside the 4x4 grid)" in explorer.status.object


def test_exports(explorer, small_run):
    explorer.selection = [(0, 1), (5, 5)]
    explorer.patch = (2, 2)
    header, rows = explorer.selection_table()
    data = RunData(small_run)
    row = data.attention_row(1, 0, (2, 2))
    assert header[3:] == ["direction", "query", "patch_row", "patch_col", "attention"]
    assert [r[3:7] for r in rows] == [["from", "2,2", 0, 1], ["from", "2,2", 5, 5]]
    assert [r[7] for r in rows] == [float(row[0, 1]), float(row[5, 5])]
    text = explorer._downloads[1].callback().getvalue()
    assert next(csv.reader(io.StringIO(text))) == header
    picture = Image.open(io.BytesIO(explorer.figures()))
    assert picture.format == "PNG"
    assert picture.width > 900
    # The patch grid's strongest patch is drawn in the colormap's darkest red.
    grid = np.asarray(picture)
    assert (grid.reshape(-1, 3) == _rgb(hex_colours("YlOrRd")[-1])).all(axis=1).any()


def test_the_exported_patch_grid_draws_each_colour_scale(explorer, small_run):
    """A patch row with a strong negative and a strong positive value: on strength and log
    the larger |α| is the darkest red whatever its sign; on signed the negative is blue and
    the positive red; the caption names the scale."""
    from mambapanel.views import export

    data = RunData(small_run)
    rows = {(r, c): data.attention_row(1, 0, (r, c)) for r in range(8) for c in range(8)}
    patch = max(rows, key=lambda p: min(-rows[p].min(), rows[p].max()))
    attention = rows[patch]
    negative, positive = np.argmin(attention), np.argmax(attention)
    strongest = np.argmax(np.abs(attention))
    explorer.patch = patch
    side = explorer.sides[0]

    def drawn(index: int) -> np.ndarray:
        picture = np.asarray(export.patch_figure(side.patches))
        factor = picture.shape[0] // 8
        row, col = divmod(int(index), 8)
        return picture[row * factor + factor // 2, col * factor + factor // 2].astype(int)

    for scale in ("strength", "log"):
        explorer.scale = scale
        assert (drawn(strongest) == _rgb(hex_colours("YlOrRd")[-1])).all(), scale
    explorer.scale = "signed"
    blue, red = drawn(negative), drawn(positive)
    assert blue[2] > blue[0] + 40 and red[0] > red[2] + 40
    captions = [caption for caption, _ in export.side_figures(*side.views())]
    assert captions[1].endswith("· signed α") and captions[2].endswith("· signed α")


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])


def test_a_bad_run_path_is_a_clear_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(RunError, match="no such run"):
        Explorer(missing)
    page = dashboard([str(missing)])
    texts = [getattr(pane, "object", "") for pane in page.objects]
    assert any("nowhere: no such run" in str(text) for text in texts)
    assert "cannot open the run" in texts[0]


def test_renders_as_a_notebook_cell(explorer):
    model = pn.panel(explorer).get_root()
    assert model.children


DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"


def test_views_and_dashboards_never_import_torch(small_run):
    """Every module of the views, and both dashboard scripts run as ``panel serve`` runs
    them, in a fresh interpreter: no torch or Triton (seconds of import, a GPU context)."""
    code = (
        "import importlib, pkgutil, runpy, sys; import mambapanel.views as views; "
        "names = [m.name for m in pkgutil.iter_modules(views.__path__, 'mambapanel.views.')]; "
        "[importlib.import_module(name) for name in names]; "
        f"sys.argv = ['dashboard', {str(small_run)!r}, {str(small_run)!r}]; "
        f"[runpy.run_path(f'{DASHBOARDS}/{{name}}.py') for name in ('explorer', 'compare')]; "
        "print(len(names), sorted({'torch', 'triton'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    count, imported = result.stdout.decode().split(" ", 1)
    assert int(count) >= 15  # the walk found the modules (app, data, explorer, ...)
    assert imported.strip() == "[]"


def test_a_rendered_page_imports_nothing_it_does_not_draw_with(small_run):
    """A page of a few thousand points needs no torch, xarray (it reads zarr), Dask, SciPy,
    scikit-learn, UMAP, Numba or Datashader (over 50,000 points only), no colorcet (over ten
    blocks only) and no Pillow (export only): each of them is a fraction of a second of a
    served page's first render, torch several seconds."""
    unwanted = [
        "torch", "triton", "xarray", "dask", "scipy", "sklearn", "umap", "numba",
        "datashader", "colorcet", "PIL",
    ]  # fmt: skip
    code = (
        "import sys; import panel as pn; from bokeh.document import Document; "
        "from mambapanel.views import dashboard; "
        f"page = dashboard([{str(small_run)!r}], stage=1, block=0); "
        "document = Document(); document.add_root(pn.panel(page).get_root(document)); "
        f"print(sorted(set({unwanted!r}) & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert result.stdout.decode().strip() == "[]"


def _rendered(explorer: Explorer) -> Document:
    """The explorer's page as a served session holds it: Bokeh models in a document."""
    document = Document()
    document.add_root(pn.panel(explorer).get_root(document))
    return document


def test_figures_are_canvases_unless_glyphs_are_many(small_run, monkeypatch):
    """WebGL, which HoloViews asks for everywhere, is emulated by a browser without a GPU:
    the figures are canvases, the scatterplot WebGL above scatter.WEBGL_ABOVE glyphs."""
    names = ["scatterplot", "patch-view", "image-view"]

    def backends() -> list[str]:
        document = _rendered(Explorer(small_run, stage=1, block=0, method="pca"))
        return [document.select_one({"name": name}).output_backend for name in names]

    assert backends() == ["canvas", "canvas", "canvas"]
    monkeypatch.setattr(scatter_module, "WEBGL_ABOVE", 15)  # the block has 16 patches
    assert backends() == ["webgl", "canvas", "canvas"]


def _figure(document: Document, name: str) -> dict:
    """A figure as drawn: its title, the data of each glyph (by glyph type, in renderer
    order) and the colour range of its image, if any."""
    figure = document.select_one({"name": name})
    glyphs: dict[str, list[dict]] = {}
    limits = None
    for renderer in figure.renderers:
        data = {key: np.array(value).tolist() for key, value in renderer.data_source.data.items()}
        glyphs.setdefault(type(renderer.glyph).__name__, []).append(data)
        mapper = getattr(renderer.glyph, "color_mapper", None)
        if mapper is not None:
            limits = (mapper.low, mapper.high)
    return {"title": figure.title.text, "glyphs": glyphs, "limits": limits}


def test_selection_and_clicks_redraw_the_figures_as_a_fresh_render_would(explorer, small_run):
    document = _rendered(explorer)
    scatter, patches = explorer.sides[0].scatter, explorer.sides[0].patches
    points = scatter.points
    polygon = np.array([[-1e9, -1e9], [1e9, -1e9], [1e9, np.median(points.y)], [-1e9, 0]])
    with set_curdoc(document):
        scatter.lasso.event(geometry=polygon)
    assert 0 < len(explorer.selection) < 64
    grid = _figure(document, "patch-view")
    assert grid["title"] == f"stage 1: {len(explorer.selection)} selected patches"
    np.testing.assert_array_equal(grid["glyphs"]["Image"][0]["image"][0], patches.values())
    highlight = _figure(document, "scatterplot")["glyphs"]["Scatter"][1]
    np.testing.assert_array_equal(highlight["x"], points.x[scatter.selected])

    def fresh(**state: object) -> Document:
        return _rendered(Explorer(small_run, stage=1, block=0, method="pca", **state))

    expected = fresh(selection=explorer.selection)
    for name in ("patch-view", "scatterplot"):
        assert _figure(document, name) == _figure(expected, name), name

    # The first click shows attention (a new plot), the second one is written in place.
    with set_curdoc(document):
        patches.tap.event(x=1, y=6)
        patches.tap.event(x=5, y=2)
    grid = _figure(document, "patch-view")
    assert grid["title"] == "block 0: attention from (2, 5)"
    np.testing.assert_array_equal(
        grid["glyphs"]["Image"][0]["image"][0],
        np.abs(RunData(small_run).attention_row(1, 0, (2, 5))),
    )
    assert grid["glyphs"]["Quad"][0] == {
        "left": [4.5],
        "right": [5.5],
        "bottom": [1.5],
        "top": [2.5],
    }
    assert grid == _figure(fresh(patch=(2, 5)), "patch-view")


@pytest.fixture
def three_runs(small_run, tmp_path):
    """Three runs told apart by order and data: copies of the small run whose stage-1
    embeddings and mean attention are scaled by 1, 2 and -1."""
    runs = {}
    for name, scale in (("cross", 1.0), ("morton", 2.0), ("spiral", -1.0)):
        path = tmp_path / name
        shutil.copytree(small_run, path)
        group = zarr.open_group(path, mode="r+")
        group.attrs["order"] = name
        for variable in ("embedding_intra", "attention_mean"):
            array = group[f"{stage_group(1)}/{variable}"]
            array[...] = array[...] * scale
        runs[name] = (path, scale)
    return runs


def test_explorer_of_three_runs_opens_each_when_shown_and_switches(three_runs, small_run):
    explorer = Explorer([path for path, _ in three_runs.values()], stage=1, block=0)
    assert explorer.param.run.objects == ["cross", "morton", "spiral"]
    assert [run.opened for run in explorer.runs.values()] == [True, False, False]
    reference = RunData(small_run)
    points = reference.intra_embedding(1, 0, "pca")
    for name in ("spiral", "morton", "cross"):
        scale = three_runs[name][1]
        explorer.run = name
        explorer.patch = (3, 4)
        side = explorer.sides[0]
        assert side.caption.object.startswith(f"<div><b>{name}</b> ({name})")
        np.testing.assert_allclose(side.scatter.points.x, points.x * scale, rtol=1e-6)
        np.testing.assert_allclose(
            side.patches.values(),
            np.abs(reference.attention_row(1, 0, (3, 4)) * scale),
            rtol=1e-6,
        )
        assert explorer.runs[name].opened
    assert (explorer.stage, explorer.block) == (1, 0)  # kept across runs that have them


def test_compare_of_three_runs_starts_with_the_first_two_and_picks_any(three_runs):
    paths = [str(path) for path, _ in three_runs.values()]
    explorer = dashboard(paths, compare="runs", block=0, scale="signed")
    left, right = explorer.shown
    assert (left.scatter.run.name, right.scatter.run.name) == ("cross", "morton")
    assert not explorer.runs["spiral"].opened
    explorer.run_b = "spiral"
    assert explorer.shown[1].patches.run.name == "spiral"
    explorer.patch = (1, 1)
    np.testing.assert_allclose(
        explorer.shown[1].patches.values(), -explorer.shown[0].patches.values(), rtol=1e-6
    )


def test_compare_frames_each_side_on_its_own_points_on_every_change(three_runs):
    """Two runs whose blocks' points differ in scale (x1, x2): after a tap opens a block, and
    on every change of method, block, stage and mode, each scatterplot's axes frame its own
    points (padded as Datashader's are), not the extent shown before."""
    paths = {name: path for name, (path, _) in three_runs.items()}
    explorer = Explorer(paths, stage=1, method="pca", compare="runs", run_b="morton")
    document = _rendered(explorer)

    def assert_framed(change: str) -> None:
        drawn = document.select({"name": "scatterplot"})
        figures = {figure.title.text.split(" · ")[0]: figure for figure in drawn}
        for side in explorer.shown:
            figure, points = figures[side.scatter.run.name], side.scatter.points
            for axis, values in ((figure.x_range, points.x), (figure.y_range, points.y)):
                shown = (axis.start, axis.end)
                assert shown == pytest.approx(padded_range(values)), (change, side.scatter.run)

    assert explorer.block is None
    assert_framed("Mode 1")
    with set_curdoc(document):
        tapped = explorer.sides[0].scatter.points
        explorer.sides[0].scatter.tap.event(x=float(tapped.x[3]), y=float(tapped.y[3]))
        assert explorer.block == int(tapped.block[3])
        assert_framed("a tap opened a block")
        for change in ({"method": "tsne"}, {"block": 1}, {"stage": 2}, {"block": None}):
            explorer.param.update(change)
            assert_framed(str(change))


def test_a_run_that_cannot_be_opened_is_named_and_the_shown_run_stays(small_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(small_run, broken)
    shutil.rmtree(broken / stage_group(2) / "attention_mean")
    explorer = Explorer({"good": small_run, "broken": broken}, stage=1, block=0)
    explorer.run = "broken"
    assert explorer.run == "good"
    assert explorer.run_problem.visible
    problem = f"Cannot show run broken: {broken}: group 'stage2' has no variable 'attention_mean'"
    assert explorer.run_problem.object == escape(problem)
    explorer.param.update(compare="runs", run_b="broken")
    assert explorer.shown[1].problem.object == escape(problem)


def test_the_findings_tab_reads_the_findings_when_first_opened(small_run, tmp_path):
    from mambapanel.findings.report import report

    run = tmp_path / "with-findings"
    shutil.copytree(small_run, run)
    report([run], tmp_path / "report")
    layout = Explorer(run).__panel__()
    tabs = layout[1]
    assert tabs._names == ["Explore", "Findings", "Overview"]
    assert "Reading the stored findings" in tabs[1][0].object  # nothing read yet
    tabs.active = 1
    shown = tabs[1][0]
    assert "Findings" in str(shown[0].object)
    tabs.active = 0
    tabs.active = 1
    assert tabs[1][0] is shown  # read once


def test_the_findings_tab_of_a_run_without_findings_says_how_to_add_them(small_run):
    """The README's workflow (extract, reduce, serve) stores no findings."""
    tabs = Explorer(small_run).__panel__()[1]
    tabs.active = 1
    shown = tabs[1][0]  # the FindingsView's layout
    texts = [pane.object for pane in shown.select(pn.pane.Markdown)]
    assert any(f"python -m compute findings {small_run}" in text for text in texts)
    assert shown.select(pn.widgets.Select)[0].value is None  # no stage to show
    assert pn.panel(shown).get_root().children


def test_sessions_share_what_they_read_and_nobody_writes_it(small_run):
    shared = SharedReads(max_bytes=2**20)
    mine, yours = RunData(small_run, shared=shared), RunData(small_run, "yours", shared=shared)
    points = mine.intra_embedding(1, 0, "pca")
    assert yours.intra_embedding(1, 0, "pca") is points
    assert yours.thumbnail(1) is mine.thumbnail(1)
    assert yours.root is mine.root
    with pytest.raises(ValueError, match="read-only"):
        points.x[0] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        mine.thumbnail(1)[0, 0, 0] = 0
    np.testing.assert_array_equal(points.x, RunData(small_run).intra_embedding(1, 0, "pca").x)


def test_shared_reads_are_bounded(small_run):
    shared = SharedReads(max_bytes=4 * 2**10)  # room for about three small values
    run = RunData(small_run, shared=shared)
    for image in range(2):
        run.thumbnail(image)  # 12 kB each: more than the bound, read but not kept
    assert shared.nbytes <= shared.max_bytes
    first = run.intra_embedding(2, 0, "pca")  # 16 points: 512 bytes, kept as 1 kB
    for block in (0, 1):
        run.intra_embedding(1, block, "tsne")
    assert shared.nbytes <= shared.max_bytes
    assert run.intra_embedding(2, 0, "pca") is not first  # the least recently used went


def test_a_run_changed_on_disk_is_read_anew_by_the_sessions_opened_after(small_run, tmp_path):
    """What `compute reduce` does to a served run (it replaces the embedding arrays and the
    method coordinate) reaches the sessions opened after it, not those already open."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    shared = SharedReads(max_bytes=2**20)
    before = RunData(run, shared=shared)
    assert before.methods(1) == ["pca", "tsne"]
    group = zarr.open_group(run / stage_group(1), mode="r+")
    del group["method"]
    group.create_array("method", shape=(2,), dtype=str, dimension_names=("method",))[...] = [
        "pca", "umap",
    ]  # fmt: skip
    assert RunData(run, shared=shared).methods(1) == ["pca", "umap"]
    assert before.methods(1) == ["pca", "tsne"]
