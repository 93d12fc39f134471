"""The run store: schema and chunks as read by xarray, region writes, the exact mean at
finalisation, resumable bookkeeping, and the errors of open_run."""

import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import zarr

from mambapanel import store
from mambapanel.store import stage_group

LAYOUTS = [store.StageLayout(0, 2, (4, 4)), store.StageLayout(1, 1, (3, 3), pool=2)]
IMAGES = [("a.png", "cat"), ("b.png", "cat"), ("c/d.png", "dog"), ("e.png", ""), ("f.png", "")]


def make_run(path, dtype="float16", **attrs):
    store.create_run(
        path,
        images=IMAGES,
        layouts=LAYOUTS,
        dtype=dtype,
        shard_size=2,
        attrs={"model": "m", "order": "cross", "checkpoint_sha256": None, **attrs},
    )
    return path


def fill_run(path, seed=0):
    """Write every shard with random matrices; return them, r(image, block, L, L) per stage."""
    rng = np.random.default_rng(seed)
    written = {
        layout.stage: rng.standard_normal(
            (len(IMAGES), layout.n_blocks, layout.patches, layout.patches)
        ).astype(np.float32)
        for layout in LAYOUTS
    }
    for shard in range(store.n_shards(len(IMAGES), 2)):
        images = store.shard_images(store.read_run(path).attrs, shard)
        for stage, matrices in written.items():
            for block in range(matrices.shape[1]):
                store.write_attention(path, stage, block, images.start, matrices[images, block])
        sums = {stage: m[images].sum(0, dtype=np.float64) for stage, m in written.items()}
        thumbnails = np.full((len(images), 64, 64, 3), shard, np.uint8)
        store.write_shard(path, shard, thumbnails, sums)
    return written


def test_schema_as_xarray_reads_it(tmp_path):
    path = make_run(tmp_path / "run")
    tree = store.open_run(path, allow_incomplete=True)
    assert tree.attrs["format"] == store.FORMAT and tree.attrs["complete"] is False
    assert tree.attrs["stages"] == [0, 1] and tree.attrs["pool"] == [1, 2]
    assert list(tree["image_id"].values) == [i for i, _ in IMAGES]
    assert list(tree["label"].values) == [label for _, label in IMAGES]
    assert set(tree.coords) == {"image", "image_id", "label"}
    assert tree["thumbnail"].dims == ("image", "y", "x", "rgb")
    assert tree["thumbnail"].dtype == np.uint8 and tree["done"].dtype == bool
    assert not tree["done"].values.any()
    stage1 = tree[stage_group(1)]
    assert stage1.attrs == {
        "stage": 1,
        "n_blocks": 1,
        "pool": 2,
        "grid_height": 2,
        "grid_width": 2,
        "full_grid_height": 3,
        "full_grid_width": 3,
    }
    attention = stage1["attention"]
    assert attention.dims == ("image", "block", "query", "key")
    assert attention.dtype == np.float16 and attention.encoding["chunks"] == (1, 1, 4, 4)
    assert np.isnan(attention.values).all()  # nothing written yet
    # The root's index coordinate `image` is inherited (image_id and label stay at the root).
    assert {"image", "query_row", "query_col", "key_row", "key_col"} <= set(attention.coords)
    assert list(attention["key_row"].values) == [0, 0, 1, 1]
    assert list(attention["key_col"].values) == [0, 1, 0, 1]
    assert stage1["attention_mean"].dims == ("block", "query", "key")
    assert stage1["attention_mean"].dtype == np.float32


def test_one_query_row_of_attention_mean_is_one_chunk(tmp_path):
    large = store.StageLayout(0, 2, (48, 48))  # L = 2304: a block is 20 MiB in float32
    store.create_run(
        tmp_path / "run", images=IMAGES, layouts=[large], dtype="float32", shard_size=2, attrs={}
    )
    mean = zarr.open_array(tmp_path / "run", path=f"{stage_group(0)}/attention_mean")
    rows = store.MEAN_CHUNK_BYTES // (4 * 2304)
    assert mean.chunks == (1, rows, 2304)  # a row never straddles chunks: it spans all keys
    small = zarr.open_array(make_run(tmp_path / "small"), path=f"{stage_group(0)}/attention_mean")
    assert small.chunks == (1, 16, 16)  # a small block is one chunk


