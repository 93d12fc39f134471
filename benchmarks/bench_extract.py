"""Scale benchmark of `compute extract` (a script, not a test): images/s with 1 and 2
workers, peak resident memory at n and n/2, bytes written, projection to n = 1000.

    python benchmarks/bench_extract.py                    # tiny-s1l8, 224 px, n = 64
    python benchmarks/bench_extract.py --n 4 --size 64     # a quick check

Images: the two packaged demo photographs, augmented (random crop of 50-100 % of the
shorter side, random horizontal flip, seed 0) into n distinct PNG files, so the run reads,
decodes and crops real files. Random weights (seed 0). Memory is sampled every 0.2 s as
the sum of the resident set of this process (client and scheduler) and of every process it
started (nannies and workers).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from distributed import Client, LocalCluster
from PIL import Image

from compute.extract import LOCAL_HTTP, extract
from mambapanel import data, store
from mambapanel.extract import BATCH_SIZE, SHARD_SIZE


def write_images(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` augmented crops of the demo photographs as PNG files."""
    rng = np.random.default_rng(seed)
    photographs = data.sample_images()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = photographs[i % len(photographs)].image
        side = int(min(image.size) * rng.uniform(0.5, 1.0))
        left = int(rng.integers(0, image.size[0] - side + 1))
        top = int(rng.integers(0, image.size[1] - side + 1))
        crop = image.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(folder / f"{i:04d}.png")


class PeakMemory:
    """Peak of the summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:  # a process that ended between list and read
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_once(args, folder: Path, out: Path, n: int, workers: int) -> dict:
    """One extraction on a fresh LocalCluster; the clock starts once the workers are up."""
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=LOCAL_HTTP
        ) as cluster,
        Client(cluster) as client,
    ):
        # Imports (torch, zarr, ...) happen before the clock; building the model is timed.
        client.run(importlib.import_module, "mambapanel.extract")
        with PeakMemory() as memory:
            started = time.perf_counter()
            extract(
                out,
                model=args.model,
                image_source=str(folder),
                n=n,
                image_size=args.size,
                dtype=args.dtype,
                batch_size=args.batch_size,
                shard_size=args.shard_size or max(1, n // 4),
                scheduler=cluster.scheduler_address,
                progress=False,
            )
            seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak": memory.peak, "bytes": directory_bytes(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vmamba-tiny-s1l8")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=64, help="images (memory also at n/2)")
    parser.add_argument("--dtype", default="float16", choices=store.DTYPES)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument(
        "--shard-size", type=int, default=None, help="default n / 4: every worker gets work"
    )
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        work = Path(work)
        write_images(work / "images", args.n)
        print(
            f"{args.model} at {args.size} px, random weights, all stages, {args.dtype}, "
            f"batch {args.batch_size}, shard {args.shard_size or 'n/4'}; "
            f"{platform.processor() or platform.machine()} "
            f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
        )
        results = {}
        for workers, n in ((1, args.n), (2, args.n), (2, args.n // 2)):
            result = run_once(args, work / "images", work / f"run-w{workers}-n{n}", n, workers)
            results[workers, n] = result
            print(
                f"workers {workers}  n {n:>4}  {result['seconds']:8.1f} s  "
                f"{n / result['seconds']:7.3f} images/s  peak RSS {result['peak'] / 2**30:6.2f} "
                f"GiB  written {result['bytes'] / 2**20:9.1f} MiB",
                flush=True,
            )

        one, two = results[1, args.n], results[2, args.n]
        half = results[2, args.n // 2]
        print(f"speed-up 2 workers / 1 worker: {one['seconds'] / two['seconds']:.2f}x")
        print(
            f"peak RSS, 2 workers: n = {args.n // 2}: {half['peak'] / 2**30:.2f} GiB, "
            f"n = {args.n}: {two['peak'] / 2**30:.2f} GiB"
        )
        run = work / f"run-w2-n{args.n}"
        layouts = store.read_run(run).layouts
        stage0 = layouts[0].n_blocks * layouts[0].patches ** 2 * 4 * args.n
        print(
            f"stage 0 matrices of all {args.n} images in float32 would take "
            f"{stage0 / 2**30:.2f} GiB in memory; they stream to disk instead"
        )
        # Bytes that grow with n (per-image matrices, thumbnails) and those that do not
        # (attention_mean, coordinates), from the runs at n and n/2.
        per_image = (two["bytes"] - half["bytes"]) / (args.n - args.n // 2)
        fixed = two["bytes"] - args.n * per_image
        needed = store.bytes_needed(layouts, 1000, args.dtype, SHARD_SIZE)
        scratch = sum(sizes["partial_sum"] for sizes in needed.values())
        uncompressed = sum(sum(sizes.values()) for sizes in needed.values()) - scratch
        hours = 1000 * two["seconds"] / args.n / 3600
        print(
            f"projected for n = 1000 with 2 workers: {hours:.2f} h; disk "
            f"{(fixed + 1000 * per_image) / 2**30:.1f} GiB as compressed here "
            f"({uncompressed / 2**30:.1f} GiB uncompressed), plus up to {scratch / 2**30:.1f} "
            f"GiB of scratch sums while running (--shard-size {SHARD_SIZE})"
        )


if __name__ == "__main__":
    main()
