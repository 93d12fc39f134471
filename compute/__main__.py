"""Command line: `python -m compute demo` (more commands arrive with the compute issue)."""

from __future__ import annotations

import argparse
import sys
import time

from mambapanel import models, orders


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compute", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "demo",
        help="hidden attention of every block on the packaged images, summarised",
        description=demo.__doc__,
    )
    p.add_argument("--model", default="vmamba-micro", choices=models.available())
    p.add_argument(
        "--order",
        default=None,
        choices=orders.available(),
        help="patch order (default: the checkpoint's, else cross)",
    )
    p.add_argument("--checkpoint", default=None, help="official or `compute train` checkpoint")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (default 0)")
    p.set_defaults(run=demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
