"""Runs damaged on disk: a chunk file deleted or cut short, a ``zarr.json`` that is not
metadata. Each read that meets the damage says which run, which array and what is wrong;
the view that made the read shows it, and the rest of the dashboard keeps working."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import panel as pn
import pytest
from test_views import _rendered

from mambapanel.store import RunError, check_run, stage_group
from mambapanel.views import Explorer, RunData, dashboard
from mambapanel.views.findings import FindingsView

MEAN_CHUNK = Path(stage_group(1), "attention_mean/c/0/0/0")  # block 0: every query row of it
IMAGE_CHUNK = Path(stage_group(1), "attention/c/0/0/0/0")  # image 0, block 0
INTRA_CHUNK = Path(stage_group(1), "embedding_intra/c/0/0/0/0")  # method 0 (pca), block 0


def damaged(small_run: Path, where: Path, name: str, damage) -> Path:
    run = where / name
    shutil.copytree(small_run, run)
    damage(run)
    return run


@pytest.fixture(scope="module")
def runs(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the small run, each damaged in one place."""
    where = tmp_path_factory.mktemp("damaged")

    def cut(path: Path) -> None:
        path.write_bytes(path.read_bytes()[:100])

    return {
        "deleted": damaged(small_run, where, "deleted", lambda run: (run / MEAN_CHUNK).unlink()),
        "truncated": damaged(small_run, where, "truncated", lambda run: cut(run / IMAGE_CHUNK)),
        "metadata": damaged(
            small_run, where, "metadata",
            lambda run: (run / stage_group(1) / "attention_mean/zarr.json").write_text(""),
        ),
        "root": damaged(small_run, where, "root", lambda run: (run / "zarr.json").write_text("{")),
        "embedding": damaged(
            small_run, where, "embedding", lambda run: (run / INTRA_CHUNK).unlink()
        ),
        "inter": damaged(
            small_run, where, "inter",
            lambda run: (run / stage_group(1) / "embedding_inter/zarr.json").write_text("[1,"),
        ),
    }  # fmt: skip


def test_each_read_that_meets_damage_names_the_run_the_array_and_the_problem(runs, small_run):
    chunk = (small_run / IMAGE_CHUNK).stat().st_size
    with pytest.raises(RunError) as deleted:
        RunData(runs["deleted"]).attention_row(1, 0, (2, 5))
    assert str(deleted.value) == (
        f"run deleted ({runs['deleted']}): {stage_group(1)}/attention_mean: chunk file "
        f"{MEAN_CHUNK} is missing (block 0, query 21 reads NaN, the fill value)"
    )
    with pytest.raises(RunError) as truncated:
        RunData(runs["truncated"]).image_attention_row(1, 0, 0, (2, 5))
    message = str(truncated.value)
    assert message.startswith(
        f"run truncated ({runs['truncated']}): {stage_group(1)}/attention: image 0, block 0, "
        "query 21 cannot be read ("
    )
    assert message.endswith(f"; chunk file {IMAGE_CHUNK}: 100 bytes, {chunk} bytes expected")
    with pytest.raises(
        RunError, match=rf"{stage_group(1)}/attention_mean/zarr\.json: damaged metadata"
    ):
        RunData(runs["metadata"]).attention_row(1, 0, (2, 5))
    with pytest.raises(RunError, match=r"root/zarr\.json: damaged metadata.*JSONDecodeError"):
        check_run(runs["root"])
    # What is not damaged reads as before.
    np.testing.assert_array_equal(
        RunData(runs["deleted"]).attention_row(1, 1, (2, 5)),
        RunData(small_run).attention_row(1, 1, (2, 5)),
    )


@pytest.mark.parametrize(("name", "block_1_whole"), [("deleted", True), ("metadata", False)])
def test_a_damaged_attention_row_is_named_above_the_patch_view(runs, name, block_1_whole):
    explorer = Explorer(runs[name], stage=1, block=0, method="pca")
    _rendered(explorer)
    side = explorer.sides[0]
    side.patches.tap.event(x=5, y=2)  # a click on patch (2, 5)
    assert explorer.patch == (2, 5)
    problems = side.patches.problems
    assert problems.pane.visible
    assert str(runs[name]) in problems.pane.object
    assert f"{stage_group(1)}/attention_mean" in problems.pane.object
    assert side.patches._content()[1] == "block 0: attention from (2, 5) cannot be read"
    explorer.block = 1  # one chunk deleted: block 1 is whole; damaged metadata: it is not
    assert problems.pane.visible is not block_1_whole
    # The image view and the scatterplot keep working.
    assert side.image.attention().shape == (8, 8)
    everything = np.array([[-1e9, -1e9], [1e9, -1e9], [1e9, 1e9], [-1e9, 1e9]])
    side.scatter.lasso.event(geometry=everything)
    assert len(explorer.selection) == 64
    assert side.patches._content()[1] == "stage 1: 64 selected patches"
    assert not problems.pane.visible  # the selection is shown: no attention is read


