"""Scale benchmark of `compute extract` (a script, not a test): images/s, disk per image and
peak resident memory of runs that keep every matrix (--keep all) and runs that keep sketches
(--keep sketch), the projection to n = 1000, and the Blosc zstd measurement of the matrices.

    python benchmarks/bench_extract.py                          # tiny-s1l8, 224 px, n = 64
    python benchmarks/bench_extract.py --n 4 --shard-size 1 --size 64   # a quick check
    python benchmarks/bench_extract.py --device cuda --workers 1

Images: the two packaged demo photographs, augmented (random crop of 50-100 % of the
shorter side, random horizontal flip, seed 0) into n distinct PNG files, so the run reads,
decodes and crops real files. Random weights (seed 0), all stages, the command's defaults
(float32 matrices, explanations on) unless told otherwise.

Six runs on one local cluster, in shards of the command's default size (16 images: each
shard also writes its float64 sums, about 2 s for tiny-s1l8, so smaller shards would cost
more per image than a real run's): keep all (n images) and keep sketch (--keep-images 0:
every image sketched only; n / 2 and n images) without the perturbation test, keep sketch of
n images without explanations (the attention alone, as the issue that set the targets knew
the command), and two runs of 2 images per worker in shards of one image, with and without
the test of every image (so the workers test side by side, as in a long run). The two keep
sketch runs give the time per image (their difference over the n / 2 images between them)
apart from the fixed costs (creating and finalising the run, the cluster's first tasks);
the two small runs the test's time per image with every worker testing. The projection to
n = 1000 with the command's defaults is then: the fixed costs, 1000 images at that rate,
the test's time for the first --faithfulness-images (64), and the disk of the image-mean
matrices, 1000 images and, for keep sketch, the matrices of the first --keep-images (64).
Memory is sampled every 0.2 s as the sum of the resident set of this process (client and
scheduler) and of every process it started (nannies and workers).

Blosc: every stored image-block chunk of the keep-all run, compressed on one thread with
numcodecs Blosc zstd level 1 (bit-shuffle and byte-shuffle), against writing it raw; the
store keeps a compressor only if it costs less time than it saves (see RESULTS.md).
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
import zarr
from distributed import Client
from PIL import Image

from compute.cluster import connect
from compute.extract import extract
from mambapanel import data, store
from mambapanel.extract import FAITHFULNESS_IMAGES, KEEP_IMAGES, SHARD_SIZE
from mambapanel.sketch import SKETCH_DIM

PROJECTED = 1000


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


def image_bytes(run: Path) -> int:
    """Bytes of ``run`` that grow with its images: all but the image-mean matrices (81 MB
    for tiny-s1l8 at 224 px, whatever the number of images)."""
    fixed = sum(directory_bytes(folder) for folder in run.glob("stage*/attention_mean"))
    return directory_bytes(run) - fixed


def run_once(
    args, client: Client, folder: Path, out: Path, n: int, shard_size: int, **options
) -> dict:
    """One extraction of the first ``n`` images of ``folder`` on the cluster of ``client``."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        extract(
            out,
            model=args.model,
            image_source=str(folder),
            n=n,
            shard_size=shard_size,
            image_size=args.size,
            dtype=args.dtype,
            device=args.device,
            scheduler=client.scheduler.address,
            progress=False,
            **options,
        )
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak": memory.peak,
        "bytes": directory_bytes(out),
        "image_bytes": image_bytes(out),
    }


