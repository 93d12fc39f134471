"""The Explorer in a notebook: a notebook executed by nbclient with this Python's kernel
(``python3``; PYTHONPATH and the run reach it), and the pieces of its notebook output.
JupyterLab in Chromium: tests/ui/test_notebook_lab.py."""

from __future__ import annotations

from pathlib import Path

import nbclient
import pytest
from bokeh.document import Document
from notebooks import explorer_cells, notebook
from panel.io.notebook import EXEC_MIME, LOAD_MIME

from mambapanel.views.notebook import HINT_CLASS, with_bokeh_hint
from mambapanel.views.url import owns_url

CDN = "cdn.bokeh.org"


def executed(tmp_path: Path, *cells: str) -> list:
    book = notebook(*cells)
    client = nbclient.NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    return book.cells


def outputs(cell, mime: str) -> list[str]:
    """The cell's rich outputs (its value, what it displayed) of type ``mime``, as text."""
    return [o.data[mime] for o in cell.outputs if mime in o.get("data", {})]


@pytest.mark.slow
def test_a_notebook_of_an_explorer_in_two_cells_runs_and_both_follow_a_change(small_run, tmp_path):
    """BokehJS inline in the extension's output; each Explorer output is Panel's Bokeh
    document (the figures by name) after the hint; a change made in code reaches the status
    line of both outputs (one Explorer shown in two cells has two status models)."""
    change = (
        "explorer.patch = (2, 3)\n"
        "for model, _ in explorer.status._models.values():\n"
        "    print(model.text)"
    )
    extension, first, second, changed = executed(tmp_path, *explorer_cells(small_run), change)
    loaded = "".join(outputs(extension, LOAD_MIME))
    assert len(loaded) > 1_000_000 and CDN not in loaded  # BokehJS itself, not its address
    for cell in (first, second):
        (html,) = [o.data["text/html"] for o in cell.outputs if EXEC_MIME in o.get("data", {})]
        assert HINT_CLASS in html and html.index(HINT_CLASS) < html.index("patch-view")
        assert "scatterplot" in html and "image-view" in html
    printed = "".join(o.text for o in changed.outputs if o.output_type == "stream")
    statuses = printed.splitlines()
    assert len(statuses) == 2
    assert all("Clicked patch: (2, 3)" in status for status in statuses), statuses


def test_the_hint_goes_before_bokeh_outputs_only():
    bundle = ({"text/html": "<div id='p1'></div>", EXEC_MIME: ""}, {EXEC_MIME: {"id": "p1"}})
    data, metadata = with_bokeh_hint(bundle)
    assert data["text/html"].endswith("<div id='p1'></div>")
    assert data["text/html"].startswith(f'<div id="{HINT_CLASS}-')
    assert "pn.extension(inline=True)" in data["text/html"] and "PANEL_INLINE" in data["text/html"]
    assert metadata == bundle[1]
    widget = ({"application/vnd.jupyter.widget-view+json": {"model_id": "x"}}, {})
    assert with_bokeh_hint(widget) == widget  # an ipywidget: drawn by its own manager
    assert with_bokeh_hint(None) is None  # no extension loaded: Panel's warning


class _Session:
    pass


def _served() -> tuple[Document, _Session]:
    """A document as a served session has it (a session context)."""
    document, session = Document(), _Session()
    document._session_context = lambda: session
    return document, session


def test_only_the_first_view_of_a_served_page_owns_its_url():
    page, _session = _served()
    other, _other_session = _served()
    assert not owns_url(Document())  # a notebook's output: no page URL
    assert not owns_url(None)
    assert owns_url(page) and not owns_url(page)  # the first one; the second one not
    assert owns_url(page, wanted=True)  # asked for
    assert not owns_url(other, wanted=False) and owns_url(other)  # declined: not claimed
