"""Every step on a real Dask cluster: one GPU per worker, torch threads and malloc
thresholds set and given back, workers that lack shared storage named, a lost scheduler
reported in one line with the command that resumes, and reduce and findings computed on
the workers."""

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from distributed import Client, LocalCluster, get_task_stream
from test_data import write_image
from test_extract import count_done

from compute import demo
from compute.__main__ import main
from compute.cluster import LOCAL_HTTP, WORKER_PLUGIN, connect, gpu_cluster
from mambapanel import store
from mambapanel.errors import OptionError
from mambapanel.findings.record import read_findings
from mambapanel.randomized_pca import pca
from mambapanel.store import stage_group

DASK = Path(sys.executable).parent / "dask"
# A mount namespace of a worker's own, to hide folders from it; as root, or else in a user
# namespace of its own.
HIDE = ["unshare", "--mount", "--propagation", "private"]
if os.geteuid() != 0:
    HIDE.append("--map-root-user")


def test_a_gpu_cluster_gives_each_worker_its_own_device():
    """The local cluster of --device cuda, started here without GPUs: each worker process
    sees the one device named for it, before torch is imported there."""
    with gpu_cluster(2, ["3", "5"]) as cluster, Client(cluster) as client:
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(seen.values()) == ["3", "5"]
    with pytest.raises(OptionError, match=r"one worker per GPU, and this machine shows 2"):
        gpu_cluster(3, ["0", "1"])


