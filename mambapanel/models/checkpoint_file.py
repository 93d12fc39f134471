"""Checkpoint files read as data: nothing in a file can run code while mambapanel reads it.

A user's checkpoint comes from the internet. ``.safetensors`` files hold tensors and JSON
only. Pickle-based files (torch's zip format, its legacy format, a bare pickle) go first
through torch's own ``weights_only`` unpickler. Training checkpoints often also pickle
objects torch does not allow (a yacs config, an ``argparse.Namespace``); for those, every
pickle torch reads (``pickle_module.load`` and ``pickle_module.Unpickler`` both, in every
container) goes through :class:`RestrictedUnpickler`: a global is resolved only when torch's
``weights_only`` loader allows it, any other becomes an inert stand-in that no pickle opcode
can make run code, and a global that exists to run code (``os.system``, ``eval``, ...) refuses
the file by name.
"""

from __future__ import annotations

import _compat_pickle
import io
import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mambapanel.errors import MambapanelError

__all__ = ["CheckpointError", "ReadCheckpoint", "read_checkpoint", "write_checkpoint"]

SAFETENSORS_SUFFIX = ".safetensors"
META_KEY = "mambapanel"  # our metadata: a dict entry in a pickle, JSON text in safetensors

# Modules whose functions can run code, touch files or the network: no checkpoint needs
# them, an attack does. A file that names one is refused; the stand-ins below already keep
# any other foreign global from running, so this list names the danger, it is not the guard.
CODE_RUNNING_MODULES = frozenset(
    """
    __builtin__ _io _pickle _posixsubprocess _thread asyncio bdb builtins code codeop
    ctypes dbm fileinput ftplib functools glob http importlib inspect io linecache logging
    marshal multiprocessing nt operator os pathlib pdb pickle pip pkgutil platform posix pty
    runpy setuptools shelve shutil signal site smtplib socket sqlite3 subprocess sys
    sysconfig tarfile telnetlib tempfile threading timeit trace types urllib webbrowser
    xmlrpc zipfile zipimport
    """.split()
)
CODE_RUNNING_TORCH = ("torch.hub", "torch.jit", "torch.serialization", "torch.load", "torch._C")

RESAVE_HINT = (
    "If you trust where it came from, re-save only its weights in a throw-away environment "
    "(`sd = torch.load(FILE, weights_only=False)['model']; "
    "safetensors.torch.save_file(sd, 'model.safetensors')`) and give that file instead."
)


class CheckpointError(MambapanelError, ValueError):
    """A checkpoint file that cannot be read, or cannot be loaded into the model asked for."""


