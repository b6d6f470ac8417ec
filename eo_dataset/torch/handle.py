"""Opening a cube for loading: local paths, fsspec URLs (``https://`` ...) and cubes on object storage (``s3://``,
``gs://``, ``az://``: icechunk repositories, read at one version: the latest finished one or the one asked for),
one Zarr handle per process.

The small per-sample arrays (ids, origins, availability, times) are read once, through xarray, when a dataset is
created. The pixels are read with zarr directly (xarray and dask add nothing per sample but overhead). Zarr handles
are not shared between processes: :class:`CubeHandle` opens its group lazily and reopens it whenever it finds
itself in another process (a DataLoader worker, forked or spawned), and pickles without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import warnings
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.buffer import default_buffer_prototype
from zarr.storage import FsspecStore

from eo_dataset.cube.storage import is_object_url, open_cube_at, open_version, pin_version
from eo_dataset.cube.store import open_cube
from eo_dataset.errors import CubeError
from eo_dataset.torch import compat


def is_url(cube: str | os.PathLike[str]) -> bool:
    """True for fsspec URLs (``http://``, ``s3://``, ``file://`` ...), False for local paths."""
    return "://" in str(cube)


def pin(cube: str | os.PathLike[str], at: str | None = None) -> str | None:
    """The version to read of a cube on object storage, as a snapshot id (``at``: a snapshot id, tag or branch;
    default the latest finished version), so that every process reads that one version; None for anything without
    versions (a local path, another URL, a plain Zarr store on object storage).

    Raises:
        CubeError: ``at`` for a cube without versions, or no such version.
    """
    if is_object_url(str(cube)):
        return pin_version(str(cube), at)
    if at is not None:
        raise CubeError(f"at={at!r} reads a version of a cube on object storage (s3://, gs://, az://); {cube} has "
                        "no versions: leave at out")
    return None


@contextlib.contextmanager
def open_metadata(cube: str | os.PathLike[str], storage_options: dict[str, Any] | None = None, *,
                  at: str | None = None) -> Iterator[xr.Dataset]:
    """Open a cube lazily with xarray (a local path or any fsspec URL), closed on leaving the ``with`` block; for a
    URL that also closes its HTTP session. ``at``: the version of a cube on object storage (see :func:`pin`).

    Raises:
        CubeError: the location holds no Zarr v3 cube, or cannot be read.
    """
    if at is not None and not is_object_url(str(cube)):
        pin(cube, at)  # raises: only cubes on object storage have versions
    if not is_url(cube):
        if storage_options:
            raise CubeError(f"storage_options are for fsspec URLs; {cube} is a local path")
        with open_cube(Path(cube)) as ds:
            yield ds
        return
    if is_object_url(str(cube)):  # s3://, gs://, az://: a version of an icechunk repository (default: the latest)
        with open_cube_at(str(cube), at) as ds:
            yield ds
        return
    store = open_store(str(cube), storage_options)
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=UserWarning)
                ds = xr.open_zarr(store, zarr_format=3)
        except (OSError, KeyError, ValueError) as exc:  # fsspec/zarr raise these for missing or foreign stores
            raise CubeError(f"{cube} could not be opened as a Zarr v3 cube ({type(exc).__name__}: {exc}); check the "
                            "URL (it should point at the folder holding the cube's zarr.json) and storage_options"
                            ) from exc
        with ds:
            yield ds
    finally:
        close_store(store)


def open_store(url: str, storage_options: dict[str, Any] | None = None) -> FsspecStore:
    """A read-only Zarr store on an fsspec URL with its own filesystem object (and HTTP session) instead of fsspec's
    process-wide cached one, so datasets, and their handles in forked DataLoader workers, never share pooled
    connections (the user's own ``skip_instance_cache`` wins). Close it with :func:`close_store`."""
    options = {"skip_instance_cache": True, **(storage_options or {})}
    return FsspecStore.from_url(url, storage_options=options, read_only=True)


def close_store(store: FsspecStore, pid: int | None = None) -> None:
    """Close the HTTP session of a store from :func:`open_store` (zarr's asynchronous fsspec filesystems leave it
    open: aiohttp then warns "Unclosed client session" when it is collected). Only in the process that opened it
    (``pid``, default this one): a forked child must not drive its parent's event loop or connections."""
    if pid is None or pid == os.getpid():
        compat.close_session(store.fs)  # best effort: a dead server must not fail a cleanup


CODEC_PIPELINES = ("auto", "zarrs", "zarr")
ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"