def big_malloc_is_mapped() -> bool:
    """Whether glibc serves a 4 MiB malloc from a mapping of its own (mallinfo2's count of
    mapped chunks): so with a fixed 128 KiB threshold (as Dask's nanny leaves it), not with
    the 32 MiB that WorkerSettings sets."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                         "fsmblks", "uordblks", "fordblks", "keepcost")
        ]  # fmt: skip

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    before = libc.mallinfo2().hblks
    pointer = libc.malloc(4 * 2**20)
    mapped = libc.mallinfo2().hblks > before
    libc.free(ctypes.c_void_p(pointer))
    return mapped


def fragment_the_heap() -> tuple[int, object]:
    """Frees 25 blocks of 8 MiB (filled: resident) under a small block that stays (the
    result, held by the worker): glibc keeps that memory unless it is trimmed. The resident
    set while they were held, and the small block."""
    import numpy as np
    import psutil

    blocks = [np.ones(2**20) for _ in range(25)]
    held = np.ones(16)
    resident = psutil.Process().memory_info().rss
    del blocks
    return resident, held


def resident_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def test_torch_threads_are_pinned_under_one_name_and_given_back_when_the_client_leaves():
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=LOCAL_HTTP
        ) as cluster,
        Client(cluster) as outside,
    ):
        outside.run(torch.set_num_threads, 3)  # the workers' own setting
        assert outside.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").popitem()[1] == "65536"
        assert outside.run(big_malloc_is_mapped).popitem()[1]  # the nanny's thresholds

        def plugins():
            return outside.run_on_scheduler(
                lambda dask_scheduler: sorted(dask_scheduler.worker_plugins)
            )

        before = plugins()  # distributed's own (shuffle)
        for _ in range(2):  # a client after another registers it anew
            with connect(cluster.scheduler_address) as client:
                assert set(client.run(torch.get_num_threads).values()) == {1}
                assert not any(client.run(big_malloc_is_mapped).values())
                # ... and the memory a task frees goes back to the system when it ends
                held = client.submit(fragment_the_heap, pure=False)
                peak = held.result()[0]
                after = client.submit(resident_bytes, pure=False).result()
                assert peak - after > 150 * 2**20, (peak, after)
                del held
                assert plugins() == sorted([*before, WORKER_PLUGIN])
                with connect(cluster.scheduler_address):  # a client beside it: no second one
                    assert plugins() == sorted([*before, WORKER_PLUGIN])
                # ... and its leaving leaves the first client's workers pinned
                assert set(client.run(torch.get_num_threads).values()) == {1}
                assert plugins() == sorted([*before, WORKER_PLUGIN])
            assert set(outside.run(torch.get_num_threads).values()) == {3}
            assert all(outside.run(big_malloc_is_mapped).values())  # given back
            assert plugins() == before


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Processes:
    """Scheduler and worker processes of a test, ended (by their ids) when it ends."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def scheduler(self, port: int) -> str:
        command = [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                   "--dashboard-address", LOCAL_HTTP]  # fmt: skip
        self.started.append(subprocess.Popen(command, stderr=subprocess.DEVNULL))
        address = f"tcp://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return address
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"no scheduler listening at {address}")

    def worker(self, address: str, name: str, hidden: list[Path] = ()) -> subprocess.Popen:
        """A worker; ``hidden`` folders are covered, for it alone, by an empty file system
        in a mount namespace of its own: as on a machine without shared storage."""
        command = [str(DASK), "worker", address, "--name", name, "--nthreads", "1",
                   "--dashboard-address", LOCAL_HTTP, "--host", "127.0.0.1"]  # fmt: skip
        if hidden:
            mounts = " && ".join(f"mount -t tmpfs none {shlex.quote(str(p))}" for p in hidden)
            command = [*HIDE, "sh", "-c", f"{mounts} && exec {shlex.join(command)}"]
        process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        self.started.append(process)
        return process

    def wait_for_workers(self, address: str, count: int) -> None:
        with Client(address) as client:
            client.wait_for_workers(count, timeout=60)

    def end(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def processes():
    started = Processes()
    yield started
    started.end()


@pytest.mark.slow
def test_a_worker_without_shared_storage_is_named_and_checkpoints_travel_by_content(
    tmp_path, processes, capsys
):
    probe = subprocess.run([*HIDE, "true"], capture_output=True, text=True)
    assert probe.returncode == 0, f"{shlex.join(HIDE)} (util-linux) is needed: {probe.stderr}"
    shared, private, vault = (tmp_path / name for name in ("shared", "private", "vault"))
    for folder in (shared, private, vault):
        folder.mkdir()
    checkpoint = vault / "cross.pth"  # only this machine sees it: the workers get its bytes
    shutil.copy(demo.checkpoint("cross"), checkpoint)
    images = private / "digits"
    for index in range(4):
        write_image(images / "a" / f"{index}.png", size=(40, 40), seed=index)
    address = processes.scheduler(free_port())
    sees_all = processes.worker(address, "sees-all")
    processes.worker(address, "remote", hidden=[private, vault])
    processes.wait_for_workers(address, 2)

    command = ["extract", "--model", "vmamba-micro", "--checkpoint", str(checkpoint),
               "--images", str(images), "--size", "32", "--stages", "3", "--no-explanations",
               "--shard-size", "1", "--scheduler", address]  # fmt: skip
    assert main([*command, "--out", str(private / "run")]) == 2
    error = capsys.readouterr().err
    assert "the workers need shared storage at the same path as this machine" in error
    assert f"({'remote'}) cannot see {private / 'run' / 'zarr.json'} (the run), {images} " in error
    assert "sees-all" not in error and str(checkpoint) not in error

    # Images and run on shared storage, the checkpoint still only here: the remote worker,
    # now the only one, computes every shard from the checkpoint's bytes.
    sees_all.kill()
    shutil.move(images, shared / "digits")
    command[command.index(str(images))] = str(shared / "digits")
    assert main([*command, "--out", str(shared / "run")]) == 0
    run = store.open_run(shared / "run")
    assert (
        run.attrs["checkpoint"] == str(checkpoint)
        and np.isfinite(run[stage_group(3)]["attention"].values).all()
    )


@pytest.mark.slow
def test_a_lost_scheduler_ends_the_client_in_one_line_that_says_how_to_resume(tmp_path, processes):
    for index in range(6):
        write_image(tmp_path / "images" / f"{index}.png", size=(50, 50), seed=index)
    port = free_port()
    address = processes.scheduler(port)
    worker = processes.worker(address, "w")
    processes.wait_for_workers(address, 1)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "compute", "extract", "--model", "vmamba-micro",
               "--images", str(tmp_path / "images"), "--size", "96", "--batch-size", "1",
               "--shard-size", "1", "--out", str(out), "--scheduler", address]  # fmt: skip
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while count_done(out) == 0 and client.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    processes.started[0].send_signal(signal.SIGKILL)  # the scheduler
    _, error = client.communicate(timeout=120)
    assert client.returncode == 2, error
    assert "Traceback" not in error
    (line,) = [text for text in error.splitlines() if text.startswith("error:")]
    assert line.startswith(f"error: lost the Dask scheduler {address} (")
    resume = line.split("resume with: ", 1)[1]
    assert shlex.split(resume)[:3] == ["python", "-m", "compute"]
    assert shlex.split(resume)[3:] == command[3:]

    worker.kill()
    processes.scheduler(port)
    processes.worker(address, "again")
    processes.wait_for_workers(address, 1)
    resumed = subprocess.run(
        [sys.executable, *shlex.split(resume)[1:]], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert store.read_run(out).attrs["complete"]


@pytest.fixture
def two_runs(small_run, tmp_path):
    """Two copies of the session's small run, without embeddings or findings."""
    copies = []
    for name in ("here", "there"):
        copy = tmp_path / name
        shutil.copytree(small_run, copy)
        for stage in (1, 2):
            for variable in ("embedding_inter", "embedding_intra", "method", "xy"):
                shutil.rmtree(copy / stage_group(stage) / variable, ignore_errors=True)
        shutil.rmtree(copy / "findings", ignore_errors=True)
        copies.append(copy)
    return copies


def test_pca_on_the_workers_equals_the_in_process_one():
    import dask.array as da

    features = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)
    features += np.linspace(0, 5, 200, dtype=np.float32)  # a mean to centre away
    reference = pca(features, 5, seed=1)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=LOCAL_HTTP
        ) as cluster,
        Client(cluster) as client,
        get_task_stream(client) as stream,
    ):
        on_workers = pca(da.from_array(features, chunks=(50, 200)), 5, seed=1, on_workers=True)
    np.testing.assert_allclose(on_workers, reference, rtol=1e-4, atol=1e-4)
    names = {str(task["key"]) for task in stream.data}
    assert any("matmul" in name for name in names), sorted(names)[:10]