def test_a_damaged_image_chunk_is_named_above_the_image_view(runs):
    explorer = Explorer(runs["truncated"], stage=1, block=0, method="pca", patch=(2, 5))
    side = explorer.sides[0]
    image = side.image
    layer = image._attention_layer()
    assert image.problems.pane.visible
    assert f"{stage_group(1)}/attention: image 0, block 0" in image.problems.pane.object
    assert layer.opts["alpha"] == 0  # nothing drawn over the image
    assert not side.patches.problems.pane.visible  # the mean attention is whole
    explorer.image = 1
    image._attention_layer()
    assert not image.problems.pane.visible


def test_a_dashboard_whose_first_view_meets_damage_renders(runs):
    """A page opened on a damaged patch (a link to it) draws, with the message: a read that
    raised while the page was rendered left it on its loading indicator."""
    explorer = Explorer(runs["deleted"], stage=1, block=0, method="pca", patch=(2, 5))
    document = _rendered(explorer)
    assert document.select_one({"name": "patch-view"}).title.text.endswith("cannot be read")
    assert explorer.sides[0].patches.problems.pane.visible


def test_a_run_with_damaged_root_metadata_is_named_in_the_page(runs):
    page = dashboard([str(runs["root"])])
    message = page.objects[1].object
    assert f"{runs['root'] / 'zarr.json'}: damaged metadata" in message
    assert "Expecting" in message  # what the JSON parser found


def test_the_findings_tab_names_a_run_that_cannot_be_opened(runs, small_run):
    view = FindingsView({"good": small_run, "root": runs["root"]})
    assert view.stage is None  # neither run has findings
    assert "python -m compute findings" in view.tabs[0].object
    assert "zarr.json: damaged metadata" in view.tabs[1].object
    assert view.tabs[1].alert_type == "danger"


@pytest.mark.parametrize(
    ("name", "block", "expected"),
    [
        ("embedding", 0, f"{stage_group(1)}/embedding_intra: chunk file {INTRA_CHUNK} is missing"),
        ("inter", None, f"{stage_group(1)}/embedding_inter/zarr.json: damaged metadata"),
    ],
)
def test_a_damaged_embedding_is_named_in_place_of_the_scatterplot(runs, name, block, expected):
    explorer = Explorer(runs[name], stage=1, block=block, method="pca")
    document = _rendered(explorer)
    side = explorer.sides[0]
    shown = side.scatter._plot.objects
    assert [type(pane) for pane in shown] == [pn.pane.Alert]
    assert shown[0].alert_type == "danger"
    assert str(runs[name]) in shown[0].object
    assert expected in shown[0].object
    assert document.select_one({"name": "scatterplot"}) is None
    # Without points nothing is selected, and clearing or selecting does not fail.
    side.scatter.clear()
    side.scatter.select_patches([(0, 0)])
    assert explorer.selection == []
    # The patch and image views work: a click on the patch view opens a patch.
    explorer.block = 1
    side.patches.tap.event(x=5, y=2)
    assert explorer.patch == (2, 5)
    assert side.patches._content()[1] == "block 1: attention from (2, 5)"
    assert side.image.attention().shape == (8, 8)
    assert type(side.scatter._plot.objects[0]) is pn.pane.HoloViews  # block 1's is whole
    explorer.block = block
    assert type(side.scatter._plot.objects[0]) is pn.pane.Alert


def test_a_run_that_cannot_be_opened_is_named_escaped(runs, small_run):
    """Names and messages shown in the page are text: a run named like markup stays text."""
    name = "<img src=x onerror=alert(1)>"
    explorer = Explorer({"good": small_run, name: runs["root"]}, stage=1, block=0)
    explorer.run = name
    assert explorer.run == "good"  # the last run shown comes back
    shown = explorer.run_problem.object
    assert explorer.run_problem.visible
    assert "<img" not in shown and "&lt;img src=x onerror=alert(1)&gt;" in shown
    assert "zarr.json: damaged metadata" in shown
    explorer.param.update(compare="runs", run_b=name)  # beside the good run: named there
    beside = explorer.sides[1].problem
    assert beside.visible
    assert "<img" not in beside.object and "&lt;img src=x onerror=alert(1)&gt;" in beside.object
