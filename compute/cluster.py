"""The Dask cluster of every command: a LocalCluster (one worker per GPU when the run is on
CUDA) or a scheduler's address; the worker plugin that pins torch threads and undoes the
nanny's small malloc thresholds, and gives both back; checks that the workers see what they
need; a lost scheduler as one line to resume.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster, Worker, WorkerPlugin
from distributed.client import FutureCancelledError
from distributed.comm.core import CommClosedError

from mambapanel.errors import MambapanelError, OptionError
from mambapanel.storage import Location

# The scheduler's HTTP server (dashboard_address=None does not turn it off): on loopback and
# a free port, so that two local clusters never collide and none listens beyond this machine.
LOCAL_HTTP = "127.0.0.1:0"
LOCAL_WORKERS = 2  # CPU worker processes of a LocalCluster, by default
WORKER_PLUGIN = "mambapanel-worker-settings"
# Checkpoints up to this size go to the workers by content (one copy per worker, in memory):
# a remote worker then needs no copy of the file. Larger ones are read from the path.
SEND_CHECKPOINT_BYTES = 512 * 2**20

# The torch thread count a worker process had before the first WorkerSettings set it.
_threads_before: int | None = None

# glibc's mallopt parameters, and the thresholds its dynamic rule reaches at most on 64-bit
# (an allocation above MMAP_BYTES is mapped on its own; free memory above TRIM_BYTES at the
# heap's top goes back to the system).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_BYTES, TRIM_BYTES = 32 * 2**20, 64 * 2**20
GLIBC_MMAP_BYTES = 128 * 2**10  # glibc's fixed mmap threshold once one is set by environment


class ClusterError(MambapanelError, RuntimeError):
    """A cluster that cannot do the work: a lost scheduler, workers that cannot see a path or
    lack the device asked for. The message names the worker, the path or the cause."""


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # another C library
        return None


def _mallopt(parameter: int, value: int) -> bool:
    """glibc's ``mallopt``; False where there is none or it refuses."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(parameter, value))


class WorkerSettings(WorkerPlugin):
    """What a worker process needs for torch while this project's clients use it.

    - Torch intra-op threads: parallelism comes from Dask tasks (one per Dask thread), so
      torch keeps to ``threads`` and workers do not oversubscribe the cores.
    - glibc's malloc thresholds: Dask's nanny starts workers with
      ``MALLOC_TRIM_THRESHOLD_=65536``, and a threshold set by environment turns off glibc's
      dynamic rule, so every allocation above 128 KiB gets a fresh mapping of its own and
      every free returns it: torch's many-megabyte temporaries then fault in new pages all
      the time (an extraction of tiny-s1l8 took 5.3 instead of 3.3 s per image). Where the
      environment sets it, the worker gets the thresholds that rule reaches instead, and
      gives the free memory of its heaps back after each task (``malloc_trim``), which the
      nanny's setting did all the time (without it, the two workers of an extraction kept
      7.6 GiB between runs instead of 3.9).

    Registered once per cluster, under one fixed name, by the first client that finds it
    missing (:func:`connect`); its teardown (that client unregisters it on leaving) gives
    the worker back the thread count and the malloc thresholds it had before.
    """

    name = WORKER_PLUGIN

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.trim = False  # set up where the nanny's threshold is in the environment

    def setup(self, worker: Worker) -> None:
        import torch

        global _threads_before
        if _threads_before is None:
            _threads_before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self.trim = "MALLOC_TRIM_THRESHOLD_" in os.environ
        if self.trim:
            _mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)
            _mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish == "memory" and self.trim:  # a task has finished
            libc = _glibc()
            if libc is not None:
                libc.malloc_trim(0)

    def teardown(self, worker: Worker) -> None:
        import torch

        global _threads_before
        if _threads_before is not None:
            torch.set_num_threads(_threads_before)
            _threads_before = None
        trim = os.environ.get("MALLOC_TRIM_THRESHOLD_", "")
        if trim.isdigit():
            _mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_BYTES)
            _mallopt(M_TRIM_THRESHOLD, int(trim))


