"""A small real run for the view and dashboard tests, made once per session by the real
command line: ``compute extract`` (random-weight vmamba-micro, the two packaged photographs,
stages 1 and 2 at 64 px) then ``compute reduce`` (PCA and t-SNE).

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


def build(path: Path) -> Path:
    """Make the run at ``path`` unless a finished one is there."""
    done = path.with_name(path.name + ".done")
    if done.exists():
        return path
    for command in ([*EXTRACT, "--out", str(path)], ["reduce", str(path), "--methods", METHODS]):
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
