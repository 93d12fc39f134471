"""Compare our Vim models with the official hustvl/Vim ones on a CPU (default ``vim-tiny``).

Two interpreters take part, because the official code needs timm/einops/triton that ours
does not::

    .venv/bin/python tools/compare_vim_official.py --vim-repo /tmp/vim_official \\
        --official-python /tmp/vim_offvenv/bin/python

1. In ``--official-python`` (stage ``official``): build the official model with a fixed
   seed (``tools/vim_official.py``), perturb every parameter with a seeded generator so that
   no norm, skip (D, D_b), A or bias stays at its trivial init, save ``{"model": state_dict}``
   to ``ckpt.pth``, and run a fixed random batch (2 x 3 x 224 x 224) in float32 and float64
   (``.double()``), recording logits and the input and output of every mixer with hooks.
2. In this interpreter: ``models.build(MODEL, checkpoint=ckpt.pth)`` (strict), the same batch
   and hooks in float32 and float64; our hidden states are in token order (patches, then the
   CLS token), so they are laid out in the official sequence (CLS in the middle) before the
   comparison. Prints max abs / rel differences of the logits, then of every hooked
   activation in forward order (the first that departs is where the two differ).

Official code is imported, never copied; the run-time patches are listed in
``vim_official.CPU_PATCHES`` and ``F64_PATCHES``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from compare_official import (  # noqa: E402  (tools/ is not a package)
    build_strictly,
    check_load,
    common_arguments,
    diff,
    official_meta,
    perturb_,
    report,
    run_official_stage,
    run_with_hooks,
    verdict,
    workdir,
)


def hook_names(depth: int) -> list[str]:
    """Modules whose inputs (``:in``) or outputs are compared, in forward order."""
    names = ["patch_embed"]
    for i in range(depth):
        names += [f"layers.{i}.mixer:in", f"layers.{i}.mixer"]
    return [*names, "head:in"]  # head:in is the CLS token after norm_f


def vim_perturbation(name: str, p, r) -> None:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("A_log", "A_b_log"):
        p.add_(0.5 * r)
    elif leaf in ("D", "D_b"):
        p.copy_(1.0 + 0.3 * r)
    elif name.endswith(("dt_proj.bias", "dt_proj_b.bias")):
        p.add_(0.3 * r)
    elif name.endswith(("norm.weight", "norm_f.weight")):
        p.copy_(1.0 + 0.2 * r)
    elif leaf == "bias":
        p.copy_(0.05 * r)
    elif leaf in ("cls_token", "pos_embed"):
        p.add_(0.02 * r)
    else:
        p.mul_(1.5).add_(0.01 * r)


# --------------------------------------------------------------------------------------------
# Stage "official": runs in the official virtual environment.


def stage_official(args) -> int:
    import torch
    from vim_official import F64_PATCHES, OFFICIAL_NAMES, OfficialVim

    off = OfficialVim(args.vim_repo)
    model, config = off.build(args.model, seed=args.seed)
    perturb_(model, args.seed + 1, vim_perturbation)
    model.eval()
    work = Path(args.workdir)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"model": sd}, work / "ckpt.pth")
    # The layout upstream's main.py saves during training, an argparse.Namespace included.
    torch.save(
        {
            "model": sd,
            "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
            "lr_scheduler": {},
            "epoch": 0,
            "model_ema": sd,
            "scaler": {},
            "args": argparse.Namespace(model=OFFICIAL_NAMES[args.model], lr=5e-4),
        },
        work / "ckpt_training_format.pth",
    )

    g = torch.Generator().manual_seed(args.seed + 2)
    x = torch.randn(2, 3, 224, 224, generator=g)
    torch.save(x, work / "inputs.pt")
    names = hook_names(len(model.layers))
    logits32, acts32 = run_with_hooks(model, x, names)
    torch.save({"logits": logits32, "acts": acts32}, work / "official_f32.pt")
    with off.float64_patches():
        logits64, acts64 = run_with_hooks(model.double(), x.double(), names)
    torch.save({"logits": logits64, "acts": acts64}, work / "official_f64.pt")

    meta = {
        "source": f"hustvl/Vim {off.commit}",
        "model": OFFICIAL_NAMES[args.model],
        "patches": off.patches + F64_PATCHES,
        "if_divide_out": sorted({layer.mixer.if_divide_out for layer in model.layers}),
        "config": {k: v for k, v in config.items() if not isinstance(v, tuple)},
        "official_f32_vs_f64": diff(logits32, logits64.float()),
        "torch": torch.__version__,
    }
    (work / "official_meta.json").write_text(json.dumps(meta, indent=1))
    return 0


# --------------------------------------------------------------------------------------------
# Stage "ours" (default): runs in the project's environment and drives the official stage.


def as_sequence(acts: dict, routes) -> dict:
    """Our token-order hidden states laid out in the official sequence (route 0)."""
    return {n: a[:, routes[0]] if "mixer" in n else a for n, a in acts.items()}


def stage_ours(args) -> int:
    import torch

    sys.path.insert(0, str(ROOT))
    from mambapanel import models
    from mambapanel.models.vim import token_routes

    work = workdir(args)
    failed = run_official_stage(args, work, __file__, ["--vim-repo", str(args.vim_repo)])
    if failed:
        return failed
    meta = official_meta(work)
    print(
        f"official {meta['model']}: {meta['config']}; "
        f"mixers' if_divide_out: {meta['if_divide_out']}"
    )
    ours = build_strictly(models, args.model, work / "ckpt.pth")
    if ours is None:
        return 2
    if args.tamper:
        with torch.no_grad():
            ours.layers[len(ours.layers) // 2].mixer.D_b[0] += 0.05
        print(f"tampered: layers.{len(ours.layers) // 2}.mixer.D_b[0] += 0.05")
    x = torch.load(work / "inputs.pt")
    names = hook_names(len(ours.layers))
    routes = token_routes(ours.order, *ours.grid)
    results = {}
    for title, dtype, ref_file in (
        ("float32", torch.float32, "official_f32.pt"),
        ("float64", torch.float64, "official_f64.pt"),
    ):
        ref = torch.load(work / ref_file)
        logits, acts = run_with_hooks(ours.to(dtype), x.to(dtype), names)
        results[title] = report(title, logits, as_sequence(acts, routes), ref, args.show_all)
        del ref, acts

    print("training-format file ({model, model_ema, optimizer, args: Namespace, ...}): ", end="")
    check_load(ours, lambda: models.build(args.model, checkpoint=work / "ckpt_training_format.pth"))
    return verdict(results, args, work)


def main(argv=None) -> int:
    from vim_official import OFFICIAL_NAMES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vim-repo", type=Path, required=True, help="checkout of hustvl/Vim")
    p.add_argument(
        "--official-python",
        default="/tmp/vim_offvenv/bin/python",
        help="interpreter with torch, timm==0.4.12, einops, triton",
    )
    p.add_argument("--model", default="vim-tiny", choices=OFFICIAL_NAMES)
    p.add_argument(
        "--tamper", action="store_true", help="change one D_b entry of ours: must MISMATCH"
    )
    common_arguments(p)
    args = p.parse_args(argv)
    return stage_official(args) if args.stage == "official" else stage_ours(args)


if __name__ == "__main__":
    sys.exit(main())