@pytest.mark.slow
def test_reduce_and_findings_with_a_scheduler_store_what_they_store_in_process(two_runs, tmp_path):
    """`--scheduler` of a real LocalCluster: the PCAs and each run's findings run as tasks of
    its workers (seen in the scheduler's task stream) and store the in-process numbers."""
    here, there = two_runs
    assert main(["reduce", str(here), "--methods", "pca,tsne"]) == 0
    assert main(["findings", str(here), "--out", str(tmp_path / "a")]) == 0
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=LOCAL_HTTP
        ) as cluster,
        Client(cluster) as watcher,
    ):
        address = ["--scheduler", cluster.scheduler_address]
        with get_task_stream(watcher) as reduced:
            assert main(["reduce", str(there), "--methods", "pca,tsne", *address]) == 0
        with get_task_stream(watcher) as found:
            command = ["findings", str(there), "--out", str(tmp_path / "b"), *address]
            assert main(command) == 0
    assert any("matmul" in str(task["key"]) for task in reduced.data)
    assert any("compute_run" in str(task["key"]) for task in found.data)
    for stage in (stage_group(1), stage_group(2)):
        a, b = (store.open_run(run)[stage] for run in (here, there))
        for name in ("embedding_inter", "embedding_intra"):
            np.testing.assert_allclose(
                b[name].sel({"method": "pca"}).values,
                a[name].sel({"method": "pca"}).values,
                rtol=1e-4,
                atol=1e-5,
            )
    found = [read_findings(store.open_run(run), "run") for run in (here, there)]
    for stage, dataset in found[0].stages.items():
        xr.testing.assert_allclose(found[1].stages[stage], dataset, rtol=1e-4)
