"""Compare our ``vmamba-tiny-s1l8`` with the official VMamba ``vssm1_tiny_0230s`` on a CPU.

Two interpreters take part, because the official code needs timm/fvcore/einops that ours
does not::

    .venv/bin/python tools/compare_official.py --vmamba-repo /tmp/vmamba_official \\
        --official-python /tmp/offvenv/bin/python

1. In ``--official-python`` (stage ``official``): build the official model from its config
   (see ``tools/official_manifest.py``) with a fixed seed, perturb every parameter with a
   seeded generator so that no LayerNorm, skip (Ds), A or bias stays at its trivial init,
   save ``{"model": state_dict}`` to ``ckpt.pth``, and run a fixed random batch (2 x 3 x 224 x
   224) in float32 and float64 (``.double()``), recording logits and intermediate
   activations with forward hooks.
2. In this interpreter: ``models.build("vmamba-tiny-s1l8", checkpoint=ckpt.pth)`` (strict),
   run the same batch with the same hooks in float32 and float64, and print max abs / max
   rel differences of the logits, then of every hooked activation in forward order (the first
   that departs is where the two implementations differ).

Official code is imported, never copied; the run-time patches are listed in
``official_manifest.CPU_PATCHES`` plus ``F64_PATCHES`` below (float64 only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

F64_PATCHES = [
    "float64 run only: the name `torch` inside the official vmamba module is replaced by a "
    "proxy of torch whose `torch.float` is torch.float64, so forward_corev2's upcasts "
    "`A_logs.to(torch.float)`, `Ds.to(torch.float)`, `dt_projs_bias...to(torch.float)` keep "
    "float64 instead of rounding to float32.",
    "float64 run only: vmamba.selective_scan_fn is replaced by a dtype-preserving sequential "
    "reference (same recurrence and signature as csms6s.selective_scan_torch, minus its "
    ".float() casts); upstream's scan casts to float32, which then fails in the float64 "
    "LayerNorm2d. In float32 it is checked against upstream's own scan (see 'scan check').",
]


def hook_names(depths=(2, 2, 8, 2)) -> list[str]:
    """Modules whose outputs are compared, in forward order."""
    names = [f"patch_embed.{i}" for i in (0, 2, 4, 5, 7)] + ["patch_embed"]
    for i, depth in enumerate(depths):
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}"
            names += [
                f"{b}.norm",
                f"{b}.op.in_proj",
                f"{b}.op.conv2d",
                f"{b}.op.out_norm:in",  # the merged scan output, before out_norm
                f"{b}.op.out_norm",
                f"{b}.op",
                f"{b}.norm2",
                f"{b}.mlp.fc1",
                f"{b}.mlp",
                b,
            ]
        if i < len(depths) - 1:
            names.append(f"layers.{i}.downsample")
    names += ["classifier.norm", "classifier"]
    return names


def run_with_hooks(model, x, names):
    import torch

    mods = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        mname, _, kind = name.partition(":")
        mod = mods.get(mname)
        if mod is None:
            continue
        if kind == "in":
            handles.append(
                mod.register_forward_pre_hook(
                    lambda m, args, name=name: acts.__setitem__(name, args[0].detach().clone())
                )
            )
        else:
            handles.append(
                mod.register_forward_hook(
                    lambda m, args, out, name=name: acts.__setitem__(name, out.detach().clone())
                )
            )
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits.detach().clone(), acts


def diff(a, b) -> tuple[float, float, float]:
    """(max |a-b|, max |a-b| / max |b|, max elementwise |a-b| / |b| over |b| > 1e-3 max |b|)."""
    a, b = a.double(), b.double()
    d = (a - b).abs()
    scale = b.abs().max().clamp_min(1e-300)
    big = b.abs() > 1e-3 * scale
    elem = (d[big] / b.abs()[big]).max().item() if big.any() else 0.0
    return d.max().item(), (d.max() / scale).item(), elem


# --------------------------------------------------------------------------------------------
# Stage "official": runs in the official virtual environment.


def scan_preserving_dtype(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    delta_bias=None,
    delta_softplus=True,
    oflex=True,
    backend=None,
    *args,
    **kwargs,
):
    """Sequential selective scan in the input dtype.

    u, delta r(Bt, K*D, L); A r(K*D, N); B, C r(Bt, K, N, L); D, delta_bias r(K*D).
    """
    import torch
    import torch.nn.functional as F

    Bt, K, N, L = B.shape
    KD = u.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx = B.repeat_interleave(KD // K, dim=1)  # (Bt, K*D, N, L): channel k*D+d uses B[:, k]
    Cx = C.repeat_interleave(KD // K, dim=1)
    h = u.new_zeros(Bt, KD, N)
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * Bx[:, :, :, t] * u[:, :, t, None]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    return y if D is None else y + u * D[:, None]


def perturb_(model, seed: int, rule=None) -> None:
    """Seeded, deterministic perturbation so that every parameter matters in the check;
    ``rule(name, parameter, noise)`` changes one parameter (default: VMamba's)."""
    import torch

    rule = rule or vmamba_perturbation
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            rule(name, p, torch.randn(p.shape, generator=g, dtype=p.dtype))


def vmamba_perturbation(name: str, p, r) -> None:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "A_logs":
        p.copy_(0.7 * r)  # A = -exp(A_logs) in about [-4, -0.25]
    elif leaf == "Ds":
        p.copy_(1.0 + 0.3 * r)
    elif leaf == "dt_projs_bias":
        p.add_(0.3 * r)
    elif (
        "norm" in name
        or name.startswith("patch_embed.2")
        or name.startswith("patch_embed.7")
        or ".downsample.3" in name
    ) and p.dim() == 1:
        p.copy_((1.0 + 0.2 * r) if leaf == "weight" else 0.1 * r)
    elif leaf == "bias":
        p.copy_(0.05 * r)
    elif p.dim() >= 2 and leaf == "weight":
        p.mul_(1.5).add_(0.01 * r)
    else:
        p.add_(0.02 * r)


def stage_official(args) -> int:
    import torch

    sys.path.insert(0, str(HERE))
    from official_manifest import Official

    torch.set_num_threads(max(1, torch.get_num_threads()))
    off = Official(args.vmamba_repo)
    V = off.vmamba
    model, _ = off.build(seed=args.seed)
    perturb_(model, args.seed + 1)
    model.eval()
    work = Path(args.workdir)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"model": sd}, work / "ckpt.pth")

    # A second file with every Linear2d weight stored conv-shaped (out, in, 1, 1), which the
    # official Linear2d._load_from_state_dict accepts; check that it does.
    lin2d = [n + ".weight" for n, m in model.named_modules() if isinstance(m, V.Linear2d)]
    sd4 = {k: (v[:, :, None, None].clone() if k in lin2d else v) for k, v in sd.items()}
    torch.save({"model_ema": sd4}, work / "ckpt_conv_shaped_ema.pth")
    fresh, _ = off.build(seed=args.seed + 7)
    loaded = torch.load(work / "ckpt_conv_shaped_ema.pth")["model_ema"]
    res = fresh.load_state_dict({k: v.clone() for k, v in loaded.items()}, strict=True)
    conv_shaped_ok = (
        not res.missing_keys
        and not res.unexpected_keys
        and all(
            torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), sd.values(), strict=True)
        )
    )

    # A file laid out like upstream's utils.save_checkpoint_ema writes it during training
    # (the released *_ckpt_epoch_N.pth names suggest they are such files): besides "model"
    # and "model_ema" it pickles the yacs CfgNode config and the optimizer state.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.save(
        {
            "model": sd,
            "optimizer": opt.state_dict(),
            "lr_scheduler": {},
            "max_accuracy": 0.0,
            "scaler": {},
            "epoch": 0,
            "config": off.load_config(),
            "model_ema": sd,
            "max_accuray_ema": 0.0,
        },
        work / "ckpt_training_format.pth",
    )

    g = torch.Generator().manual_seed(args.seed + 2)
    x = torch.randn(2, 3, 224, 224, generator=g)
    torch.save(x, work / "inputs.pt")
    names = hook_names()

    logits32, acts32 = run_with_hooks(model, x, names)
    torch.save({"logits": logits32, "acts": acts32}, work / "official_f32.pt")

    # Scan check: our dtype-preserving scan against upstream's selective_scan_torch, float32.
    real_scan = V.selective_scan_fn
    V.selective_scan_fn = scan_preserving_dtype
    try:
        logits32_sub, _ = run_with_hooks(model, x, [])
    finally:
        V.selective_scan_fn = real_scan

    # float64: redirect torch.float to float64 inside the official module; dtype-keeping scan.
    import torch as real_torch

    class _TorchF64(types.ModuleType):
        def __getattr__(self, name):
            return getattr(real_torch, name)

    proxy = _TorchF64("torch")
    proxy.float = real_torch.float64
    real_mod_torch = V.torch
    V.torch, V.selective_scan_fn = proxy, scan_preserving_dtype
    try:
        model64 = model.double()
        logits64, acts64 = run_with_hooks(model64, x.double(), names)
    finally:
        V.torch, V.selective_scan_fn = real_mod_torch, real_scan
    torch.save({"logits": logits64, "acts": acts64}, work / "official_f64.pt")

    meta = {
        "source": f"MzeroMiko/VMamba {off.commit}",
        "patches": off.patches + F64_PATCHES,
        "scan_check_f32": diff(logits32_sub, logits32),
        "official_f32_vs_f64": diff(logits32, logits64.float()),
        "conv_shaped_linear2d_loads_in_official": conv_shaped_ok,
        "torch": torch.__version__,
    }
    (work / "official_meta.json").write_text(json.dumps(meta, indent=1))
    return 0


