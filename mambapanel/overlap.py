"""Store writes of one batch overlapped with the next batch's compute: device-to-host copies
that land while the device works on, and a writer thread that takes the writes in order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class HostCopy:
    """A tensor on its way to host memory: :meth:`wait` before reading ``tensor``."""

    tensor: Tensor
    ready: torch.cuda.Event | None = None

    def wait(self) -> Tensor:
        if self.ready is not None:
            self.ready.synchronize()
        return self.tensor


def to_host(tensor: Tensor) -> HostCopy:
    """Start copying ``tensor`` to host memory. From a CUDA device: into pinned memory,
    asynchronously on the current stream (the caching allocator does not reuse the source
    before the copy, which that stream orders first); from the CPU: the tensor itself."""
    if tensor.device.type != "cuda":
        return HostCopy(tensor)
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return HostCopy(host, ready)


class Writer:
    """Runs submitted writes in order on one thread, with at most ``depth`` waiting, so that
    the caller computes on while earlier results are written; ``depth`` 0 runs each write at
    once in the caller (no thread). The first error of a write is raised again by the next
    :meth:`submit` or by :meth:`close`, and no later write runs.

    Use as a context manager: leaving it waits for every write (and raises its error).
    """

    def __init__(self, depth: int = 1) -> None:
        self.depth = depth
        self._error: BaseException | None = None
        self._queue: queue.Queue[Callable[[], None] | None] | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (write := self._queue.get()) is not None:
            if self._error is None:
                try:
                    write()
                except BaseException as err:  # handed to the caller by submit or close
                    self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, write: Callable[[], None]) -> None:
        """Queue ``write`` (blocks while ``depth`` writes wait), or run it now (depth 0)."""
        self._raise()
        if self._queue is None:
            write()
        else:
            self._queue.put(write)

    def close(self) -> None:
        """Wait for every queued write; raise the first error of one."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None and self._thread is not None and self._thread.is_alive():
            self._queue.put(None)  # an error of the caller's: stop after what is queued
            self._thread.join()
            return
        self.close()
