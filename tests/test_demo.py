"""The README's demo command: runs of the committed demo models through the Dask pipeline,
reduced, with findings, and reused when they exist."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from demo_runs import NAMES, ROOT, run_demo

from compute import demo
from mambapanel.store import open_run, stage_group

pytestmark = pytest.mark.slow


def stored_files(runs):
    """{path: (size, mtime)} of every stored array chunk and embedding of the runs."""
    return {
        path: (path.stat().st_size, path.stat().st_mtime_ns)
        for path in runs.rglob("*")
        if path.is_file() and "findings" not in path.parts
    }


def test_demo_runs_hold_the_demo_models_attention_and_embeddings(demo_runs):
    shapes = {  # (image size, stage 0 as (image, block, query, key))
        "vmamba-micro": (64, (4, 2, 256, 256)),
        "vim-micro": (32, (4, 4, 64, 64)),
    }
    for name in NAMES:
        tree = open_run(demo_runs / name)
        checkpoint = demo.checkpoint(name)
        assert (tree.attrs["model"], tree.attrs["order"]) == demo.DEMO_MODELS[name]
        assert tree.attrs["image_source"] == "demo" and tree.attrs["n_images"] == 4
        assert (
            tree.attrs["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        )
        size, shape = shapes[tree.attrs["model"]]
        assert tree.attrs["image_size"] == size
        stage0 = tree[stage_group(0)]
        assert stage0["attention"].shape == shape
        assert list(stage0["embedding_inter"]["method"].values) == ["pca"]
        assert tree.attrs["explanations"] and tree["relevance"].shape[0] == 4
    assert (demo_runs / "findings" / "findings.md").is_file()


def test_demo_reuses_complete_runs(demo_runs):
    before = stored_files(demo_runs)
    second = run_demo(demo_runs)
    for name in NAMES:
        assert f"{demo_runs / name}: complete, reused" in second.stdout
    assert stored_files(demo_runs) == before


def test_demo_with_an_unknown_model_names_the_demo_models(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "compute", "demo", "--runs", str(tmp_path), "--orders", "snake",
         "--no-serve"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "no demo model 'snake'; the demo models: cross, diagonal" in result.stderr


def test_demo_refuses_to_reuse_runs_of_another_size(demo_runs):
    result = subprocess.run(
        [sys.executable, "-m", "compute", "demo", "--runs", str(demo_runs), "--orders", "cross",
         "--n", "5", "--methods", "pca", "--no-serve"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{demo_runs / 'cross'}: a demo run of 4 images" in result.stderr
    assert "not of 5 images from vmamba-micro-cross.pth" in result.stderr


def test_a_missing_demo_checkpoint_names_the_file_and_the_script(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "CHECKPOINTS", tmp_path)
    with pytest.raises(demo.DemoError, match=r"vim-micro-morton\.pth: no demo checkpoint for"):
        demo.checkpoint("vim-morton")
    with pytest.raises(demo.DemoError, match=r"tools/train_demo\.sh"):
        demo.checkpoint("cross")
