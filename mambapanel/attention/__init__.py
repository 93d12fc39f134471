"""Hidden attention of vision Mamba scans: capture a forward pass, then ask for the
patch-to-patch matrix of any (stage, block). Backends: tiled (default), reference, triton.
"""

from mambapanel.attention.capture import Capture, capture, scan_layers
from mambapanel.attention.hidden import BACKENDS, MODES, hidden_attention, route_backend
from mambapanel.attention.reference import REDUCTIONS

__all__ = [
    "BACKENDS",
    "MODES",
    "REDUCTIONS",
    "Capture",
    "capture",
    "hidden_attention",
    "route_backend",
    "scan_layers",
]