def test_written_regions_done_flags_and_exact_mean(tmp_path):
    path = make_run(tmp_path / "run")
    assert store.pending_shards(path) == [0, 1, 2]
    written = fill_run(path)
    assert store.pending_shards(path) == []
    store.finalise(path)
    store.finalise(path)  # a repeat (a kill after the first) changes nothing
    tree = store.open_run(path)
    assert tree.attrs["complete"] is True and tree["done"].values.all()
    assert list(tree["thumbnail"].values[:, 0, 0, 0]) == [0, 0, 1, 1, 2]
    for layout in LAYOUTS:
        group = tree[stage_group(layout.stage)]
        assert "partial_sum" not in group and "shard" not in group.dims
        np.testing.assert_array_equal(
            group["attention"].values, written[layout.stage].astype(np.float16)
        )
        exact = written[layout.stage].astype(np.float64).mean(0).astype(np.float32)
        np.testing.assert_array_equal(group["attention_mean"].values, exact)


# Runs `store.finalise(RUN)` and SIGKILLs itself right after the removal of the scratch sums
# has deleted the first `partial_sum/zarr.json`: from then on zarr no longer sees that
# directory as an array, whatever chunks it still holds.
KILLED_IN_CLEAN_UP = """
import os, signal, sys
from mambapanel import store

unlink = os.unlink

def unlink_then_die(name, *args, dir_fd=None, **kwargs):
    unlink(name, *args, dir_fd=dir_fd, **kwargs)
    folder = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else name
    if name.endswith("zarr.json") and "partial_sum" in folder:
        os.kill(os.getpid(), signal.SIGKILL)

os.unlink = unlink_then_die
store.finalise(sys.argv[1])
"""


def test_scratch_sums_left_by_a_kill_during_their_removal_go_at_the_next_open_or_run(tmp_path):
    path = make_run(tmp_path / "run")
    written = fill_run(path)
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_CLEAN_UP, str(path)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert zarr.open_group(path, mode="r").attrs["complete"]  # the mean was written first
    stage0 = path / stage_group(0) / "partial_sum"
    assert stage0.is_dir() and not (stage0 / "zarr.json").exists()
    assert (path / stage_group(1) / "partial_sum" / "zarr.json").exists()  # not reached
    rerun = shutil.copytree(path, tmp_path / "rerun")

    def assert_clean_and_exact(path):
        assert not list(path.glob("stage*/partial_sum"))
        tree = store.open_run(path)  # no zarr warning (an error here) about the left-overs
        for layout in LAYOUTS:
            exact = written[layout.stage].astype(np.float64).mean(0).astype(np.float32)
            np.testing.assert_array_equal(tree[stage_group(layout.stage)]["attention_mean"], exact)

    store.open_run(path)  # what a dashboard or `compute reduce` does first
    assert_clean_and_exact(path)
    store.finalise(rerun)  # what the extraction command run again ends with
    assert_clean_and_exact(rerun)


def test_finalise_refuses_a_run_with_images_not_done(tmp_path):
    path = make_run(tmp_path / "run")
    with pytest.raises(store.RunError, match="5 of 5 images are not done"):
        store.finalise(path)


def test_compatible_and_incompatible_restarts(tmp_path):
    path = make_run(tmp_path / "run", checkpoint="/a.pth", checkpoint_sha256="aaa")
    # The checkpoint's path may change (a moved file); its hash may not.
    store.check_compatible(path, {"model": "m", "order": "cross", "checkpoint": "/moved/a.pth"})
    asked = {"order": "morton", "checkpoint": "/b.pth", "checkpoint_sha256": "bbb"}
    with pytest.raises(store.RunError) as err:
        store.check_compatible(path, asked)
    message = str(err.value)
    assert "order: the run has 'cross', asked for 'morton'" in message
    assert "'aaa' (checkpoint /a.pth), asked for 'bbb' (checkpoint /b.pth)" in message