def gpu_cluster(workers: int, visible: Sequence[str]) -> SpecCluster:
    """A local cluster of ``workers`` single-thread processes, worker i seeing only GPU
    ``visible[i]`` (its ``CUDA_VISIBLE_DEVICES``, set before it imports torch), so that each
    worker's ``cuda`` is its own device. What dask-cuda's LocalCUDACluster does, without a
    package that pins its own dask and distributed versions."""
    if not 1 <= workers <= len(visible):
        raise OptionError(
            f"--workers {workers}: one worker per GPU, and this machine shows {len(visible)} "
            f"({', '.join(visible) or 'none'})"
        )
    spec = {
        f"gpu-{device}": {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "host": "127.0.0.1",
                "env": {"CUDA_VISIBLE_DEVICES": device},
            },
        }
        for device in visible[:workers]
    }
    scheduler = {
        "cls": Scheduler,
        "options": {"host": "127.0.0.1", "dashboard_address": LOCAL_HTTP},
    }
    return SpecCluster(workers=spec, scheduler=scheduler)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (all, 0..n-1,
    when it is unset)."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [name.strip() for name in listed.split(",") if name.strip()][:count]


@contextmanager
def connect(
    scheduler: str | None,
    workers: int | None = None,
    *,
    device: str = "cpu",
    command: str | None = None,
) -> Iterator[Client]:
    """A client of ``scheduler``, or of a local cluster: ``workers`` single-thread CPU
    processes (default 2), or with ``device`` "cuda" one process per GPU (default all).
    Torch threads are pinned while the client is connected (:class:`WorkerSettings`).

    A scheduler lost meanwhile ends the block with a :class:`ClusterError` that names the
    cause and ``command``, the command line that resumes the work.
    """
    quiet = logging.getLogger("distributed.client")
    level = quiet.level
    if scheduler is not None:
        if workers is not None:
            raise OptionError("--workers starts a local cluster; with --scheduler, start workers")
        cluster = None
    elif device == "cuda":
        gpus = visible_gpus()
        if not gpus:
            import torch

            raise OptionError(
                f"--device cuda: this machine shows no CUDA device (torch {torch.__version__}"
                f"{'' if torch.version.cuda else ', a build without CUDA'}); use --device cpu, "
                "or --scheduler with GPU workers"
            )
        cluster = gpu_cluster(workers or len(gpus), gpus)
    else:
        cluster = LocalCluster(
            n_workers=workers or LOCAL_WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=LOCAL_HTTP,
        )
    try:
        with cluster or _nothing(), Client(cluster or scheduler) as client:
            address = client.scheduler.address
            # Losing the scheduler is reported below in one line; distributed would log its
            # reconnection attempts with a traceback first.
            quiet.setLevel(logging.CRITICAL)
            # The first client of a cluster registers the plugin and removes it on leaving;
            # a client that finds it registered (another client's work still running)
            # leaves it alone, so that the workers keep their pinned threads meanwhile.
            owner = not client.run_on_scheduler(_has_worker_plugin)
            try:
                if owner:
                    client.register_plugin(WorkerSettings(), name=WORKER_PLUGIN)
                yield client
            except MambapanelError:
                raise
            except Exception as err:
                if _lost(err, client):
                    raise ClusterError(_lost_message(address, err, command)) from None
                raise
            finally:
                if owner and client.status == "running":
                    _unregister(client)
    except OSError as err:  # the scheduler could not be reached at all
        if scheduler is None:
            raise
        raise ClusterError(
            f"cannot reach the Dask scheduler {scheduler} ({type(err).__name__}: {err}); "
            "start it (dask scheduler) and its workers (dask worker ADDRESS), or leave out "
            "--scheduler for a local cluster"
        ) from None
    finally:
        quiet.setLevel(level)


def _has_worker_plugin(dask_scheduler: Scheduler) -> bool:
    return WORKER_PLUGIN in dask_scheduler.worker_plugins


