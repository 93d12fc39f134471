"""The findings: each metric on constructed attention matrices whose answer is known, the
stored findings and the report on the session's small run, and the Findings view."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import numpy as np
import panel as pn
import pytest
import xarray as xr
import zarr
from PIL import Image

from compute import findings as command
from mambapanel import orders
from mambapanel.findings import metrics, record, stage, tables
from mambapanel.findings.report import report
from mambapanel.store import RunError, open_run, stage_group
from mambapanel.views.findings import FindingsView, run_panel


def routes(name: str, height: int, width: int) -> np.ndarray:
    return orders.routes(name, height, width).numpy()


# --- self / row / column share -------------------------------------------------------------


def test_self_row_column_share_known_answers():
    height, width = 3, 4
    L = height * width
    same_row = same_line_patterns(height, width, "row") - np.eye(L)
    assert metrics.self_row_column_share(np.eye(L), height, width) == {
        "self": 1.0,
        "row": 0.0,
        "column": 0.0,
    }
    assert metrics.self_row_column_share(-same_row, height, width)["row"] == 1.0  # |α|
    uniform = metrics.self_row_column_share(np.ones((2, L, L)), height, width)
    assert uniform == pytest.approx({"self": 1 / L, "row": 3 / L, "column": 2 / L})
    with pytest.raises(ValueError, match="does not fit a 3x4 grid"):
        metrics.self_row_column_share(np.eye(L + 1), height, width)


# --- spatial organisation ------------------------------------------------------------------


def same_line_patterns(height: int, width: int, axis: str) -> np.ndarray:
    """Every patch attends uniformly to its own grid row (or column): one pattern per line."""
    rows, cols = np.divmod(np.arange(height * width), width)
    line = rows if axis == "row" else cols
    return (line[:, None] == line[None, :]).astype(float)


def test_patterns_shared_by_grid_rows_have_row_purity_one():
    height, width = 5, 6
    by_row = metrics.pattern_distances(same_line_patterns(height, width, "row"))
    # Each patch's 5 nearest are the rest of its row (distance 0); its 4 nearest for the
    # column purity are too, and none of them shares its column.
    assert metrics.neighbour_purity(by_row, height, width) == pytest.approx(
        {"row": 1.0, "column": 0.0, "row_chance": 5 / 29, "column_chance": 4 / 29}
    )
    by_column = metrics.pattern_distances(same_line_patterns(height, width, "column"))
    purity = metrics.neighbour_purity(by_column, height, width)
    # 4 of the 5 row neighbours are the rest of the column; the 5th is a tie among all others.
    assert purity["column"] == 1.0 and purity["row"] <= 1 / 5


def correlation(distances: np.ndarray, patch_distance: np.ndarray) -> float:
    return metrics.distance_correlation(
        metrics.pair_ranks(distances), metrics.pair_ranks(patch_distance)
    )


def test_random_patterns_have_chance_purity_and_no_correlation():
    height, width = 10, 10
    attention = np.random.default_rng(0).random((100, 100))
    distances = metrics.pattern_distances(attention)
    purity = metrics.neighbour_purity(distances, height, width)
    assert purity["row"] == pytest.approx(purity["row_chance"], abs=0.04)
    assert purity["column"] == pytest.approx(purity["column_chance"], abs=0.04)
    grid = metrics.grid_distance(height, width, "euclidean")
    assert abs(correlation(distances, grid)) < 0.05


def test_smooth_patterns_correlate_with_grid_and_sequence_distance():
    height, width = 8, 8
    grid = metrics.grid_distance(height, width, "euclidean")
    bumps = np.exp(-((grid / 3) ** 2))  # each patch attends around itself
    assert correlation(metrics.pattern_distances(bumps), grid) > 0.9
    sequence = metrics.sequence_distance(routes("bidirectional", height, width))
    along_scan = np.exp(-sequence / 8.0)  # each patch attends around itself in the scan
    assert correlation(metrics.pattern_distances(along_scan), sequence) > 0.9
    same = np.ones((64, 64))
    assert np.isnan(correlation(metrics.pattern_distances(same), grid))


def test_distance_correlation_is_spearmans():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(2)
    pattern = metrics.pattern_distances(rng.random((30, 30)) + np.eye(30))
    sequence = metrics.sequence_distance(routes("morton", 5, 6))  # many ties
    expected = spearmanr(pattern[np.triu_indices(30, 1)], sequence[np.triu_indices(30, 1)])
    assert correlation(pattern, sequence) == pytest.approx(expected.statistic, abs=1e-12)


def test_grid_and_sequence_distances():
    chebyshev = metrics.grid_distance(3, 4)
    assert chebyshev[0, 5] == 1 and chebyshev[0, 11] == 3 and chebyshev.dtype == np.int64
    assert metrics.grid_distance(3, 4, "euclidean")[0, 5] == pytest.approx(np.sqrt(2))
    row_major = metrics.sequence_distance(routes("bidirectional", 3, 4))
    assert np.array_equal(row_major, np.abs(np.arange(12)[:, None] - np.arange(12)[None, :]))
    cross = metrics.sequence_distance(routes("cross", 3, 4))
    assert cross[0, 4] == 1  # one step down: adjacent in the column-major route
    assert cross[0, 5] == 4  # (1, 1): four steps on either route
    with pytest.raises(ValueError, match="metric must be"):
        metrics.grid_distance(3, 4, "manhattan")


# --- order effect --------------------------------------------------------------------------


def test_preceding_mask_holds_the_window_before_each_patch():
    mask = metrics.preceding_mask(np.arange(6)[None], window=2)
    assert [list(np.flatnonzero(row)) for row in mask] == [[], [0], [0, 1], [1, 2], [2, 3], [3, 4]]
    both_ways = metrics.preceding_mask(routes("bidirectional", 2, 3), window=1)
    assert list(np.flatnonzero(both_ways[2])) == [1, 3]


def test_attention_on_the_preceding_patches_of_an_order_has_share_one():
    height, width = 6, 6
    window = width
    mask = metrics.preceding_mask(routes("diagonal", height, width), window)
    attention = mask + 5 * np.eye(36)  # the patch itself does not count
    assert metrics.order_share(attention, mask) == 1.0
    random = np.mean(
        [
            metrics.order_share(
                attention,
                metrics.preceding_mask(
                    metrics.relabelled_routes(routes("diagonal", height, width), seed), window
                ),
            )
            for seed in range(8)
        ]
    )
    assert random == pytest.approx(metrics.order_chance(mask), abs=0.05)
    assert random < 0.5
    cross = metrics.preceding_mask(routes("cross", height, width), window)
    assert metrics.order_share(attention, cross) < 0.7
    assert np.isnan(metrics.order_share(np.eye(36), mask))  # nobody attends elsewhere


def test_order_chance_is_the_mean_share_of_relabelled_routes():
    attention = np.random.default_rng(1).random((25, 25)) ** 4  # uneven, like attention
    cross = routes("cross", 5, 5)
    shares = [
        metrics.order_share(
            attention, metrics.preceding_mask(metrics.relabelled_routes(cross, s), 5)
        )
        for s in range(300)
    ]
    chance = metrics.order_chance(metrics.preceding_mask(cross, 5))
    assert np.mean(shares) == pytest.approx(chance, abs=0.01)


def test_relabelled_routes_keep_the_route_structure():
    cross = routes("cross", 4, 4)
    relabelled = metrics.relabelled_routes(cross, seed=3)
    assert np.array_equal(relabelled[2], relabelled[0][::-1])  # the reverse stays a reverse
    assert all(sorted(route) == list(range(16)) for route in relabelled)
    assert not np.array_equal(relabelled, cross)


# --- locality profile ----------------------------------------------------------------------


def test_locality_profile_recovers_a_function_of_distance():
    height, width = 5, 7
    chebyshev = metrics.grid_distance(height, width)
    f = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625])
    profile, pairs = metrics.locality_profile(-f[chebyshev], chebyshev)
    assert np.allclose(profile, f)
    assert pairs.sum() == 35**2 and pairs[0] == 35
    sequence = metrics.sequence_distance(routes("cross", height, width))
    g = 1 / (1 + np.arange(35.0))
    profile, pairs = metrics.locality_profile(g[sequence], sequence)
    present = pairs > 0
    assert np.allclose(profile[present], g[: len(profile)][present])
    assert np.isnan(profile[~present]).all()


def test_relative_profile_and_near_ratio():
    profile = np.array([9.0, 3.0, np.nan, 1.0])
    pairs = np.array([4, 2, 0, 2])
    distance, relative = metrics.relative_profile(profile, pairs)
    assert list(distance) == [1, 3] and np.allclose(relative, [1.5, 0.5])
    assert metrics.near_ratio(profile, pairs) == pytest.approx(1.5)


# --- block separation ----------------------------------------------------------------------


def test_block_separation_known_answers():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [100, 0], [0, 100]])
    clusters = centres[None] + rng.normal(size=(50, 3, 2))  # (image, block, xy)
    assert metrics.block_separation(clusters) > 0.9
    mixed = rng.normal(size=(200, 3, 2))
    assert abs(metrics.block_separation(mixed)) < 0.05
    assert np.isnan(metrics.block_separation(clusters[:, :1]))  # one block
    assert np.isnan(metrics.block_separation(clusters[:1]))  # one image


# --- one stage -----------------------------------------------------------------------------


def test_stage_findings_with_and_without_routes():
    height, width = 4, 4
    attention = np.random.default_rng(0).random((3, 16, 16))
    embeddings = {"pca": np.random.default_rng(1).random((5, 3, 2))}
    dataset = stage.stage_findings(
        attention,
        height,
        width,
        embeddings=embeddings,
        routes=routes("cross", height, width),
        compared={"cross": routes("cross", height, width)},
        seeds=2,
        attrs={"stage": 1, "pool": 1, "notes": []},
    )
    assert dataset["order_share"].dims == ("block", "reference")
    assert record.labels(dataset, "reference") == ["cross", "random"]
    assert dataset["locality"].shape == (3, 4) and dataset.attrs["window"] == 4
    assert dataset.sizes["method"] == 1 and dataset.attrs["row_chance"] == pytest.approx(0.2)
    pooled = stage.stage_findings(attention, height, width, attrs={"stage": 1, "pool": 2})
    for name in ("order_share", "order_chance", "sequence_locality", "separation"):
        assert name not in pooled
    summary = tables.block_summary(pooled, "cross")
    assert list(summary.index) == ["0", "1", "2", "chance"]
    assert np.isnan(summary.loc["0", "preceding, own"])


# --- stored findings, report and command ---------------------------------------------------


def test_faithfulness_known_answers():
    """Areas of straight-line curves, their means and standard errors over the tested
    images; untested (NaN) images left out."""
    fractions = np.linspace(0.0, 0.9, 10)
    curves = np.full((4, 2, 2, 10), np.nan)
    curves[0, 0, 0] = 1 - fractions  # area: mean of 1 - f over 0..0.9 = 0.55
    curves[1, 0, 0] = 0.5  # 0.5
    curves[:2, 0, 1] = 0.9
    curves[:2, 1] = 0.25
    summary = metrics.faithfulness(curves, fractions)
    np.testing.assert_allclose(summary["most"], [0.525, 0.25])
    np.testing.assert_allclose(summary["least"], [0.9, 0.25])
    np.testing.assert_allclose(summary["most_error"], [0.025, 0.0], atol=1e-12)
    np.testing.assert_array_equal(summary["images"], [2, 2])


@pytest.fixture
def two_runs(small_run, tmp_path):
    """Two copies of the small run, the second labelled as trained with morton (its matrices
    are the cross model's: enough to exercise the cross-run order matrix), with stage 2
    marked pooled 2x2 (so that the order-dependent metrics are skipped there)."""
    cross, morton = tmp_path / "cross", tmp_path / "morton"
    shutil.copytree(small_run, cross)
    shutil.copytree(small_run, morton)
    zarr.open_group(morton, mode="r+").attrs["order"] = "morton"
    zarr.open_group(morton, path=stage_group(2), mode="r+").attrs.update(
        pool=2, full_grid_height=8, full_grid_width=8
    )
    return cross, morton


def stored_files(run):
    return {
        path: path.stat().st_mtime_ns
        for path in run.rglob("*")
        if path.is_file() and "findings" not in path.relative_to(run).parts
    }


def test_report_stores_findings_and_writes_tables_and_figures(two_runs, tmp_path, capsys):
    cross, morton = two_runs
    before = stored_files(cross)
    document = report([cross, morton], tmp_path / "report", seeds=2)
    assert document == tmp_path / "report" / "findings.md"
    assert stored_files(cross) == before  # only the findings group is written
    assert f"{cross}: findings stored" in capsys.readouterr().out

    stored = record.read_findings(open_run(cross), "cross")
    assert list(stored.stages) == [1, 2] and stored.order == "cross"
    assert stored.attrs["findings_version"] == record.FINDINGS_VERSION
    stage1 = stored.stages[1]
    assert record.labels(stage1, "reference") == [*stage.COMPARED_ORDERS, "random"]
    assert record.labels(stage1, "method") == ["pca", "tsne"]
    assert 0 < stage1["self_share"].values.min() and stage1["locality"].shape == (2, 8)
    assert "order_share" not in record.read_findings(open_run(morton), "m").stages[2]

    text = document.read_text()
    for heading in (
        "## Patch order across runs",
        "## cross: vmamba-micro, order cross",
        "### Early vs late",
        "### Stage 1: grid 8x8, window 8",
        "| block | self | row | column | row purity |",
        "Own order largest in",
        "Not computed: order-dependent metrics",
    ):
        assert heading in text
    for figure in ("locality-cross.png", "locality-morton.png", "order-matrix-stage1.png"):
        assert f"({figure})" in text
        with Image.open(tmp_path / "report" / figure) as image:
            assert image.width > 200 and image.height > 100
    assert not (tmp_path / "report" / "order-matrix-stage2.png").exists()  # one run only

    # The small run holds explanations of both its images: the perturbation test's summary.
    faithfulness = stored.faithfulness
    assert record.labels(faithfulness, "map") == ["rollout", "attribution", "random"]
    assert (faithfulness["images"].values == 2).all()
    assert ((faithfulness["most"] > 0) & (faithfulness["most"] <= 1)).all()
    assert "### Are the explanations faithful? (perturbation test)" in text
    assert "| map | most relevant first | least relevant first |" in text

    report([cross], tmp_path / "again", window=2, seeds=1)  # replaces the findings
    assert record.read_findings(open_run(cross), "cross").stages[1].attrs["window"] == 2


def test_command_line(small_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["findings", str(run), "--seeds", "1"])
    assert args.handler(args) == 0
    assert f"report: {tmp_path / 'findings' / 'findings.md'}" in capsys.readouterr().out
    args = parser.parse_args(["findings", str(tmp_path / "nowhere")])
    with pytest.raises(RunError, match="nowhere: no such run"):
        args.handler(args)
    with pytest.raises(ValueError, match="window must be at least 1"):
        report([run], tmp_path / "out", window=0)


# --- the view ------------------------------------------------------------------------------


def view_text(tab) -> str:
    """The markdown a run's tab shows: the tab is run_panel bound to the view's stage."""
    return tab.object()[0].object


def test_findings_view_shows_stored_findings_and_says_how_to_add_them(two_runs):
    cross, morton = two_runs
    stage.compute_run(cross, seeds=1)
    view = FindingsView([cross, morton])
    assert view.param.stage.objects == [1, 2]
    assert pn.panel(view).get_root().children
    assert view.across_runs().object == ""  # one run with findings: no order matrix
    assert "python -m compute findings" in view.tabs[1].object
    assert str(morton) in view.tabs[1].object
    text = view_text(view.tabs[0])
    assert "##### Stage 1: grid 8x8" in text and "Stage 2" not in text
    view.stage = 2
    assert "##### Stage 2: grid 4x4" in view_text(view.tabs[0])
    panel = run_panel(view.findings["cross"], 1)
    curves = panel[1]  # a figure per stored locality profile (grid, sequence)
    assert [type(pane) for pane in curves] == [pn.pane.HoloViews, pn.pane.HoloViews]

    stage.compute_run(morton, seeds=1)
    view = FindingsView([cross, morton])
    assert "Own order largest in" in view.across_runs().object


def test_findings_view_imports_no_torch():
    code = (
        "import sys; import mambapanel.views.findings; "
        "assert not {'torch', 'triton'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_vim_run_is_measured_against_the_routes_it_scans(demo_runs):
    """A Vim scans route 0 of its order and the reverse: "preceding" follows those two
    routes (for VMamba, all of the order's routes)."""
    found = record.read_findings(open_run(demo_runs / "vim-morton"), "vim-morton")
    dataset = found.stages[0]
    route = orders.single_route("morton", 8, 8).numpy()
    mask = metrics.preceding_mask(np.stack([route, route[::-1]]), 8)
    references = record.labels(dataset, "reference")
    chance = dataset["order_chance"].values[references.index("morton")]
    assert chance == pytest.approx(metrics.order_chance(mask))
    four_routes = metrics.preceding_mask(orders.routes("morton", 8, 8).numpy(), 8)
    assert chance != pytest.approx(metrics.order_chance(four_routes))


def test_own_order_first_counts_a_tie():
    def run(name, order, shares):
        dataset = xr.Dataset(
            {
                "order_share": (("block", "reference"), [shares]),
                "order_chance": ("reference", [0.1] * len(shares)),
            },
            coords={"block": [0], "reference": ["cross", "bidirectional", "morton"]},
        )
        return record.Findings(name, "m", order, {}, {0: dataset})

    runs = [
        run("tie", "bidirectional", [0.3, 0.3, 0.1]),
        run("own", "morton", [0.1, 0.2, 0.4]),
        run("other", "cross", [0.1, 0.2, 0.4]),
    ]
    assert tables.own_order_first(runs, 0) == (2, 3)
