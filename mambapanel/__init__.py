"""mambapanel: visual analytics for the hidden attention of vision Mamba models."""

__version__ = "0.1.0"