# --------------------------------------------------------------------------------------------
# Stage "ours" (default): runs in the project's environment and drives the official stage.


def report(title, ours_logits, ours_acts, ref, show_all: bool) -> dict:
    print(f"\n== {title}")
    a, r, e = diff(ours_logits, ref["logits"])
    print(
        f"logits: max abs diff {a:.3e}   max rel diff (to max|ref|) {r:.3e}   "
        f"max elementwise rel {e:.3e}   (max|ref| {ref['logits'].abs().max().item():.3e})"
    )
    print(f"argmax agree: {(ours_logits.argmax(-1) == ref['logits'].argmax(-1)).tolist()}")
    missing = [n for n in ref["acts"] if n not in ours_acts]
    if missing:
        print(f"(no module in ours for {len(missing)} hooked names, e.g. {missing[:5]})")
    worst, first_bad = (0.0, ""), None
    for name, ref_act in ref["acts"].items():
        if name not in ours_acts:
            continue
        o = ours_acts[name]
        if o.shape != ref_act.shape:
            print(f"  {name}: SHAPE ours {tuple(o.shape)} vs official {tuple(ref_act.shape)}")
            first_bad = first_bad or name
            continue
        a2, r2, _ = diff(o, ref_act)
        if r2 > worst[0]:
            worst = (r2, name)
        tol = 1e-4 if ref_act.dtype.itemsize == 4 else 1e-10
        if r2 > tol and first_bad is None:
            first_bad = name
        if show_all:
            print(f"  {name:40s} abs {a2:.3e}  rel {r2:.3e}")
    print(
        f"activations: worst rel diff {worst[0]:.3e} at {worst[1] or '-'}; "
        f"first above tolerance: {first_bad or 'none'}"
    )
    return {
        "logits": {"max_abs": a, "max_rel": r, "max_elem_rel": e},
        "worst_activation": worst,
        "first_bad": first_bad,
    }


