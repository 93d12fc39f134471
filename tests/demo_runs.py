"""The demo's runs, made once per session by the README's demo command itself
(``python -m compute demo --no-serve``) at a small size: three of the committed demo models
(the VMamba cross and morton ones and the Vim morton one), 4 held-out digits each, PCA only.

``tests/conftest.py`` makes it a fixture of every test (``demo_runs``); the runs are kept
under the session's base temporary directory, so they are built once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("cross", "morton", "vim-morton")
OPTIONS = ["--models", ",".join(NAMES), "--n", "4", "--methods", "pca"]


def demo_command(runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "compute", "demo", "--runs", str(runs), *OPTIONS, *extra]


def run_demo(runs: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        demo_command(runs, "--no-serve", *extra), capture_output=True, text=True, cwd=ROOT
    )
    if result.returncode:
        pytest.fail(f"compute demo failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory holding the session's demo runs (one sub-directory per order)."""
    runs = tmp_path_factory.getbasetemp() / "demo-runs"
    done = runs.with_name("demo-runs.done")
    if not done.exists():
        run_demo(runs)
        done.touch()
    return runs