def blosc_measurement(run: Path, shuffles: dict[str, int]) -> dict[str, dict[str, float]]:
    """CPU seconds to compress, and bytes after compression, of every stored image-block
    matrix of ``run`` with Blosc zstd level 1 on one thread (as on a one-thread worker);
    ``raw`` holds the seconds to write each one uncompressed beside the run, and its size."""
    import numcodecs

    numcodecs.blosc.set_nthreads(1)
    codecs = {
        name: numcodecs.Blosc(cname="zstd", clevel=1, shuffle=shuffle)
        for name, shuffle in shuffles.items()
    }
    found = {name: {"seconds": 0.0, "bytes": 0} for name in ["raw", *codecs]}
    scratch = run.parent / "blosc-scratch.bin"
    root = zarr.open_group(str(run), mode="r")
    for stage in store.read_run(run).attrs["stages"]:
        matrices = root[f"{store.stage_group(stage)}/attention"]
        for image in range(matrices.shape[0]):
            for block in range(matrices.shape[1]):
                chunk = np.ascontiguousarray(matrices[image, block])
                started = time.perf_counter()
                with open(scratch, "wb") as file:  # the page cache, as the store writes
                    file.write(chunk.tobytes())
                found["raw"]["seconds"] += time.perf_counter() - started
                found["raw"]["bytes"] += chunk.nbytes
                for name, codec in codecs.items():
                    started = time.process_time()
                    encoded = codec.encode(chunk)
                    found[name]["seconds"] += time.process_time() - started
                    found[name]["bytes"] += len(encoded)
    scratch.unlink(missing_ok=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vmamba-tiny-s1l8")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=64, help="images per run (default 64)")
    parser.add_argument("--dtype", default="float32", choices=store.DTYPES)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--workers", type=int, default=None, help="local workers (default: 2; one per GPU)"
    )
    parser.add_argument(
        "--shard-size", type=int, default=SHARD_SIZE, help=f"default {SHARD_SIZE}, the command's"
    )
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    if args.n < 2:
        parser.error("--n must be at least 2 (the time per image is measured between n / 2 and n)")

    with (
        tempfile.TemporaryDirectory(dir=args.dir) as work,
        connect(None, args.workers, device=args.device) as client,
    ):
        work = Path(work)
        write_images(work / "images", args.n)
        # Imports (torch, zarr, ...) happen before the clock; building the model is timed.
        client.run(importlib.import_module, "mambapanel.extract")
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        load = os.getloadavg()[0]
        print(
            f"{args.model} at {args.size} px, random weights, all stages, {args.dtype} "
            f"matrices, n = {args.n}, shard {args.shard_size}, {workers} workers on "
            f"{args.device}; {platform.processor() or platform.machine()} {os.cpu_count()} "
            f"cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, load {load:.1f}"
        )
        plain = {"faithfulness_images": 0}
        sketched = {"keep": "sketch", "keep_images": 0}  # every image sketched only
        half = max(1, args.n // 2)
        tested = 2 * workers  # in shards of one image: every worker tests two
        if half < workers * args.shard_size:
            print(
                f"note: n / 2 = {half} images are fewer than one shard of {args.shard_size} per "
                f"worker: the time per image is then not that of a long run"
            )
        runs = {
            "keep all": (args.n, args.shard_size, dict(keep="all", **plain)),
            "keep sketch, n / 2": (half, args.shard_size, dict(**sketched, **plain)),
            "keep sketch": (args.n, args.shard_size, dict(**sketched, **plain)),
            "keep sketch, attention only": (
                args.n,
                args.shard_size,
                dict(**sketched, explanations=False, **plain),
            ),
            "small, no test": (tested, 1, dict(**sketched, **plain)),
            "small, test": (tested, 1, dict(**sketched, faithfulness_images=tested)),
        }
        results = {}
        for name, (n, shard_size, options) in runs.items():
            out = work / name.replace(" ", "-").replace(",", "").replace("/", "")
            results[name] = result = run_once(
                args, client, work / "images", out, n, shard_size=shard_size, **options
            )
            print(
                f"{name + ':':<20} {n:3d} images {result['seconds']:7.1f} s  "
                f"{n / result['seconds']:6.3f} images/s  disk "
                f"{result['image_bytes'] / n / 2**20:8.2f} MiB/image  peak RSS "
                f"{result['peak'] / 2**30:5.2f} GiB",
                flush=True,
            )

        seconds = {name: result["seconds"] for name, result in results.items()}
        # Per image from the two keep sketch runs; what is left of a run is fixed.
        rate = max(0.0, seconds["keep sketch"] - seconds["keep sketch, n / 2"]) / (args.n - half)
        fixed = max(0.0, seconds["keep sketch"] - args.n * rate)
        per_image = {
            "keep all": max(0.0, seconds["keep all"] - fixed) / args.n,
            "keep sketch": rate,
            "keep sketch, attention only": max(0.0, seconds["keep sketch, attention only"] - fixed)
            / args.n,
        }
        test = max(0.0, seconds["small, test"] - seconds["small, no test"]) / tested
        full = results["keep all"]["image_bytes"] / args.n
        sketch = results["keep sketch"]["image_bytes"] / args.n
        disk_fixed = results["keep all"]["bytes"] - results["keep all"]["image_bytes"]
        layouts = store.read_run(work / "keep-all").layouts
        scratch = sum(
            sizes["partial_sum"]
            for sizes in store.bytes_needed(layouts, PROJECTED, args.dtype, SHARD_SIZE).values()
        )
        print(
            f"per image: keep all {per_image['keep all']:.2f} s, keep sketch {rate:.2f} s, "
            f"keep sketch without explanations {per_image['keep sketch, attention only']:.2f} s "
            f"({workers} workers); fixed costs of a run {fixed:.1f} s"
        )
        print(
            f"perturbation test: {test:.1f} s per image beyond the extraction, {workers} "
            f"workers testing (run on the first {FAITHFULNESS_IMAGES} images by default)"
        )
        sketch_disk = disk_fixed + PROJECTED * sketch + KEEP_IMAGES * (full - sketch)
        for name, disk, tested_images, note in (
            ("keep all", disk_fixed + PROJECTED * full, FAITHFULNESS_IMAGES, ""),
            ("keep sketch", sketch_disk, FAITHFULNESS_IMAGES, ""),
            # The scope: the attention alone, as the run was before explanations
            # (their backward pass, attribution, rollout and perturbation test) came.
            ("keep sketch, attention only", sketch_disk, 0, ", --no-explanations"),
        ):
            minutes = (fixed + PROJECTED * per_image[name] + tested_images * test) / 60
            print(
                f"projected n = {PROJECTED}, {name} (defaults: --keep-images {KEEP_IMAGES}, "
                f"--sketch-dim {SKETCH_DIM}, --faithfulness-images {tested_images}{note}): "
                f"{minutes:.0f} min, disk {disk / 1e9:.2f} GB, plus up to {scratch / 1e9:.1f} "
                f"GB of scratch sums while running (--shard-size {SHARD_SIZE})"
            )

        from numcodecs.blosc import BITSHUFFLE, SHUFFLE

        shuffles = {"bit-shuffle": BITSHUFFLE, "byte-shuffle": SHUFFLE}
        found = blosc_measurement(work / "keep-all", shuffles)
        raw = found.pop("raw")
        print(
            f"Blosc zstd level 1 of the {raw['bytes'] / 2**20:.0f} MiB of matrices of the keep "
            f"all run (one thread; raw write to the page cache: {raw['seconds']:.2f} s):"
        )
        for name, codec in found.items():
            saved = raw["bytes"] - codec["bytes"]
            # Below this write speed, the time a compressor saves writing exceeds its own.
            break_even = saved / codec["seconds"] / 2**20 if codec["seconds"] else float("inf")
            print(
                f"  {name}: ratio {raw['bytes'] / codec['bytes']:.2f}, "
                f"{codec['seconds'] / args.n:.2f} s of CPU per image "
                f"({codec['seconds'] / (per_image['keep all'] * workers * args.n):.1%} of a "
                "worker's time per image), "
                f"pays off below {break_even:.0f} MiB/s of storage write speed"
            )


if __name__ == "__main__":
    main()
