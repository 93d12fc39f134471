"""Benchmark of hidden-attention extraction for one VMamba block (a script, not a test).

Stage-0 block of vmamba-tiny-s1l8 at 224x224 (L = 3136, D = 96, N = 1, K = 4) on the CPU:
  - tiled time / torch.matmul time for the same FLOP count (the ceiling; target <= 2)
  - reference time / tiled time at L = 784 (stage-1 block; target >= 100)
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
from pathlib import Path

import torch

from mambapanel import attention, data, models
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
