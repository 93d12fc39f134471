"""The writer that overlaps a batch's store writes with the next batch's compute: order,
the bound on waiting writes, errors handed back, and the synchronous form the CPU uses."""

import threading

import pytest
import torch

from mambapanel.overlap import Writer, to_host


def test_writes_run_in_order_on_another_thread_and_close_waits_for_them():
    done, threads = [], set()
    release, started = threading.Event(), threading.Event()

    def write(i):
        def run():
            started.set()
            release.wait(5)
            threads.add(threading.current_thread().name)
            done.append(i)

        return run

    with Writer(depth=2) as writer:
        writer.submit(write(0))
        started.wait(5)  # taken by the thread, which waits on release
        writer.submit(write(1))
        writer.submit(write(2))  # fills the queue: the caller has not waited yet
        assert done == []
        release.set()
    assert done == [0, 1, 2] and threads == {"store-writer"}


def test_depth_bounds_the_writes_waiting():
    release, started = threading.Event(), threading.Event()
    writer = Writer(depth=1)
    writer.submit(lambda: (started.set(), release.wait(5)))
    started.wait(5)
    writer.submit(lambda: None)  # waits in the queue of 1
    blocked = threading.Thread(target=writer.submit, args=(lambda: None,))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # a third write waits for room: memory stays bounded
    release.set()
    blocked.join(5)
    writer.close()


def test_a_failed_write_is_raised_to_the_caller_and_stops_later_writes():
    done = []

    def fail():
        raise OSError("disk full")

    writer = Writer(depth=1)
    writer.submit(fail)
    writer.submit(lambda: done.append(1))
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert done == []


def test_depth_zero_writes_at_once_in_the_caller():
    done = []
    with Writer(depth=0) as writer:
        writer.submit(lambda: done.append(threading.current_thread().name))
        assert done == [threading.current_thread().name]


def test_a_cpu_tensor_goes_to_the_host_as_it_is():
    tensor = torch.arange(3.0)
    copy = to_host(tensor)
    assert copy.wait() is tensor
