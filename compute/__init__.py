"""Client-side orchestration of mambapanel work: `python -m compute COMMAND`."""
