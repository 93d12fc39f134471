"""Write the state_dict manifest of the official VMamba ``vssm1_tiny_0230s`` model.

Runs against a checkout of the upstream repository (MzeroMiko/VMamba), in a separate virtual
environment that has what its ``classification/models/vmamba.py`` imports (torch, timm==0.4.12,
einops, fvcore, packaging, and triton for the import only). Nothing of the upstream code is
copied here: it is imported from ``--vmamba-repo`` and only patched at run time, as listed in
``CPU_PATCHES``, so that it imports and runs on a CPU::

    /tmp/offvenv/bin/python tools/official_manifest.py --vmamba-repo /tmp/vmamba_official \\
        --out tests/data/vssm1_tiny_0230s_manifest.json

The model is built the way upstream training builds it: the default config of
``classification/config.py``, merged with ``configs/vssm/vmambav2v_tiny_224.yaml`` (whose
``MODEL.NAME`` is ``vssm1_tiny_0230s``), passed to ``models.build_model``. It is checked to have
the same keys and shapes as upstream's builder function ``vmamba_tiny_s1l8()``.

``load_official`` is also used by ``tools/compare_official.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

MODEL_NAME = "vssm1_tiny_0230s"
CONFIG_FILE = "classification/configs/vssm/vmambav2v_tiny_224.yaml"
BUILDER = "vmamba_tiny_s1l8"

# What is patched in the upstream code at run time (nothing is edited on disk).
CPU_PATCHES = [
    "torchvision: a stub module is put on sys.meta_path when the real torchvision cannot be "
    "imported (timm==0.4.12 imports it at import time; the PyPI torchvision wheels need a CUDA "
    "torch). Only timm's DropPath and trunc_normal_ are used by vmamba.py.",
    "vmamba.cross_scan_fn / vmamba.cross_merge_fn: replaced by thin wrappers that call the "
    "upstream torch autograd functions csm_triton.CrossScanF.apply / CrossMergeF.apply with the "
    "same arguments; upstream wraps that call in `with torch.cuda.device(x.device)`, which "
    "raises ValueError for a CPU tensor. The torch path is what upstream takes for any non-CUDA "
    "tensor (the Triton kernels are used only for CUDA tensors).",
    "selective scan: not patched for float32; with no CUDA extension importable, upstream's "
    "selective_scan_fn falls back to its own csms6s.selective_scan_torch (the sequential "
    "reference).",
]


# --------------------------------------------------------------------------------------------
# Import helpers.


class _AnyMeta(type):
    """A class whose every attribute is another such class (hashable, callable, subclassable)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _AnyMeta(name, (object,), {})
        setattr(cls, name, sub)
        return sub


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        val = _AnyMeta(name, (object,), {})
        setattr(self, name, val)
        return val


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = _StubModule(spec.name)
        mod.__path__ = []
        mod.__version__ = "0.0.0+stub"
        return mod

    def exec_module(self, module):
        pass


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def source_commit(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        top, sha = out.stdout.split()
        if Path(top).resolve() == Path(repo).resolve():  # not some enclosing repository
            return sha
    except Exception:
        pass
    marker = repo / ".commit"
    if marker.exists():
        return marker.read_text().strip()
    return "unknown"


class Official:
    """The imported upstream modules plus helpers to build and run the model on a CPU."""

    def __init__(self, repo: Path):
        self.repo = Path(repo).resolve()
        self.patches: list[str] = []
        cls_dir = self.repo / "classification"
        if not (cls_dir / "models" / "vmamba.py").exists():
            raise SystemExit(f"{cls_dir}/models/vmamba.py not found: is --vmamba-repo right?")
        if not _torchvision_importable():
            sys.meta_path.insert(0, _StubFinder({"torchvision"}))
            self.patches.append(CPU_PATCHES[0])
        sys.path.insert(0, str(cls_dir))
        self.models = importlib.import_module("models")
        self.vmamba = importlib.import_module("models.vmamba")
        self.csm = importlib.import_module("models.csm_triton")
        self.csms6s = importlib.import_module("models.csms6s")

        csm = self.csm

        def cross_scan_fn(
            x,
            in_channel_first=True,
            out_channel_first=True,
            one_by_one=False,
            scans=0,
            force_torch=False,
        ):
            return csm.CrossScanF.apply(x, in_channel_first, out_channel_first, one_by_one, scans)

        def cross_merge_fn(
            y,
            in_channel_first=True,
            out_channel_first=True,
            one_by_one=False,
            scans=0,
            force_torch=False,
        ):
            return csm.CrossMergeF.apply(y, in_channel_first, out_channel_first, one_by_one, scans)

        self.vmamba.cross_scan_fn = cross_scan_fn
        self.vmamba.cross_merge_fn = cross_merge_fn
        self.patches.append(CPU_PATCHES[1])
        self.patches.append(CPU_PATCHES[2])
        self.commit = source_commit(self.repo)

    # ----------------------------------------------------------------------------------------
    def load_config(self):
        spec = importlib.util.spec_from_file_location(
            "vmamba_official_config", self.repo / "classification" / "config.py"
        )
        cfgmod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cfgmod)
        config = cfgmod._C.clone()
        with contextlib.redirect_stdout(sys.stderr):
            cfgmod._update_config_from_file(config, str(self.repo / CONFIG_FILE))
        assert config.MODEL.NAME == MODEL_NAME, config.MODEL.NAME
        return config

    def build(self, seed: int | None = None):
        """Build the model as upstream training does; return (model, VSSM kwargs)."""
        import torch

        config = self.load_config()
        seen: dict[str, Any] = {}
        real = self.models.VSSM

        def spy(**kwargs):
            seen.update(kwargs)
            return real(**kwargs)

        self.models.VSSM = spy
        try:
            if seed is not None:
                torch.manual_seed(seed)
            model = self.models.build_model(config)
        finally:
            self.models.VSSM = real
        return model, seen

    def build_builder(self):
        return getattr(self.vmamba, BUILDER)()