def stage_ours(args) -> int:
    import torch

    sys.path.insert(0, str(ROOT))
    from mambapanel import models

    work = workdir(args)
    failed = run_official_stage(args, work, __file__, ["--vmamba-repo", str(args.vmamba_repo)])
    if failed:
        return failed
    meta = official_meta(work)
    print(
        f"scan check (our f32 dtype-keeping scan vs upstream selective_scan_torch), logits: "
        f"max abs {meta['scan_check_f32'][0]:.3e}, rel {meta['scan_check_f32'][1]:.3e}"
    )
    ours = build_strictly(models, args.model, work / "ckpt.pth")
    if ours is None:
        return 2
    x = torch.load(work / "inputs.pt")
    names = hook_names(tuple(getattr(ours, "depths", (2, 2, 8, 2))))
    results = {}
    ref32 = torch.load(work / "official_f32.pt")
    lo32, ac32 = run_with_hooks(ours, x, names)
    results["float32"] = report("float32", lo32, ac32, ref32, args.show_all)
    del ref32, ac32
    ref64 = torch.load(work / "official_f64.pt")
    ours64 = ours.double()
    lo64, ac64 = run_with_hooks(ours64, x.double(), names)
    results["float64"] = report("float64", lo64, ac64, ref64, args.show_all)

    # Conv-shaped Linear2d weights under "model_ema": the official loader accepts them.
    print(
        f"\nconv-shaped (out,in,1,1) Linear2d weights under 'model_ema': official loads: "
        f"{meta['conv_shaped_linear2d_loads_in_official']}",
        end="; ",
    )
    check_load(ours, lambda: models.build(args.model, checkpoint=work / "ckpt_conv_shaped_ema.pth"))
    print("training-format file ({model, model_ema, optimizer, config: CfgNode, ...}): ", end="")
    check_load(ours, lambda: models.build(args.model, checkpoint=work / "ckpt_training_format.pth"))
    return verdict(results, args, work)


