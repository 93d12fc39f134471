"""Command line: `python -m compute extract|reduce|demo`."""

from __future__ import annotations

import argparse
import sys
import time

from mambapanel import data, models, orders, store
from mambapanel.extract import BATCH_SIZE, REDUCTIONS, SHARD_SIZE


def demo(args: argparse.Namespace) -> int:
    """Extract hidden attention of every block for the packaged images and print a summary."""
    import torch

    from mambapanel import attention, data, findings

    torch.manual_seed(args.seed)
    model = models.build(args.model, order=args.order, checkpoint=args.checkpoint)
    samples = data.sample_images()
    images = data.preprocess([s.image for s in samples], args.size)
    weights = "checkpoint " + str(args.checkpoint) if args.checkpoint else "random weights"
    print(
        f"{args.model} ({weights}), order {model.order}, images: "
        f"{', '.join(s.image_id for s in samples)} at {args.size}x{args.size}"
    )
    started = time.perf_counter()
    with torch.no_grad(), attention.capture(model) as cap:
        model(images)
    print(
        f"{'stage':>5} {'block':>5} {'grid':>7} {'self':>7} {'row':>7} {'column':>7}  "
        "strongest key of the centre patch"
    )
    for stage, block in cap.keys():
        alpha = cap.attention(stage=stage, block=block).mean(0).numpy()
        H, W = cap.inputs(stage, block).grid
        share = findings.self_row_column_share(alpha, H, W)
        centre = (H // 2) * W + W // 2
        key_row, key_col = divmod(int(abs(alpha[centre]).argmax()), W)
        print(
            f"{stage:>5} {block:>5} {f'{H}x{W}':>7} {share['self']:>7.3f} "
            f"{share['row']:>7.3f} {share['column']:>7.3f}  (row {key_row}, col {key_col})"
        )
    print(f"attention of {len(cap.keys())} blocks in {time.perf_counter() - started:.2f} s")
    return 0


def extract(args: argparse.Namespace) -> int:
    """Extract the hidden attention of n images into a run (a zarr store), or resume it."""
    from compute.extract import extract as run_extract

    run_extract(
        args.out,
        n=args.n,
        scheduler=args.scheduler,
        workers=args.workers,
        model=args.model,
        checkpoint=args.checkpoint,
        order=args.order,
        image_source=args.images,
        image_size=args.size,
        stages=args.stages,
        pool=args.pool,
        reduce=args.reduce,
        dtype=args.dtype,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        seed=args.seed,
    )
    return 0


def reduce(args: argparse.Namespace) -> int:
    """Add PCA / t-SNE / UMAP embeddings of a run's attention to the run."""
    from mambapanel.reduce import reduce_run

    reduce_run(args.run, methods=tuple(args.methods), seed=args.seed)
    return 0


def parse_pool(text: str) -> int | dict[int, int]:
    """``k`` (every stage) or ``stage:k,stage:k``."""
    try:
        if ":" not in text:
            return int(text)
        return {int(s): int(k) for s, k in (item.split(":") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected k or stage:k,stage:k (e.g. 2 or 0:4,1:2), got {text!r}"
        ) from None


def parse_ints(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 0,1,2, got {text!r}") from None


def parse_names(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_model_options(p: argparse.ArgumentParser, default_size: int) -> None:
    p.add_argument("--model", default="vmamba-micro", choices=models.available())
    p.add_argument(
        "--order",
        default=None,
        choices=orders.available(),
        help="patch order (default: the checkpoint's, else cross)",
    )
    p.add_argument("--checkpoint", default=None, help="official or `compute train` checkpoint")
    p.add_argument(
        "--size",
        type=int,
        default=default_size,
        help=f"image side in pixels (default {default_size})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (default 0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compute", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "extract",
        help="hidden attention of n images into a resumable run (Dask)",
        description=extract.__doc__
        + " Re-running the same command into an existing run finishes it; other options "
        "are refused.",
    )
    add_model_options(p, default_size=224)
    p.add_argument("--out", required=True, help="the run: a zarr store (directory)")
    p.add_argument(
        "--images",
        default="demo",
        help=f"a directory (flat, or class sub-folders giving labels) or a packaged source: "
        f"{', '.join(sorted(data.PACKAGED_SOURCES))} (default demo)",
    )
    p.add_argument("--n", type=int, default=None, help="first n readable images (default all)")
    p.add_argument(
        "--stages", type=parse_ints, default=None, help="stages to store, e.g. 1,2,3 (default all)"
    )
    p.add_argument(
        "--pool",
        type=parse_pool,
        default=None,
        help="average k x k patches: k for every stage, or stage:k,... (e.g. 0:4,1:2)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=store.DTYPES,
        help="of per-image matrices (default float32; float16 halves the disk but keeps only "
        "~3 digits, and fewer below 6e-5)",
    )
    p.add_argument("--reduce", default="mean", choices=REDUCTIONS, help="over channels")
    p.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        help=f"images per forward pass (default {BATCH_SIZE})",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=SHARD_SIZE,
        help=f"images per task: the unit of resume; each task keeps one float64 sum per block "
        f"on disk until the run ends (default {SHARD_SIZE})",
    )
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (default: local)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="LocalCluster worker processes, one thread each (default 2; not with --scheduler)",
    )
    p.set_defaults(handler=extract)

    p = commands.add_parser(
        "reduce",
        help="PCA / t-SNE / UMAP embeddings of a run",
        description=reduce.__doc__,
    )
    p.add_argument("run", help="a run made by `compute extract`")
    p.add_argument(
        "--methods",
        type=parse_names,
        default=["pca", "tsne", "umap"],
        help="comma-separated (default pca,tsne,umap)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed, recorded (default 0)")
    p.set_defaults(handler=reduce)

    p = commands.add_parser(
        "demo",
        help="hidden attention of every block on the packaged images, summarised",
        description=demo.__doc__,
    )
    add_model_options(p, default_size=64)
    p.set_defaults(handler=demo)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as err:  # RunError, ImageSourceError, CheckpointError: user-facing
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
