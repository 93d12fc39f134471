"""The README's Python examples run as written (those that need no run or file of the user's;
the dashboard's notebook example is driven by the view tests)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
RUNNABLE = [block for block in BLOCKS if "Explorer" not in block]


def test_the_readme_has_the_examples_this_file_runs():
    assert len(RUNNABLE) >= 2 and any("vim-micro" in block for block in RUNNABLE)


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.splitlines()[-1][:40] for b in RUNNABLE])
def test_readme_example_runs(block, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name files of the repository from its root
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # raises if an example is wrong
    assert namespace["a"].dim() == 3  # each example ends with attention matrices (B, L, L)
