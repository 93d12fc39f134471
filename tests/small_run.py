"""Small real runs for the view and dashboard tests, made once per session by the real
command line: ``compute extract`` (random-weight vmamba-micro, the two packaged photographs,
stages 1 and 2 at 64 px) then ``compute reduce`` (PCA and t-SNE); and one made with
``--by-route`` (stages 0 and 1, PCA).

``tests/conftest.py`` makes it a fixture of every test; the run is kept under the session's
base temporary directory, so it is built once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXTRACT = [
    "extract", "--model", "vmamba-micro", "--images", "photos", "--n", "2", "--size", "64",
    "--stages", "1,2", "--workers", "1",
]  # fmt: skip
METHODS = "pca,tsne"
# A run that keeps its routes apart: stages 0 (16x16) and 1, no explanations, PCA only.
BY_ROUTE = [
    "extract", "--model", "vmamba-micro", "--images", "photos", "--n", "2", "--size", "64",
    "--stages", "0,1", "--workers", "1", "--by-route", "--no-explanations",
]  # fmt: skip


def build(path: Path, extract: list[str] = EXTRACT, methods: str = METHODS) -> Path:
    """Make the run at ``path`` unless a finished one is there."""
    done = path.with_name(path.name + ".done")
    if done.exists():
        return path
    for command in ([*extract, "--out", str(path)], ["reduce", str(path), "--methods", methods]):
        result = subprocess.run(
            [sys.executable, "-m", "compute", *command], capture_output=True, text=True
        )
        if result.returncode:
            pytest.fail(f"python -m compute {' '.join(command)} failed:\n{result.stderr}")
    done.touch()
    return path


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the session's small run (2 images, stages 1 (8x8) and 2 (4x4), 2 blocks each)."""
    return build(tmp_path_factory.getbasetemp() / "small-run")


@pytest.fixture(scope="session")
def by_route_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the session's by-route run (``--by-route``: 2 images, stages 0 (16x16) and 1
    (8x8), 2 blocks each, 4 cross routes)."""
    return build(tmp_path_factory.getbasetemp() / "by-route-run", BY_ROUTE, "pca")
