"""The README's demo command: runs of the committed demo models through the Dask pipeline,
reduced, with findings, and reused when they exist."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from demo_runs import ORDERS, ROOT, run_demo

from compute import demo
from mambapanel.store import open_run

pytestmark = pytest.mark.slow


def stored_files(runs):
    """{path: (size, mtime)} of every stored array chunk and embedding of the runs."""
    return {
        path: (path.stat().st_size, path.stat().st_mtime_ns)
        for path in runs.rglob("*")
        if path.is_file() and "findings" not in path.parts
    }


def test_demo_runs_hold_the_demo_models_attention_and_embeddings(demo_runs):
    for order in ORDERS:
        tree = open_run(demo_runs / order)
        checkpoint = demo.checkpoint(order)
        assert tree.attrs["order"] == order
        assert tree.attrs["image_source"] == "demo" and tree.attrs["n_images"] == 4
        assert (
            tree.attrs["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        )
        assert tree.attrs["image_size"] == 64
        stage0 = tree["stage0"]
        assert stage0["attention"].shape == (4, 2, 256, 256)  # (image, block, query, key)
        assert list(stage0["embedding_inter"]["method"].values) == ["pca"]
    assert (demo_runs / "findings" / "findings.md").is_file()


def test_demo_reuses_complete_runs(demo_runs):
    before = stored_files(demo_runs)
    second = run_demo(demo_runs)
    for order in ORDERS:
        assert f"{demo_runs / order}: complete, reused" in second.stdout
    assert stored_files(demo_runs) == before


def test_demo_with_a_missing_checkpoint_names_it_and_the_script(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "compute", "demo", "--runs", str(tmp_path), "--orders", "snake",
         "--no-serve"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "vmamba-micro-snake.pth: no demo checkpoint for order 'snake'" in result.stderr
    assert "tools/train_demo.sh" in result.stderr


def test_demo_refuses_to_reuse_runs_of_another_size(demo_runs):
    result = subprocess.run(
        [sys.executable, "-m", "compute", "demo", "--runs", str(demo_runs), "--orders", "cross",
         "--n", "5", "--methods", "pca", "--no-serve"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{demo_runs / 'cross'}: a demo run of 4 images" in result.stderr
    assert "not of 5 images from vmamba-micro-cross.pth" in result.stderr
