"""Panel/HoloViews components of the dashboard; they read stored runs only (no torch)."""

# Registers HoloViews' Bokeh backend, which `.opts(...)` needs before anything is displayed
# (what `hv.extension("bokeh")` does, minus the notebook output).
import holoviews.plotting.bokeh  # noqa: F401

from mambapanel.views.app import dashboard
from mambapanel.views.data import RunData, load_runs
from mambapanel.views.explorer import Explorer
from mambapanel.views.image import ImageView
from mambapanel.views.patch import PatchView
from mambapanel.views.scatter import ScatterView

__all__ = [
    "Explorer",
    "ImageView",
    "PatchView",
    "RunData",
    "ScatterView",
    "dashboard",
    "load_runs",
]
