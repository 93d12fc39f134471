"""Benchmark of hidden-attention extraction for VMamba and Vim layers (a script, not a test).

Stage-0 block of vmamba-tiny-s1l8 at 224x224 (L = 3136, D = 96, N = 1, K = 4) on the CPU:
  - tiled time / torch.matmul time for the same FLOP count (the ceiling; target <= 2)
  - reference time / tiled time at L = 784 (stage-1 block; target >= 100)
One Vim-S layer at 224 px (T = 197, D = 768, N = 16) and one Vim-T stride-8 layer (T = 730):
  - tiled / the same-FLOP matmul (target <= 3 at T = 730), reference / tiled (target >= 100)
  - the whole extraction of vim-tiny (24 layers) per image
With a CUDA device it adds the Triton kernel's figures. All ratios come from this one run.

    python benchmarks/bench_attention.py [--repeats 5] [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from mambapanel import attention, data, models
from mambapanel.attention.vim import vim_attention
from mambapanel.models.scan import along_routes, selective_scan, selective_scan_reference

MARK_START, MARK_END = "<!-- bench_attention:start -->", "<!-- bench_attention:end -->"


def median_seconds(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up: allocator, caches, Triton compilation
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def block_inputs(model: models.VSSM, stage: int, block: int, device: str):
    """Scan inputs of (stage, block) for the two photographs packaged with scikit-learn."""
    images = data.preprocess([s.image for s in data.sample_images()], 224)[:1].to(device)
    with torch.no_grad(), attention.capture(model, blocks=[(stage, block)]) as cap:
        model(images)
    return cap.inputs(stage, block)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"model name\s*:\s*(.*)", cpuinfo.read_text())
        cpu = names[0] if names else cpu
    return (
        f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def run(repeats: int) -> list[str]:
    torch.manual_seed(0)
    cpu_sync = lambda: None  # noqa: E731
    model = models.build("vmamba-tiny-s1l8")  # random weights: Δ, A as initialised upstream
    lines = [f"Machine: {machine()}", ""]

    inputs = block_inputs(model, 0, 0, "cpu")
    K, L = inputs.routes.shape
    D, N = inputs.A.shape[1:]
    tiled = median_seconds(lambda: attention.hidden_attention(inputs), repeats, cpu_sync)
    # The tiled form does K·L²/2·(D·N) multiply-adds; so does a (L x DN) @ (DN x K·L/2) GEMM.
    a, b = torch.randn(L, D * N), torch.randn(D * N, K * L // 2)
    matmul = median_seconds(lambda: torch.matmul(a, b), repeats, cpu_sync)
    route = median_seconds(
        lambda: attention.route_backend("tiled")(
            inputs.delta[:, 0], inputs.A[0], inputs.B[:, 0], inputs.C[:, 0]
        ),
        repeats,
        cpu_sync,
    )
    # The same FLOPs with the block's own L x L output: a stricter ceiling (half the writes).
    a_square, b_square = torch.randn(L, K * D * N // 2), torch.randn(K * D * N // 2, L)
    matmul_square = median_seconds(lambda: torch.matmul(a_square, b_square), repeats, cpu_sync)
    b_route = torch.randn(D * N, L // 2)
    matmul_route = median_seconds(lambda: torch.matmul(a, b_route), repeats, cpu_sync)
    us = along_routes(inputs.u.flatten(2), inputs.routes)
    scan_args = (us, inputs.delta, inputs.A, inputs.B, inputs.C, inputs.Ds)
    scan = median_seconds(lambda: selective_scan(*scan_args), repeats, cpu_sync)
    scan_loop = median_seconds(lambda: selective_scan_reference(*scan_args), repeats, cpu_sync)
    lines += [
        f"Selective scan of the stage-0 block below (models/scan.py), K = {K} routes of L = {L}:",
        f"  two-level chunked scan            {scan * 1e3:8.1f} ms",
        f"  step-by-step recurrence           {scan_loop * 1e3:8.1f} ms  "
        f"(ratio {scan_loop / scan:.1f})",
        "",
        f"Stage-0 block, L = {L}, D = {D}, N = {N}, K = {K}, reduce=mean, float32, CPU:",
        f"  tiled (whole block, patch space)  {tiled * 1e3:8.1f} ms",
        f"  torch.matmul, same FLOP count     {matmul * 1e3:8.1f} ms",
        f"  ratio tiled / matmul              {tiled / matmul:8.2f}   (target <= 2)",
        f"  matmul, same FLOPs, L x L output  {matmul_square * 1e3:8.1f} ms: ratio "
        f"{tiled / matmul_square:.2f}",
        f"  one route, step space             {route * 1e3:8.1f} ms  "
        f"vs matmul {matmul_route * 1e3:.1f} ms: ratio {route / matmul_route:.2f}",
        "",
    ]

    inputs = block_inputs(model, 1, 0, "cpu")
    K, L = inputs.routes.shape
    D = inputs.A.shape[1]
    tiled = median_seconds(lambda: attention.hidden_attention(inputs), repeats, cpu_sync)
    ref = median_seconds(
        lambda: attention.hidden_attention(inputs, backend="reference"),
        max(1, repeats // 2),
        cpu_sync,
    )
    lines += [
        f"Stage-1 block, L = {L}, D = {D}, K = {K}, reduce=mean, float32, CPU:",
        f"  reference                         {ref * 1e3:8.1f} ms",
        f"  tiled                             {tiled * 1e3:8.1f} ms",
        f"  ratio reference / tiled           {ref / tiled:8.1f}   (target >= 100)",
    ]

    lines += ["", *vim_figures(repeats, cpu_sync)]

    if torch.cuda.is_available():
        lines += ["", f"GPU: {torch.cuda.get_device_name()}"]
        gpu_model = model.cuda()
        gpu_sync = torch.cuda.synchronize
        for stage in (0, 1):
            gpu_inputs = block_inputs(gpu_model, stage, 0, "cuda")
            L = gpu_inputs.routes.shape[1]
            times = {
                backend: median_seconds(
                    lambda b=backend, i=gpu_inputs: attention.hidden_attention(i, backend=b),
                    repeats,
                    gpu_sync,
                )
                for backend in ("triton", "tiled")
            }
            lines.append(
                f"  stage {stage} block (L = {L}): triton {times['triton'] * 1e3:.2f} ms, "
                f"tiled (torch on GPU) {times['tiled'] * 1e3:.2f} ms, "
                f"ratio {times['tiled'] / times['triton']:.1f}"
            )
    return lines


# The reference's memory is D·N·L² per image: it is timed on this many channels and scaled
# to all of them (its cost is linear in D; a whole Vim-T stride-8 layer would need 13 GB).
REFERENCE_CHANNELS = 32


def vim_figures(repeats: int, sync: Callable[[], None]) -> list[str]:
    """One layer of Vim-S (T = 197) and of Vim-T stride 8 (T = 730): tiled against the same
    FLOPs of matmul and against the reference; the whole vim-tiny extraction per image."""
    lines = []
    for name in ("vim-small", "vim-tiny-stride8"):
        torch.manual_seed(0)
        inputs = block_inputs(models.build(name), 0, 0, "cpu")
        K, T = inputs.routes.shape
        D, N = inputs.A.shape[1:]
        tiled = median_seconds(lambda i=inputs: vim_attention(i), repeats, sync)
        # Two routes, each over half the T x T pairs: K·T²/2·(D·N) multiply-adds, as a
        # (T x DN) @ (DN x K·T/2) product.
        a, b = torch.randn(T, D * N), torch.randn(D * N, K * T // 2)
        matmul = median_seconds(lambda a=a, b=b: torch.matmul(a, b), repeats, sync)
        some = slice(0, REFERENCE_CHANNELS)
        part = replace(
            inputs,
            delta=inputs.delta[:, :, some],
            A=inputs.A[:, some],
            Ds=inputs.Ds[:, some],
            u=inputs.u[:, :, some],
        )
        reference = median_seconds(
            lambda p=part: vim_attention(p, backend="reference"), max(1, repeats // 2), sync
        ) * (D / REFERENCE_CHANNELS)
        lines += [
            f"{name} layer, T = {T} tokens, D = {D}, N = {N}, K = {K}, reduce=mean, float32, CPU:",
            f"  tiled                             {tiled * 1e3:8.1f} ms",
            f"  torch.matmul, same FLOP count     {matmul * 1e3:8.1f} ms",
            f"  ratio tiled / matmul              {tiled / matmul:8.2f}   (target <= 3 at T = 730)",
            f"  reference ({REFERENCE_CHANNELS} of {D} channels, x{D // REFERENCE_CHANNELS})"
            f"    {reference * 1e3:8.1f} ms",
            f"  ratio reference / tiled           {reference / tiled:8.1f}   (target >= 100)",
            "",
        ]
    torch.manual_seed(0)
    model = models.build("vim-tiny")
    image = data.preprocess([data.sample_images()[0].image], 224)

    def extract_all() -> None:
        with torch.no_grad(), attention.capture(model) as cap:
            model(image)
            for block in range(len(model.layers)):
                cap.attention(stage=0, block=block)
                cap.cls_attention(stage=0, block=block)

    forward = median_seconds(lambda: model(image), max(1, repeats // 2), sync)
    whole = median_seconds(extract_all, max(1, repeats // 2), sync)
    lines += [
        "vim-tiny, one 224 px image, all 24 layers (patch matrices and CLS row and column):",
        f"  forward pass alone                {forward * 1e3:8.1f} ms",
        f"  forward and extraction            {whole * 1e3:8.1f} ms per image",
    ]
    return lines


def write_results(path: Path, lines: list[str], command: str) -> None:
    section = "\n".join(
        [
            MARK_START,
            "## Hidden attention (`benchmarks/bench_attention.py`)",
            "",
            f"`{command}`, {time.strftime('%Y-%m-%d')}",
            "",
            "```",
            *lines,
            "```",
            MARK_END,
        ]
    )
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if MARK_START in text:
        before, rest = text.split(MARK_START, 1)
        text = before + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median counts")
    parser.add_argument("--results", type=Path, help="write the figures into this markdown file")
    args = parser.parse_args()
    lines = run(args.repeats)
    print("\n".join(lines))
    if args.results:
        write_results(
            args.results, lines, f"python benchmarks/bench_attention.py --repeats {args.repeats}"
        )
        print(f"written to {args.results}")


if __name__ == "__main__":
    main()
