"""Where a run lives: a local folder, or an object-store URL (``s3://``, ``gs://``) read and
written through fsspec and zarr's ``FsspecStore``. One picklable value that carries its
storage options to the Dask workers, which write their own regions of the run.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mambapanel.errors import MambapanelError, OptionError

# URL schemes a run may live at, and the fsspec package each needs. ``file://`` is a local
# path. Other fsspec schemes (http, ftp, memory, ...) are refused: a run is written by
# several processes, which a read-only or per-process filesystem cannot hold.
SCHEMES = {"file": None, "s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
# Storage options every URL gets unless given otherwise: no cached listings, since other
# processes (the workers, reduce, findings) add to a run while this one has it open.
DEFAULT_OPTIONS = {"use_listings_cache": False}


class StorageError(MambapanelError, OSError):
    """Storage that a run cannot use: unreachable, or not writable, named with the cause."""


@dataclass(frozen=True)
class Location:
    """A run's place: ``url`` is an absolute local path, or ``scheme://bucket/key``;
    ``options`` the storage options of a URL (JSON, e.g. ``{"endpoint_url": ...}``), which
    travel with the value to the workers. Build one with :func:`location`."""

    url: str
    options: str = "{}"

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        if not self.is_local:
            raise TypeError(f"{self.url} is not a local path")
        return self.url

    @property
    def is_local(self) -> bool:
        return "://" not in self.url

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0] if not self.is_local else "file"

    @property
    def path(self) -> Path:
        """The local path (local locations only)."""
        return Path(self.__fspath__())

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def storage_options(self) -> dict[str, Any]:
        return json.loads(self.options)

    def child(self, key: str) -> Location:
        """The location of ``key`` under this one (``a/b`` for nested keys)."""
        return Location(f"{self.url.rstrip('/')}/{key}", self.options)

    def sibling(self, name: str) -> Location:
        """The location named ``name`` beside this one."""
        return Location(f"{self.url.rstrip('/').rsplit('/', 1)[0]}/{name}", self.options)

    def zarr_store(self, *, read_only: bool = False) -> Any:
        """What zarr and xarray open: the local path, or an ``FsspecStore`` of the URL."""
        if self.is_local:
            return self.url
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(
            self.url, storage_options=self.storage_options, read_only=read_only
        )

    def exists(self, key: str = "") -> bool:
        """Whether ``key`` (a file or object under this location; itself when empty) exists."""
        target = self.child(key) if key else self
        if self.is_local:
            return target.path.exists()
        filesystem = _filesystem(self.scheme, self.options)
        filesystem.invalidate_cache(target.url)  # another process may have written it since
        return filesystem.exists(target.url)

    def remove(self, key: str = "") -> None:
        """Delete ``key`` and everything under it; nothing when it is not there."""
        target = self.child(key) if key else self
        if self.is_local:
            import shutil

            shutil.rmtree(target.path, ignore_errors=True)
            return
        filesystem = _filesystem(self.scheme, self.options)
        try:
            filesystem.rm(target.url, recursive=True)
        except FileNotFoundError:
            pass
        filesystem.invalidate_cache(target.url)

    def check_writable(self, what: str) -> None:
        """Write and delete a probe object under this URL (local folders: see
        :func:`mambapanel.errors.check_writable_folder`); ``what`` names the output."""
        probe = self.child(".mambapanel-write-test")
        filesystem = _filesystem(self.scheme, self.options)
        try:
            filesystem.pipe(probe.url, b"")
            filesystem.rm(probe.url)
        except Exception as err:  # botocore, gcsfs and aiohttp errors share no base class
            raise StorageError(
                f"{what}: cannot write at {self.url} ({type(err).__name__}: {err}); "
                "check the bucket, the credentials and --storage-options"
            ) from err


def location(
    where: str | Path | Location, storage_options: Mapping[str, Any] | None = None
) -> Location:
    """The :class:`Location` of a run given as a path, a URL or a location.

    A local path is made absolute (workers receive it as the client sees it); ``file://``
    URLs are local paths. ``storage_options`` go with a URL (fsspec also reads its
    ``FSSPEC_<SCHEME>_<OPTION>`` environment variables, on every machine).

    Raises
    ------
    mambapanel.errors.OptionError
        A URL of a scheme not in :data:`SCHEMES`, one whose fsspec package is missing, or
        storage options given with a local path.
    """
    if isinstance(where, Location):
        if storage_options and not where.is_local:
            options = {**DEFAULT_OPTIONS, **storage_options}
            return Location(where.url, json.dumps(options, sort_keys=True))
        return where
    text = str(where)
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme not in SCHEMES:
            known = ", ".join(f"{name}://" for name in SCHEMES)
            raise OptionError(
                f"{text}: unknown URL scheme {scheme!r}; a run is a local path or a URL of {known}"
            )
        if scheme == "file":
            text = rest
        else:
            package = SCHEMES[scheme]
            if importlib.util.find_spec(package) is None:
                raise OptionError(
                    f"{text}: {scheme}:// needs the {package} package on this machine and on "
                    f"every worker (pip install {package})"
                )
            if not rest.strip("/"):
                raise OptionError(f"{text}: a URL needs a bucket and a key, e.g. {scheme}://b/r")
            options = json.dumps({**DEFAULT_OPTIONS, **(storage_options or {})}, sort_keys=True)
            return Location(f"{scheme}://{rest.rstrip('/')}", options)
    if storage_options:
        raise OptionError(f"{text}: storage options go with s3:// or gs:// URLs, not a path")
    return Location(str(Path(text).expanduser().resolve()))


def parse_storage_options(text: str) -> dict[str, Any]:
    """``--storage-options``: a JSON object, e.g. '{"endpoint_url": "http://host:9000"}'."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise OptionError(f"--storage-options must be a JSON object, got {text!r} ({err})") from err
    if not isinstance(options, dict):
        raise OptionError(f"--storage-options must be a JSON object, got {text!r}")
    return options


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, options: str) -> Any:
    import fsspec

    return fsspec.filesystem(scheme, **json.loads(options))
