"""The one base class of errors a user can act on, and the output checks that raise them.

The command line prints a :class:`MambapanelError` as one line and exits with status 2;
every other exception is a bug and ends in its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MambapanelError(Exception):
    """A problem with what the user gave (a file, a run, an option): its message names the
    thing, what was expected and what was found."""


class OptionError(MambapanelError, ValueError):
    """An option or argument whose value cannot work (a stage the model lacks, an unknown
    method, a window of 0 patches)."""


class OutputError(MambapanelError, OSError):
    """An output path that cannot be written: a read-only folder, a file where a folder
    must be, a folder where a file must be."""


def check_writable_folder(folder: str | Path, what: str) -> Path:
    """Create ``folder`` if needed and check that a file can be written in it; ``what`` is
    the output it is for (named in the error, e.g. ``"--out runs/a"``)."""
    folder = Path(folder)
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise OutputError(f"{what}: {existing} is a file; a folder is needed there")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what}: cannot create the folder {folder} ({err.strerror})") from err
    probe = folder / ".mambapanel-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"{what}: cannot write in {folder} ({err.strerror})") from err
    return folder
