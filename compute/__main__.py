"""Command line: `python -m compute extract|reduce|train|findings|serve|demo`, also
installed as the console script `mambapanel`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from compute import serve as serving
from compute.arguments import POSITIVE, add_cluster_options, integer, positive_float
from mambapanel import data, models, orders, store
from mambapanel.errors import MambapanelError
from mambapanel.extract import (
    BACKENDS,
    BATCH_SIZE,
    CHANNELS,
    DEVICES,
    FAITHFULNESS_IMAGES,
    KEEP_IMAGES,
    PRECISIONS,
    SHARD_SIZE,
)
from mambapanel.sketch import SKETCH_DIM


def demo(args: argparse.Namespace) -> int:
    """The embedded default: extract, reduce and add findings for one demo model per patch
    order (trained on scikit-learn's digits), then serve the dashboard with every run."""
    from compute import demo as demo_runs

    options = serving.options_from(args)
    if not args.no_serve:
        options.check()  # refuses before minutes of building, not after (warnings: at start)
    runs = demo_runs.build(
        args.runs, names=args.models, n=args.n, methods=args.methods, workers=args.workers
    )
    if args.no_serve:
        print(f"runs ready: {' '.join(map(str, runs))}")
        return 0
    serving.serve(runs, options)  # does not return
    return 0


def serve(args: argparse.Namespace) -> int:
    """Serve the dashboard (the explorer at /explorer, two side by side at /compare) with
    the runs loaded, on 127.0.0.1 unless told otherwise."""
    serving.serve(args.runs, serving.options_from(args))  # does not return
    return 0


def extract(args: argparse.Namespace) -> int:
    """Extract the hidden attention of n images into a run (a zarr store), or resume it."""
    from compute.extract import extract as run_extract

    if args.size is None:
        trained = models.read_state_dict(args.checkpoint)[1] if args.checkpoint else {}
        args.size = trained.get("config", {}).get("image_size") or models.input_size(args.model)
        args.size = args.size or 224
    run_extract(
        args.out,
        n=args.n,
        scheduler=args.scheduler,
        workers=args.workers,
        storage_options=args.storage_options,
        keep=args.keep,
        keep_images=args.keep_images,
        sketch_dim=args.sketch_dim,
        device=args.device,
        command=args.command_line,
        model=args.model,
        checkpoint=args.checkpoint,
        order=args.order,
        image_source=args.images,
        image_size=args.size,
        stages=args.stages,
        pool=args.pool,
        channels=args.channels,
        dtype=args.dtype,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        seed=args.seed,
        explanations=args.explanations,
        faithfulness_images=args.faithfulness_images,
        precision=args.precision,
        backend=args.backend,
        by_route=args.by_route,
    )
    return 0


def reduce(args: argparse.Namespace) -> int:
    """Add PCA / t-SNE / UMAP embeddings of a run's attention to the run."""
    from compute.cluster import connect
    from mambapanel.reduce import reduce_run
    from mambapanel.storage import location

    run = location(args.run, args.storage_options)
    if args.scheduler is None and args.workers is None:
        reduce_run(run, methods=tuple(args.methods), seed=args.seed)
        return 0
    # PCA on the workers (dask arrays over the store), t-SNE and UMAP here after PCA-100.
    with connect(args.scheduler, args.workers, command=args.command_line):
        reduce_run(run, methods=tuple(args.methods), seed=args.seed, on_workers=True)
    return 0


def train(args: argparse.Namespace) -> int:
    """Train a small VMamba on a packaged dataset and save a checkpoint (official layout)."""
    from mambapanel import train as training

    config = training.TrainConfig(
        model=args.model,
        order=args.order,
        dataset=args.data,
        image_size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    meta = training.train(
        config, args.out, storage=args.storage, command=["python", "-m", "compute", *sys.argv[1:]]
    )
    print(
        f"{args.out}: {args.model} {args.order}, test accuracy {meta['test_accuracy']:.4f} "
        f"on {meta['n_test']} held-out images (train {meta['train_accuracy']:.4f}; "
        f"chance {1 / len(meta['classes']):.2f}), {meta['seconds']:.0f} s"
    )
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


def add_model_options(p: argparse.ArgumentParser) -> None:
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
        type=POSITIVE,
        default=None,
        help="image side in pixels (default: the size a `compute train` checkpoint was "
        "trained at, else the model's own (a Vim's: 224, vim-micro 32), else 224)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (default 0)")


def main(argv: list[str] | None = None) -> int:
    # `mambapanel ...` (the console script of an installed package) or `python -m compute`.
    prog = "mambapanel" if Path(sys.argv[0]).name == "mambapanel" else "python -m compute"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "extract",
        help="hidden attention of n images into a resumable run (Dask)",
        description=extract.__doc__
        + " Re-running the same command into an existing run finishes it; other options "
        "are refused.",
    )
    add_model_options(p)
    p.add_argument(
        "--out",
        required=True,
        help="the run: a zarr store, a directory or an s3:// or gs:// URL (see --storage-options)",
    )
    p.add_argument(
        "--images",
        default="demo",
        help=f"a directory (flat, or class sub-folders giving labels) or a packaged source: "
        f"{', '.join(sorted(data.PACKAGED_SOURCES))} (default demo)",
    )
    p.add_argument("--n", type=POSITIVE, default=None, help="first n readable images (default all)")
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
    p.add_argument(
        "--channels",
        default="mean",
        choices=CHANNELS,
        help="how the attention of a block's channels becomes one matrix: their mean, or "
        "the mean of their magnitudes (default mean)",
    )
    p.add_argument(
        "--batch-size",
        type=POSITIVE,
        default=BATCH_SIZE,
        help=f"images per forward pass (default {BATCH_SIZE}); part of the run: float32 "
        "rounding differs with it, so a resume must use the run's own",
    )
    p.add_argument(
        "--shard-size",
        type=POSITIVE,
        default=SHARD_SIZE,
        help=f"images per task: the unit of resume; each task keeps one float64 sum per block "
        f"on disk until the run ends (default {SHARD_SIZE})",
    )
    p.add_argument(
        "--explanations",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store each image's relevance maps (rollout, gradient x attention) and, for Vim, "
        "each block's CLS row and column: one backward pass per batch (default on)",
    )
    p.add_argument(
        "--faithfulness-images",
        type=integer(0),
        default=FAITHFULNESS_IMAGES,
        help="run the perturbation test of the maps on the first this many images, 20 forward "
        f"passes per image and map (default {FAITHFULNESS_IMAGES}; 0: none)",
    )
    p.add_argument(
        "--keep",
        default=None,
        choices=("all", "sketch"),
        help="what a run keeps of the per-image matrices: all, or a sketch of each (what "
        "Algorithm 1 reduces) and the matrices of the first --keep-images images (default: "
        "all when they are estimated below 10 GB, else sketch; printed with the disk estimate)",
    )
    p.add_argument(
        "--keep-images",
        type=integer(0),
        default=KEEP_IMAGES,
        help=f"with --keep sketch: images whose matrices are kept, for the image view "
        f"(default {KEEP_IMAGES})",
    )
    p.add_argument(
        "--sketch-dim",
        type=POSITIVE,
        default=SKETCH_DIM,
        help=f"with --keep sketch: numbers per image and block (default {SKETCH_DIM}; the "
        "relative error of a squared distance has a standard deviation <= sqrt(2/k))",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", *DEVICES),
        help="where the workers compute: one GPU per worker (cuda), or cpu (default auto: "
        "cuda when every worker sees a GPU; a resumed run's own device)",
    )
    p.add_argument(
        "--backend",
        default="tiled",
        choices=BACKENDS,
        help="of the attention (default tiled; triton: a GPU kernel)",
    )
    p.add_argument(
        "--precision",
        default="float32",
        choices=PRECISIONS,
        help="of the model's forward and backward passes (default float32; bfloat16 for GPUs: "
        "the attention is still computed in float32 from what the scans read)",
    )
    p.add_argument(
        "--by-route",
        action="store_true",
        help="also store, per stage and block, each scan route's image-mean matrix "
        "(attention_mean_by_route: K more matrices per block, and K more scratch sums per "
        "shard); they sum to attention_mean, and the dashboard's patch view can show one "
        "route's attention",
    )
    add_cluster_options(p, "extract")
    p.set_defaults(handler=extract)

    p = commands.add_parser(
        "reduce",
        help="PCA / t-SNE / UMAP embeddings of a run",
        description=reduce.__doc__,
    )
    p.add_argument("run", help="a run made by `compute extract` (a path or a URL)")
    p.add_argument(
        "--methods",
        type=parse_names,
        default=["pca", "tsne", "umap"],
        help="comma-separated (default pca,tsne,umap)",
    )
    p.add_argument(
        "--seed",
        type=integer(0, 2**32 - 1),  # scikit-learn's and UMAP's random_state range
        default=0,
        help="random seed, recorded (default 0)",
    )
    add_cluster_options(p, "reduce")
    p.set_defaults(handler=reduce)

    p = commands.add_parser(
        "train",
        help="train a small VMamba with a patch order on a packaged dataset",
        description=train.__doc__,
    )
    from mambapanel import datasets
    from mambapanel.train import DEFAULT_SIZE, STORAGE_DTYPES, TrainConfig

    defaults = TrainConfig()
    p.add_argument("--model", default=defaults.model, choices=models.available())
    p.add_argument("--order", default=defaults.order, choices=orders.available())
    p.add_argument(
        "--data",
        default=defaults.dataset,
        choices=datasets.available(),
        help="demo: scikit-learn's digits, 20%% held out (default demo)",
    )
    p.add_argument("--epochs", type=POSITIVE, default=defaults.epochs)
    p.add_argument(
        "--out",
        required=True,
        help="checkpoint file to write: .pth (torch) or .safetensors (tensors and JSON "
        "metadata only, which no reader can be made to run code from)",
    )
    p.add_argument(
        "--size",
        type=POSITIVE,
        default=defaults.image_size,
        help=f"input side in pixels (default: a Vim's own, e.g. 32 for vim-micro; "
        f"{DEFAULT_SIZE} for VMamba)",
    )
    p.add_argument("--batch-size", type=POSITIVE, default=defaults.batch_size)
    p.add_argument(
        "--lr", type=positive_float, default=defaults.lr, help="peak AdamW learning rate"
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument(
        "--storage",
        default="float16",
        choices=STORAGE_DTYPES,
        help="dtype of the saved weights (default float16: half the size; the accuracy "
        "printed is measured with the saved weights)",
    )
    p.set_defaults(handler=train)

    from compute import demo as demo_runs
    from compute import findings

    findings.add_parser(commands)

    p = commands.add_parser(
        "serve",
        help="serve the dashboard with runs loaded (127.0.0.1 unless told otherwise)",
        description=serve.__doc__
        + " The README's Dashboard section says how to expose it (a proxy, or --basic-auth "
        "with TLS).",
    )
    p.add_argument(
        "runs", nargs="+", metavar="RUN", help="runs made by `compute extract` (paths or URLs)"
    )
    serving.add_arguments(p)
    p.set_defaults(handler=serve)

    p = commands.add_parser(
        "demo",
        help="the demo: runs of the trained demo models, reduced, served in the dashboard",
        description=demo.__doc__ + " Runs already built are reused, interrupted ones resumed.",
    )
    p.add_argument(
        "--runs", default="demo-runs", help="directory of the demo runs (default demo-runs)"
    )
    p.add_argument(
        "--models",
        "--orders",  # its name before the Vim demo models, which are not orders
        dest="models",
        type=parse_names,
        default=list(demo_runs.DEMO_MODELS),
        help=f"demo models to use (default all: {','.join(demo_runs.DEMO_MODELS)})",
    )
    p.add_argument(
        "--n",
        type=POSITIVE,
        default=demo_runs.DEMO_IMAGES,
        help=f"held-out digits per run (default {demo_runs.DEMO_IMAGES})",
    )
    p.add_argument(
        "--methods",
        type=parse_names,
        default=list(demo_runs.DEMO_METHODS),
        help="embeddings (default pca,tsne,umap)",
    )
    p.add_argument("--workers", type=POSITIVE, default=2, help="Dask worker processes (default 2)")
    p.add_argument("--no-serve", action="store_true", help="build the runs, do not serve")
    serving.add_arguments(p)
    p.set_defaults(handler=demo)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.command_line = f"{prog} {shlex.join(argv)}"  # what resumes the work, if it stops
    try:
        return args.handler(args)
    except MambapanelError as err:  # what the user can act on; anything else is a bug
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
