"""Runs on an object store: a real S3-compatible server (moto's standalone server, started
here) addressed by --storage-options or by fsspec's environment variables, the workers of a
real LocalCluster writing their regions directly; a kill -9 resumed; unknown schemes refused.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import s3fs
import zarr
from test_data import write_image

from compute.__main__ import main
from mambapanel import store
from mambapanel.storage import location
from mambapanel.store import stage_group
from mambapanel.views.data import RunData

BUCKET = "runs"
EXTRACT = ["extract", "--model", "vmamba-micro", "--size", "64", "--stages", "2,3",
           "--faithfulness-images", "2", "--batch-size", "2", "--shard-size", "2"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """Storage options of a fresh S3-compatible server with one bucket."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto's server did not start")
                time.sleep(0.1)
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}
        s3fs.S3FileSystem(**options).mkdir(BUCKET)
        yield options
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for index in range(6):
        write_image(root / "a" / f"{index}.png", size=(70, 60), seed=index)
    return root


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, images):
    """The same run on a local disk: what every run on S3 must equal, bit for bit."""
    out = tmp_path_factory.mktemp("local") / "run"
    assert main([*EXTRACT, "--images", str(images), "--out", str(out)]) == 0
    return out


def fsspec_environment(options):
    """fsspec's own configuration variables: what a machine can set instead of options."""
    return {
        **os.environ,
        **{f"FSSPEC_S3_{name.upper()}": value for name, value in options.items()},
    }


def assert_same_run(url, options, local):
    remote = store.open_run(location(url, options))
    here = store.open_run(local)
    for name in ("thumbnail", "done", "predicted", "relevance", "faithfulness"):
        np.testing.assert_array_equal(remote[name].values, here[name].values)
    for stage in (stage_group(2), stage_group(3)):
        for name in ("attention", "attention_mean"):
            np.testing.assert_array_equal(remote[stage][name].values, here[stage][name].values)
        assert "partial_sum" not in remote[stage]


@pytest.mark.slow
def test_a_run_on_s3_is_written_by_the_workers_reduced_and_reported_there(
    s3, images, local_run, tmp_path, monkeypatch
):
    url = f"s3://{BUCKET}/run"
    monkeypatch.chdir(tmp_path)  # where a URL taken for a path would have become a folder
    options = ["--storage-options", json.dumps(s3)]
    assert main([*EXTRACT, "--images", str(images), "--out", url, *options]) == 0
    assert not (tmp_path / "s3:").exists()
    listed = s3fs.S3FileSystem(**s3).ls(f"{BUCKET}/run", detail=False, refresh=True)
    assert f"{BUCKET}/run/zarr.json" in listed and f"{BUCKET}/run/stage2" in listed
    assert_same_run(url, s3, local_run)

    # The environment instead of options, as on a machine configured for the store.
    reduced = subprocess.run(
        [sys.executable, "-m", "compute", "reduce", url, "--methods", "pca"],
        env=fsspec_environment(s3),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reduced.returncode == 0, reduced.stderr
    assert main(["findings", url, *options, "--out", str(tmp_path / "report")]) == 0
    tree = store.open_run(location(url, s3))
    assert list(tree[stage_group(2)]["method"].values) == ["pca"]
    assert "findings" in tree.children and (tmp_path / "report" / "findings.md").exists()
    assert url in (tmp_path / "report" / "findings.md").read_text()
    served = RunData(location(url, s3))  # what the dashboard reads
    assert served.name == "run" and served.stages == [2, 3]
    pca = tree[stage_group(2)]["embedding_inter"].sel({"method": "pca"}).values
    np.testing.assert_array_equal(served.inter_embedding(2, "pca").x, pca[..., 0].ravel())
    np.testing.assert_array_equal(served.thumbnail(1), tree["thumbnail"].values[1])


@pytest.mark.slow
def test_a_run_on_s3_killed_and_resumed_equals_an_uninterrupted_one(s3, images, local_run):
    url = f"s3://{BUCKET}/killed"
    command = [sys.executable, "-m", "compute", *EXTRACT, "--images", str(images), "--out", url,
               "--storage-options", json.dumps(s3)]  # fmt: skip
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    where = location(url, s3)

    def done() -> int:
        try:
            return int(zarr.open_array(where.zarr_store(), path="done", mode="r")[...].sum())
        except (FileNotFoundError, zarr.errors.BaseZarrError, KeyError):
            return 0

    deadline = time.monotonic() + 180
    while done() == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 0 < done() < 6, "the kill must fall between the first image done and the last"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(url, s3, local_run)


def test_a_creation_killed_on_s3_reads_as_no_run_and_is_built_anew(s3, monkeypatch):
    """An object store cannot rename a folder into place: a killed creation leaves a root
    without 'format', which is no run, and the next creation starts again."""
    where = location(f"s3://{BUCKET}/half", s3)
    layouts = [store.StageLayout(0, 1, (2, 2))]
    arguments = dict(images=[("a.png", "")], layouts=layouts, dtype="float32", shard_size=1)
    attrs = {"model": "m", "order": "cross", "checkpoint_sha256": None}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_create_stage", killed)
    with pytest.raises(KeyboardInterrupt):
        store.create_run(where, attrs=attrs, **arguments)
    with pytest.raises(store.RunError, match="not a run yet \\(its creation was interrupted\\)"):
        store.check_run(where)
    monkeypatch.undo()
    store.create_run(where, attrs=attrs, **arguments)
    assert store.read_run(where).attrs["n_images"] == 1
    with pytest.raises(store.RunError, match="already exists; a new run needs a new URL"):
        store.create_run(where, attrs=attrs, **arguments)


def test_unknown_schemes_and_missing_runs_are_refused_by_name(s3, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*EXTRACT, "--out", "ftp://host/run"]) == 2
    assert "ftp://host/run: unknown URL scheme 'ftp'; a run is a local path or a URL of" in (
        capsys.readouterr().err
    )
    assert main(["reduce", "http://host/run"]) == 2
    assert "unknown URL scheme 'http'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert main(["reduce", f"s3://{BUCKET}/nothing", "--storage-options", json.dumps(s3)]) == 2
    assert f"s3://{BUCKET}/nothing: no such run (no zarr.json at that URL)" in (
        capsys.readouterr().err
    )
