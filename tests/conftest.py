"""Shared test set-up: Triton runs interpreted on machines without a GPU, and small random
VMamba layers with realistic (trained-like) scan parameters."""

import os
from pathlib import Path

import torch

# Must be set before any @triton.jit runs; on a GPU machine the kernels compile for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from mambapanel.models.vmamba import SS2D

# Shared fixtures of their own modules: the session's small real run (compute extract +
# reduce) and the demo's runs, for the view and dashboard tests.
pytest_plugins = ["small_run", "demo_runs"]


def make_ss2d(
    d_model: int = 8, d_state: int = 1, order: str = "cross", seed: int = 0, dtype=torch.float64
) -> SS2D:
    """An SS2D whose A, Δ bias and D are spread like a trained layer's, not the init's."""
    torch.manual_seed(seed)
    layer = SS2D(d_model, d_state=d_state, order=order).to(dtype)
    with torch.no_grad():
        layer.A_logs.uniform_(-1.0, 1.5)  # A in [-4.5, -0.37]
        layer.dt_projs_bias.uniform_(-4.0, 0.5)  # Δ from ~0.02 to ~1
        layer.Ds.normal_()
    return layer


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in: root writes through permission bits, and
    sysfs refuses everyone."""
    if os.geteuid() == 0:
        return Path("/sys/kernel")
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    return folder


@pytest.fixture
def ss2d_factory():
    return make_ss2d
