"""Panel/HoloViews components of the dashboard; they read stored runs only (no torch).

The names below are imported on first use (PEP 562), so that ``mambapanel.views.serve``,
which a served page imports first, costs no HoloViews import: see that module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "Explorer": "mambapanel.views.explorer",
    "ImageView": "mambapanel.views.image",
    "PatchView": "mambapanel.views.patch",
    "RunData": "mambapanel.views.data",
    "ScatterView": "mambapanel.views.scatter",
    "dashboard": "mambapanel.views.app",
    "load_runs": "mambapanel.views.data",
}

__all__ = [
    "Explorer",
    "ImageView",
    "PatchView",
    "RunData",
    "ScatterView",
    "dashboard",
    "load_runs",
]

if TYPE_CHECKING:
    from mambapanel.views.app import dashboard
    from mambapanel.views.data import RunData, load_runs
    from mambapanel.views.explorer import Explorer
    from mambapanel.views.image import ImageView
    from mambapanel.views.patch import PatchView
    from mambapanel.views.scatter import ScatterView


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