class CodeInCheckpoint(pickle.UnpicklingError):
    """A pickle names a global that exists to run code."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _is_code_running(module: str, name: str) -> bool:
    full = f"{module}.{name}"
    return module.split(".")[0] in CODE_RUNNING_MODULES or full.startswith(CODE_RUNNING_TORCH)


# Of the globals torch's weights_only loader allows, those a checkpoint of dense weights
# never needs; left out of the fallback below, which validates less than torch's loader.
NOT_NEEDED = ("sparse", "nested", "qtensor", "meta_tensor", "wrapper_subclass", "from_numpy")


def _allowed_globals() -> dict[str, Any]:
    from torch._weights_only_unpickler import _get_allowed_globals

    return {
        name: value
        for name, value in _get_allowed_globals().items()
        if not any(part in name for part in NOT_NEEDED)
    }


class Inert:
    """Stands in for an object of a class torch does not allow: it accepts whatever a pickle
    does to an object (call, ``__new__``, state, items) and runs nothing of the original."""

    __slots__ = ("__weakref__",)

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals torch's ``weights_only`` loader allows
    (less :data:`NOT_NEEDED`).

    Any other global becomes a fresh subclass of :class:`Inert` (its name added to
    :attr:`stand_ins`); one of :data:`CODE_RUNNING_MODULES` raises :class:`CodeInCheckpoint`.
    Every opcode that can call something (GLOBAL, STACK_GLOBAL, INST, OBJ, NEWOBJ, REDUCE,
    EXT*) gets its callable from :meth:`find_class` (persistent ids go to torch's own
    ``persistent_load``), so nothing else can be called.
    """

    stand_ins: set[str]

    def __init__(self, file: BinaryIO, *args: Any, **kwargs: Any) -> None:
        super().__init__(file, *args, **kwargs)
        if not hasattr(self, "stand_ins"):  # a subclass may share one set between pickles
            self.stand_ins = set()
        self.allowed = _allowed_globals()  # once per pickle, not per global it names

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names, as pickle itself maps them (protocols 0-2 write `__builtin__`).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        allowed = self.allowed.get(f"{module}.{name}")
        if allowed is not None:
            return allowed
        if _is_code_running(module, name):
            raise CodeInCheckpoint(f"{module}.{name}")
        self.stand_ins.add(f"{module}.{name}")
        return type(name.rpartition(".")[2] or "Inert", (Inert,), {"__slots__": ()})


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` uses: ``load`` and ``Unpickler`` both
    restricted (torch's legacy format calls ``load`` directly for four of its five pickles),
    one set of stand-ins for all the pickles of a file."""

    __name__ = "mambapanel_restricted_pickle"

    def __init__(self) -> None:
        self.Unpickler = type("Unpickler", (RestrictedUnpickler,), {"stand_ins": set()})

    @property
    def stand_ins(self) -> set[str]:
        return self.Unpickler.stand_ins

    def load(self, file: BinaryIO, **kwargs: Any) -> Any:
        return self.Unpickler(file, **kwargs).load()


@dataclass(frozen=True)
class ReadCheckpoint:
    """What a checkpoint file holds."""

    content: Any  # a dict, a state_dict or other data
    stand_ins: list[str]  # pickled globals read as inert stand-ins, sorted
    container: str  # "safetensors", "zip" or "pickle" (torch's legacy format, a bare pickle)


def _container(path: Path, head: bytes) -> str:
    if path.suffix == SAFETENSORS_SUFFIX:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    return "pickle"  # torch's legacy format or a bare pickle: pickles from the first byte


def _refuse_torchscript(path: Path) -> None:
    """A TorchScript archive holds code that ``torch.load`` would hand to ``torch.jit.load``."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name.endswith(("/constants.pkl", "/code/")) or "/code/" in name for name in names):
        raise CheckpointError(
            f"{path}: a TorchScript archive (it holds code), not a checkpoint of weights; "
            "save the model's state_dict() instead"
        )


def read_checkpoint(path: str | Path) -> ReadCheckpoint:
    """Read a checkpoint file without running anything it holds.

    Raises
    ------
    CheckpointError
        No such file, an empty or unreadable one, one whose pickle names a code-running
        global (named in the message, with how to re-save the weights safely).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with path.open("rb") as file:
        head = file.read(8)
    if not head:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    container = _container(path, head)
    if container == "safetensors":
        return ReadCheckpoint(_read_safetensors(path), [], container)
    if container == "zip":
        try:
            _refuse_torchscript(path)
        except zipfile.BadZipFile as err:
            raise CheckpointError(f"{path}: a damaged zip archive ({err})") from err
    try:
        content = _torch_load(path, weights_only=True)
        return ReadCheckpoint(content, [], container)
    except pickle.UnpicklingError as err:
        first = err  # foreign globals (or opcodes) that torch's own safe loader does not read
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_short(err)})") from err
    restricted = _RestrictedPickleModule()
    try:
        # weights_only=False only lets torch take our pickle module: torch unpickles the zip
        # and the legacy formats alike through its load and Unpickler, both restricted (no
        # global outside the allowed tensor types is ever resolved; TorchScript archives were
        # refused above). tests/test_checkpoint_security.py tries a crafted file of each
        # container and protocol, in the client and in a Dask worker.
        content = _torch_load(path, weights_only=False, pickle_module=restricted)
    except CodeInCheckpoint as err:
        raise CheckpointError(
            f"{path}: refused: its pickle refers to {err.name}, which can run code on this "
            f"machine; a checkpoint needs only tensors. Nothing of it was run. {RESAVE_HINT}"
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint that can be read safely ({_short(first)}; "
            f"then: {_short(err)}). {RESAVE_HINT}"
        ) from None
    return ReadCheckpoint(content, sorted(restricted.stand_ins), container)


def _torch_load(path: Path, **options: Any) -> Any:
    with warnings.catch_warnings():
        # torch warns that its safe loader may not read every opcode of protocols 3-5; what
        # it cannot read raises, and is named then.
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", **options)


def _short(err: BaseException) -> str:
    """The first line of an error, without torch's advice to load with weights_only=False."""
    text = str(err).strip().splitlines()
    for line in text:
        if line and "weights_only" not in line and not line.startswith("(1)"):
            return f"{type(err).__name__}: {line[:300]}"
    return type(err).__name__


def _read_safetensors(path: Path) -> dict[str, Any]:
    """A ``.safetensors`` file as ``{"model": tensors, "mambapanel": metadata}``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        tensors = load_file(path, device="cpu")
        with safe_open(path, framework="pt") as file:
            header = file.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({err})") from err
    content: dict[str, Any] = {"model": tensors}
    if META_KEY in header:
        try:
            content[META_KEY] = json.loads(header[META_KEY])
        except json.JSONDecodeError as err:
            raise CheckpointError(
                f"{path}: metadata entry {META_KEY!r} is not JSON ({err})"
            ) from err
    return content


def write_checkpoint(
    path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Write ``state_dict`` and ``meta`` to ``path``: ``.safetensors`` by its suffix (meta as
    JSON text), else torch's zip format as ``{"model": state_dict, "mambapanel": meta}``.
    Written under a temporary name and renamed, so no half-written file has the final name."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save

        data = save(
            {k: v.contiguous() for k, v in state_dict.items()},
            metadata={META_KEY: json.dumps(meta)},
        )
        partial.write_bytes(data)
    else:
        buffer = io.BytesIO()
        torch.save({"model": state_dict, META_KEY: meta}, buffer)
        partial.write_bytes(buffer.getvalue())
    partial.replace(path)