def _unregister(client: Client) -> None:
    """Remove :class:`WorkerSettings` (its teardown restores the workers' thread count and
    malloc thresholds), unless someone removed it already (the scheduler would log that as
    an error)."""
    if client.run_on_scheduler(_has_worker_plugin):
        client.unregister_worker_plugin(WORKER_PLUGIN)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _lost(error: BaseException, client: Client) -> bool:
    """Whether ``error`` says that the client lost its scheduler (not that a task failed)."""
    if isinstance(error, FutureCancelledError):
        return error.reason == "scheduler-connection-lost"
    connection = (CommClosedError, OSError, TimeoutError, FutureCancelledError)
    return isinstance(error, connection) and client.status != "running"


def _lost_message(address: str, error: BaseException, command: str | None) -> str:
    cause = getattr(error, "reason", None) or f"{type(error).__name__}: {error}".splitlines()[0]
    resume = (
        f"; the run keeps what is done: start a scheduler and its workers again and resume "
        f"with: {command}"
        if command
        else ""
    )
    return f"lost the Dask scheduler {address} ({cause}){resume}"


def workers_device(client: Client, device: str) -> str:
    """The device every worker computes on: ``device`` ("cpu", "cuda"), checked on each
    worker, or for "auto" cuda when every worker sees a CUDA device, else cpu."""
    found = client.run(_cuda_devices)
    if device == "auto":
        return "cuda" if found and all(found.values()) else "cpu"
    if device == "cuda":
        missing = sorted(_named(client, worker) for worker, count in found.items() if not count)
        if missing:
            raise ClusterError(
                f"the run computes on cuda, and worker(s) {', '.join(missing)} see no CUDA "
                "device; start those workers on GPU machines, or use --device cpu (a new run)"
            )
    return device


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_workers_see(client: Client, paths: dict[str, str]) -> None:
    """Refuse, naming each worker and what it misses, when a worker cannot see one of
    ``paths`` ({what: local path}): workers open them at the path the client gives."""
    if not paths:
        return
    found = client.run(_missing, list(paths.values()))
    lines = []
    for worker, missing in sorted(found.items()):
        names = [f"{path} ({what})" for what, path in paths.items() if path in missing]
        if names:
            lines.append(f"  worker {_named(client, worker)} cannot see {', '.join(names)}")
    if lines:
        raise ClusterError(
            "the workers need shared storage at the same path as this machine (the README's "
            "Running on a Dask cluster):\n" + "\n".join(lines)
        )


def _named(client: Client, worker: str) -> str:
    """A worker's address, with its name when it was given one (``dask worker --name``)."""
    name = client.scheduler_info(n_workers=-1)["workers"].get(worker, {}).get("name")
    return worker if name is None or str(name) == worker else f"{worker} ({name})"


def _missing(paths: list[str]) -> list[str]:
    return [path for path in paths if not os.path.exists(path)]


def check_workers_reach(client: Client, where: Location) -> None:
    """Refuse, naming each worker and its error, when a worker cannot read the run at the
    URL ``where`` (a missing package, credentials, the endpoint)."""
    found = client.run(_reach, where)
    lines = [
        f"  worker {_named(client, worker)}: {error}"
        for worker, error in sorted(found.items())
        if error
    ]
    if lines:
        raise ClusterError(
            f"the workers cannot reach the run {where}; each needs the fsspec package of its "
            "scheme and the storage options or credentials (the README's Running on a Dask "
            "cluster):\n" + "\n".join(lines)
        )


def _reach(where: Location) -> str | None:
    try:
        if not where.exists("zarr.json"):
            return f"no zarr.json at {where}"
    except Exception as err:  # any fsspec backend's error: reported by the client
        return f"{type(err).__name__}: {err}"
    return None


def run_tasks(
    client: Client,
    function: Callable[..., Any],
    arguments: Sequence[tuple],
    on_done: Callable[[Any], object] = lambda result: None,
) -> list[Any]:
    """``function(*arguments[i])`` for every i on the cluster; ``on_done(result)`` as each
    finishes; the results in order. ``pure=False``: a fresh key per submission, so that a
    scheduler that outlived an earlier (killed) client never answers from a stale result."""
    from distributed import as_completed

    futures = [client.submit(function, *args, pure=False) for args in arguments]
    for future in as_completed(futures):
        on_done(future.result())
    return [future.result() for future in futures]