def resolve_codec_pipeline(name: str, remote: bool = False) -> str:
    """``"zarrs"`` or ``"zarr"``: the pipeline to decode pixels with.

    ``"auto"`` is zarrs for local cubes when it is installed, and zarr-python's pipeline for URLs: zarrs reads
    remote stores on a Rust runtime that does not survive ``fork``, so a DataLoader forking its workers after the
    parent process has read a remote cube with zarrs would hang. Ask for ``"zarrs"`` explicitly for a URL only
    with ``multiprocessing_context="spawn"`` or ``"forkserver"`` (or no workers).

    Raises:
        CubeError: an unknown name, or ``"zarrs"`` asked for but not installed.
    """
    if name not in CODEC_PIPELINES:
        raise CubeError(f"codec_pipeline must be one of {list(CODEC_PIPELINES)}, found {name!r}")
    if name == "zarr" or (name == "auto" and remote):
        return "zarr"
    try:
        import zarrs  # noqa: F401
    except ImportError:
        if name == "zarrs":
            raise CubeError("codec_pipeline='zarrs' needs the zarrs package: pip install 'eo-dataset[torch]'") from None
        return "zarr"
    return "zarrs"


class CubeHandle:
    """A per-process Zarr handle on a cube's arrays.

    Args:
        cube: Local path or fsspec URL of the cube.
        storage_options: fsspec options (URLs only).
        codec_pipeline: ``"zarrs"`` decodes with zarrs' Rust codec pipeline for zarr-python (the same bytes, the
            same results, several times less CPU per chunk; arrays it cannot handle fall back to zarr's own), set
            on this handle's arrays only, never globally. ``"zarr"``: zarr-python's pipeline. ``"auto"``: see
            :func:`resolve_codec_pipeline`.
        at: The version of a cube on object storage to read (best a snapshot id, see :func:`pin`; default: the
            latest finished version, looked up again in each process).
    """

    def __init__(self, cube: str | os.PathLike[str], storage_options: dict[str, Any] | None = None,
                 codec_pipeline: str = "auto", *, at: str | None = None) -> None:
        if at is not None and not is_object_url(str(cube)):
            pin(cube, at)  # raises: only cubes on object storage have versions
        self.location = str(cube)
        self.at = at
        self.storage_options = dict(storage_options or {})
        self.codec_pipeline = resolve_codec_pipeline(codec_pipeline, remote=is_url(cube))
        self._pid: int | None = None
        self._group: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _group=None, _arrays={})
        return state

    @property
    def group(self) -> zarr.Group:
        """The cube's root group, opened in this process."""
        if self._group is None or self._pid != os.getpid():
            location: Any = self.location
            if is_object_url(self.location):  # credentials from the environment, in every process
                location = open_version(self.location, self.at)
            elif is_url(self.location):
                location = open_store(self.location, self.storage_options)
                weakref.finalize(self, close_store, location, os.getpid()).atexit = False
            self._group = zarr.open_group(location, mode="r", zarr_format=3)
            self._arrays = {}
            self._pid = os.getpid()
        return self._group

    def array(self, name: str) -> zarr.Array:
        """One array of the cube (cached per process)."""
        group = self.group
        if name not in self._arrays:
            array = group[name]
            if self.codec_pipeline == "zarrs" and array.dtype.kind in "biuf":  # zarrs decodes numbers only
                # the pipeline is picked when an array object is made; the global config is restored right after.
                # One decode thread: a Rust thread pool does not survive fork (DataLoader workers forked after the
                # parent read a multi-chunk selection would hang), and each worker is one process anyway.
                with zarr.config.set({"codec_pipeline.path": ZARRS_PIPELINE, "threading.max_workers": 1}):
                    array = group[name]
            self._arrays[name] = array  # type: ignore[assignment]
        return self._arrays[name]

    def read(self, requests: Sequence[tuple[str, tuple[Any, ...], np.ndarray | None]]) -> list[np.ndarray]:
        """Read several ``(array name, selection, out)`` requests in one round trip to zarr's event loop.

        Each request is an ordinary zarr selection (ints and slices). The reads run concurrently, so IO and
        decompression overlap (one after another with zarr's synchronous API where :mod:`~eo_dataset.torch.compat`
        finds no way to await them together). ``out``, when given, is a C-contiguous array of the selection's shape
        and the array's dtype that zarr decodes into (no new allocation); it is also what is returned for that
        request.
        """
        nd = default_buffer_prototype().nd_buffer
        outs = [None if out is None else nd.from_numpy_array(out) for _, _, out in requests]
        if not compat.HAVE_ZARR_SYNC:
            results = [self.array(name).get_orthogonal_selection(sel, out=o)
                       for (name, sel, _), o in zip(requests, outs, strict=True)]
        else:
            calls = [self.array(name).async_array.get_orthogonal_selection(sel, out=o)
                     for (name, sel, _), o in zip(requests, outs, strict=True)]

            async def gather() -> list[Any]:
                return await asyncio.gather(*calls)

            results = compat.run(gather())
        return [np.asarray(r) if out is None else out for r, (_, _, out) in zip(results, requests, strict=True)]
