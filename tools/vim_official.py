"""Import the official Vim (hustvl/Vim) on a CPU, and write the state_dict manifests of its
ImageNet models.

Runs against a checkout of the upstream repository, in a separate virtual environment that has
what ``vim/models_mamba.py`` imports (torch, timm==0.4.12, einops; triton for the import of
``mamba_ssm.ops.triton.layer_norm``). Nothing of the upstream code is copied here: it is
imported from ``--vim-repo`` and patched at run time, as listed in ``CPU_PATCHES``, so that it
imports and runs on a CPU::

    /tmp/vim_offvenv/bin/python tools/vim_official.py --vim-repo /tmp/vim_official

writes ``tests/data/<official name>_manifest.json`` for every model in ``OFFICIAL_NAMES``.
``OfficialVim`` is also used by ``tools/compare_vim_official.py``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from official_manifest import (  # noqa: E402  (tools/ is not a package)
    _StubFinder,
    _torchvision_importable,
    dumps,
    source_commit,
)

# Our name -> upstream's builder in vim/models_mamba.py (the names its README evaluates with).
OFFICIAL_NAMES = {
    "vim-tiny": "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "vim-tiny-stride8": (
        "vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
    ),
    "vim-small": (
        "vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
    ),
    "vim-small-stride8": (
        "vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
    ),
    "vim-base": (
        "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2"
    ),
}

# What is patched in the upstream code at run time (nothing is edited on disk).
CPU_PATCHES = [
    "stub modules (sys.meta_path) for the CUDA extensions selective_scan_cuda and "
    "causal_conv1d_cuda, imported at module level but called only by the fused CUDA paths "
    "replaced below; for transformers (mamba_ssm.utils.generation / hf import it, Vim does not "
    "use it) and, when it cannot be imported, torchvision (timm==0.4.12 imports it).",
    "mamba_ssm.ops.selective_scan_interface.selective_scan_fn -> upstream's own "
    "selective_scan_ref (the pure-torch sequential reference, same signature).",
    "mamba_ssm.ops.selective_scan_interface.causal_conv1d_fn -> upstream's own "
    "causal_conv1d.causal_conv1d_interface.causal_conv1d_ref (pure torch, same signature).",
    "mamba_ssm.modules.mamba_simple.mamba_inner_fn_no_out_proj (the fused CUDA conv + x_proj + "
    "dt_proj + scan + gate of each bimamba v2 route) -> upstream's own mamba_inner_ref (its "
    "pure-torch reference of the same computation) called with an identity out_proj and no "
    "bias, its (b, l, d) result transposed back to the (b, d, l) that mamba_simple expects.",
    "models_mamba.rms_norm_fn (fused add + RMSNorm): not patched; float32 runs use upstream's "
    "Triton kernel itself, run by the Triton interpreter (TRITON_INTERPRET=1, set before triton "
    "is imported). torch.cuda.device(None), which upstream enters around the kernel launch with "
    "a CPU tensor's device index, is made a null context (it raises TypeError on a CPU); the "
    "kernel's autotuner keeps one of its configs (num_warps=1): with several it benchmarks them, "
    "which needs a GPU, and the interpreter computes the same for any num_warps.",
]
F64_PATCHES = [
    "float64 run only: torch.Tensor.float returns a float64 tensor unchanged (mamba_simple "
    "casts A_log, D and the dt bias with .float(), selective_scan_ref casts u, delta, B, C), "
    "so that nothing is rounded to float32.",
    "float64 run only: models_mamba.rms_norm_fn -> upstream's layer_norm.rms_norm_ref (pure "
    "torch, computes in the input dtype; the Triton kernel computes in float32), with the "
    "residual kept in the input dtype where upstream's residual_in_fp32 would round it to "
    "float32.",
]


class OfficialVim:
    """The imported upstream modules, patched to run on a CPU (see ``CPU_PATCHES``)."""

    def __init__(self, repo: Path):
        self.repo = Path(repo).resolve()
        if not (self.repo / "vim" / "models_mamba.py").exists():
            raise SystemExit(f"{self.repo}/vim/models_mamba.py not found: is --vim-repo right?")
        os.environ.setdefault("TRITON_INTERPRET", "1")
        if "triton" in sys.modules and os.environ["TRITON_INTERPRET"] != "1":
            raise SystemExit("triton was imported before TRITON_INTERPRET=1 could be set")
        stubs = {"selective_scan_cuda", "causal_conv1d_cuda"}
        if not _torchvision_importable():
            stubs.add("torchvision")
        try:
            import transformers  # noqa: F401
        except ImportError:
            stubs.add("transformers")
        sys.meta_path.insert(0, _StubFinder(stubs))
        for folder in ("causal-conv1d", "mamba-1p1p1", "vim"):
            sys.path.insert(0, str(self.repo / folder))
        self.models_mamba = importlib.import_module("models_mamba")
        self.interface = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
        self.mamba_simple = importlib.import_module("mamba_ssm.modules.mamba_simple")
        self.layer_norm = importlib.import_module("mamba_ssm.ops.triton.layer_norm")
        conv = importlib.import_module("causal_conv1d.causal_conv1d_interface")

        interface = self.interface
        interface.selective_scan_fn = interface.selective_scan_ref
        interface.causal_conv1d_fn = conv.causal_conv1d_ref

        def inner_no_out_proj(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                              A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
                              C_proj_bias=None, delta_softplus=True):  # fmt: skip
            import torch

            eye = torch.eye(xz.shape[1] // 2, dtype=xz.dtype)
            out = interface.mamba_inner_ref(
                xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, eye, None,
                A, B, C, D, delta_bias, B_proj_bias, C_proj_bias, delta_softplus,
            )  # fmt: skip
            return out.transpose(1, 2)

        self.mamba_simple.mamba_inner_fn_no_out_proj = inner_no_out_proj

        import contextlib

        import torch

        cuda_device = torch.cuda.device
        torch.cuda.device = lambda index: (
            contextlib.nullcontext() if index is None else cuda_device(index)
        )
        kernel = self.layer_norm._layer_norm_fwd_1pass_kernel
        kernel.configs = kernel.configs[:1]
        self.patches = list(CPU_PATCHES)
        self.commit = source_commit(self.repo)

    def build(self, name: str, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Upstream's builder of our model ``name``; returns (model, VisionMamba kwargs)."""
        import torch

        seen: dict[str, Any] = {}
        real = self.models_mamba.VisionMamba

        def spy(**kwargs):
            seen.update(kwargs)
            return real(**kwargs)

        self.models_mamba.VisionMamba = spy
        try:
            if seed is not None:
                torch.manual_seed(seed)
            model = getattr(self.models_mamba, OFFICIAL_NAMES[name])()
        finally:
            self.models_mamba.VisionMamba = real
        return model, seen

    def float64_patches(self):
        """A context manager applying ``F64_PATCHES``."""
        import contextlib

        import torch

        official = self

        @contextlib.contextmanager
        def patched():
            real_float, real_norm = torch.Tensor.float, official.models_mamba.rms_norm_fn

            def keep_float64(self, *args, **kwargs):
                if self.dtype == torch.float64:
                    return self
                return real_float(self, *args, **kwargs)

            def rms_norm_keeping_dtype(x, weight, bias, residual=None, prenorm=False,
                                       residual_in_fp32=False, eps=1e-6, **kwargs):  # fmt: skip
                return official.layer_norm.rms_norm_ref(
                    x, weight, bias, residual=residual, eps=eps, prenorm=prenorm
                )

            torch.Tensor.float = keep_float64
            official.models_mamba.rms_norm_fn = rms_norm_keeping_dtype
            try:
                yield
            finally:
                torch.Tensor.float = real_float
                official.models_mamba.rms_norm_fn = real_norm

        return patched()


def manifest(official: OfficialVim, name: str) -> dict[str, Any]:
    model, kwargs = official.build(name, seed=0)
    sd = model.state_dict()
    return {
        "model": OFFICIAL_NAMES[name],
        "ours": name,
        "source": f"hustvl/Vim {official.commit}",
        "builder": f"vim/models_mamba.py:{OFFICIAL_NAMES[name]}()",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()},
        "num_keys": len(sd),
        "num_params": int(sum(v.numel() for v in sd.values())),
        "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in sd.values()}),
        "keys": {k: list(v.shape) for k, v in sd.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vim-repo", type=Path, required=True, help="checkout of hustvl/Vim")
    p.add_argument("--out-dir", type=Path, default=HERE.parent / "tests" / "data")
    p.add_argument("--models", nargs="*", default=list(OFFICIAL_NAMES), choices=OFFICIAL_NAMES)
    args = p.parse_args(argv)
    official = OfficialVim(args.vim_repo)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        man = manifest(official, name)
        out = args.out_dir / f"{man['model']}_manifest.json"
        out.write_text(dumps(man))
        print(f"wrote {out}: {man['num_keys']} keys, {man['num_params']} parameters")
    print(f"source {man['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