def manifest(repo: Path) -> dict[str, Any]:
    off = Official(repo)
    model, kwargs = off.build(seed=0)
    sd = model.state_dict()
    ref = off.build_builder().state_dict()
    same = list(sd.keys()) == list(ref.keys()) and all(
        tuple(sd[k].shape) == tuple(ref[k].shape) for k in sd
    )
    if not same:
        raise SystemExit(f"config-built model differs from {BUILDER}()")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    return {
        "model": MODEL_NAME,
        "source": f"MzeroMiko/VMamba {off.commit}",
        "config_file": CONFIG_FILE,
        "builder": f"classification/models/vmamba.py:{BUILDER}() (same keys and shapes)",
        "config": config,
        "num_keys": len(sd),
        "num_params": int(sum(v.numel() for v in sd.values())),
        "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in sd.values()}),
        "keys": {k: list(v.shape) for k, v in sd.items()},
    }


def dumps(man: dict[str, Any]) -> str:
    """JSON with one line per top-level field and per state_dict key (diff-friendly)."""
    lines = []
    for field, value in man.items():
        if field == "keys":
            rows = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            lines.append(' "keys": {\n' + ",\n".join(rows) + "\n }")
        else:
            lines.append(f" {json.dumps(field)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--vmamba-repo",
        type=Path,
        required=True,
        help="checkout of MzeroMiko/VMamba (holds classification/)",
    )
    p.add_argument("--out", type=Path, default=Path("tests/data/vssm1_tiny_0230s_manifest.json"))
    args = p.parse_args(argv)
    man = manifest(args.vmamba_repo)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(man))
    print(
        f"wrote {args.out}: {man['num_keys']} keys, {man['num_params']} parameters, "
        f"source {man['source']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