def test_a_run_that_calls_its_channel_mode_reduce_reads_as_channels(tmp_path):
    """Runs of mambapanel 0.1 stored the channel mode as ``reduce``; they open and resume
    under today's name, ``channels``."""
    path = make_run(tmp_path / "run", reduce="absmean")
    assert "channels" not in zarr.open_group(path, mode="r").attrs
    assert store.read_run(path).attrs["channels"] == "absmean"
    assert store.open_run(path, allow_incomplete=True).attrs["channels"] == "absmean"
    store.check_compatible(path, {"channels": "absmean"})
    with pytest.raises(store.RunError, match="channels: the run has 'absmean', asked for 'mean'"):
        store.check_compatible(path, {"channels": "mean"})


def test_create_refuses_an_existing_path_and_clears_a_killed_creation(tmp_path):
    (tmp_path / ".run.creating" / "junk").mkdir(parents=True)
    make_run(tmp_path / "run")
    assert not (tmp_path / ".run.creating").exists()
    with pytest.raises(store.RunError, match="already exists"):
        make_run(tmp_path / "run")


def test_open_run_errors_name_the_path_and_what_is_wrong(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(store.RunError, match=f"{missing}: no such run"):
        store.open_run(missing)
    (tmp_path / "plain").mkdir()
    with pytest.raises(store.RunError, match="plain: not a run \\(not a zarr store"):
        store.open_run(tmp_path / "plain")
    zarr.open_group(tmp_path / "other", mode="w", attributes={"format": "something"})
    with pytest.raises(store.RunError, match="attribute 'format' is 'something'"):
        store.open_run(tmp_path / "other")

    path = make_run(tmp_path / "run")
    with pytest.raises(store.RunError, match="incomplete run \\(0 of 5 images done\\)"):
        store.open_run(path)
    fill_run(path)
    store.finalise(path)
    assert isinstance(store.open_run(path), xr.DataTree)

    newer = tmp_path / "newer"
    shutil.copytree(path, newer)
    metadata = json.loads((newer / "zarr.json").read_text())
    metadata["attributes"]["format_version"] = 99
    (newer / "zarr.json").write_text(json.dumps(metadata))
    with pytest.raises(store.RunError, match=r"format_version 99 .*reads format_version 1"):
        store.open_run(newer)

    shutil.rmtree(path / stage_group(1) / "attention_mean")
    with pytest.raises(store.RunError, match="group 'stage1' has no variable 'attention_mean'"):
        store.open_run(path)
    shutil.rmtree(path / stage_group(1))
    with pytest.raises(store.RunError, match="no group 'stage1'"):
        store.open_run(path)


def test_bytes_needed_counts_every_array():
    needed = store.bytes_needed(LAYOUTS, n_images=5, dtype="float16", shard_size=2)
    assert needed[0] == {
        "attention": 5 * 2 * 16**2 * 2,
        "sketch": 0,
        "attention_mean": 2 * 16**2 * 4,
        "partial_sum": 3 * 2 * 16**2 * 8,
    }
    assert needed[1]["attention"] == 5 * 1 * 4**2 * 2
    # Sketched: matrices of the first 2 images only, and a sketch of min(k, L²) per block.
    sketched = store.bytes_needed(
        LAYOUTS, n_images=5, dtype="float16", shard_size=2, keep_images=2, sketch_dim=64
    )
    assert sketched[0]["attention"] == 2 * 2 * 16**2 * 2
    assert sketched[0]["sketch"] == 5 * 2 * 64 * 4  # 16² = 256 features > 64
    assert sketched[1]["sketch"] == 5 * 1 * 4**2 * 4  # 16 features <= 64: kept whole
