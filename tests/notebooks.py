"""Notebooks of an Explorer for the notebook tests (tests/test_notebook.py executes one with
nbclient, tests/ui/test_notebook_lab.py opens them in JupyterLab and serves one)."""

from __future__ import annotations

from pathlib import Path

import nbformat

KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def notebook(*cells: str) -> nbformat.NotebookNode:
    """A notebook of these code cells, for the kernel of this Python (``python3``)."""
    book = nbformat.v4.new_notebook(metadata={"kernelspec": KERNEL})
    book.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    return book


def explorer_cells(run: Path, inline: bool = True) -> list[str]:
    """Panel's extension (BokehJS inline, or from the CDN), an Explorer of ``run`` at stage 1,
    block 0, and the same Explorer shown again in a second cell."""
    return [
        f"import panel as pn\n\npn.extension({'inline=True' if inline else ''})",
        "from mambapanel.views import Explorer\n\n"
        f"explorer = Explorer({str(run)!r}, stage=1, block=0)\nexplorer",
        "explorer  # the same Explorer in a second cell",
    ]


def write(book: nbformat.NotebookNode, path: Path) -> Path:
    nbformat.write(book, path)
    return path
