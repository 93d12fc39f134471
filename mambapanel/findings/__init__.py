"""Numbers for the study's findings (§4-§5 of arXiv 2502.20764), from stored hidden attention.

``metrics``: one block's matrix -> numbers (the known-answer tests target these).
``stage``: every metric of a stage, and of a whole run read from its store.
``record``: the findings a run stores (schema), written and read back.
``tables``: DataFrames and markdown for the report and the dashboard.
``figures``, ``report``: the report of ``python -m compute findings`` (PNG, markdown).

Reading stored findings (``record``, ``tables``) imports no torch: the dashboard does it.
"""