# --------------------------------------------------------------------------------------------
# Shared with tools/compare_vim_official.py.


def workdir(args) -> Path:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cmp_official_"))
    work.mkdir(parents=True, exist_ok=True)
    return work


def run_official_stage(args, work: Path, script: str, repo: list[str]) -> int:
    """Run ``script``'s official stage in ``--official-python`` (unless ``--reuse`` finds its
    outputs in ``work``); its exit status."""
    if args.reuse and (work / "official_f64.pt").exists():
        return 0
    cmd = [
        args.official_python,
        str(Path(script).resolve()),
        *("--stage", "official", "--workdir", str(work), "--seed", str(args.seed)),
        *("--model", args.model, *repo),
    ]
    print("official stage:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stdout[-4000:], proc.stderr[-8000:], sep="\n")
    return proc.returncode


def official_meta(work: Path) -> dict:
    """The official stage's ``official_meta.json``, its source and patches printed."""
    meta = json.loads((work / "official_meta.json").read_text())
    print(f"official: {meta['source']} (torch {meta['torch']})")
    print("patches applied to the official code at run time:")
    for p in meta["patches"]:
        print(f"  - {p}")
    print(
        f"official f32 vs official f64 logits: max abs {meta['official_f32_vs_f64'][0]:.3e}, "
        f"rel {meta['official_f32_vs_f64'][1]:.3e}"
    )
    return meta


def build_strictly(models, name: str, ckpt: Path):
    """``models.build(name, checkpoint=ckpt)`` in eval mode, or None (said why) if it fails."""
    try:
        ours = models.build(name, checkpoint=ckpt)
    except Exception as err:
        print(f"\nSTRICT LOAD FAILED: {type(err).__name__}: {err}")
        return None
    print(f"\nstrict load of {ckpt.name} into models.build({name!r}): ok")
    return ours.eval()


def check_load(ours, build) -> None:
    """Print whether ``build()`` loads, and whether it gives the weights of ``ours``."""
    import torch

    try:
        model = build()
    except Exception as err:
        print(f"ours loads: False ({type(err).__name__}: {str(err).splitlines()[0][:160]})")
        return
    pairs = zip(model.state_dict().values(), ours.float().state_dict().values(), strict=True)
    same = all(torch.equal(a, b) for a, b in pairs)
    print(f"ours loads: True (weights equal: {same})")


def verdict(results: dict, args, work: Path) -> int:
    """Write ``--json``, remove a temporary ``work``, print and return the verdict: logits
    within 1e-4 (float32) and 1e-10 (float64) of the official ones, relative to their max."""
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    ok = (
        results["float32"]["logits"]["max_rel"] < 1e-4
        and results["float64"]["logits"]["max_rel"] < 1e-10
    )
    print("\nRESULT:", "MATCH" if ok else "MISMATCH")
    return 0 if ok else 1


def common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the official outputs here (default: a temp dir)")
    p.add_argument(
        "--reuse", action="store_true", help="reuse the official outputs already in --workdir"
    )
    p.add_argument("--keep", action="store_true", help="do not delete the temp dir")
    p.add_argument("--show-all", action="store_true", help="print every hooked activation")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--stage", choices=["ours", "official"], default="ours", help=argparse.SUPPRESS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vmamba-repo", type=Path, required=True)
    p.add_argument(
        "--official-python",
        default="/tmp/offvenv/bin/python",
        help="interpreter with torch, timm==0.4.12, einops, fvcore, packaging, triton",
    )
    p.add_argument("--model", default="vmamba-tiny-s1l8")
    common_arguments(p)
    args = p.parse_args(argv)
    return stage_official(args) if args.stage == "official" else stage_ours(args)


if __name__ == "__main__":
    sys.exit(main())
