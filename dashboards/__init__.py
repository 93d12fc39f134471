"""The `panel serve` apps (``explorer.py``, ``compare.py``), shipped with the package so that
`python -m compute serve` finds them in an installed copy as in a checkout."""
