"""Every use of another library's private API by ``eo_dataset.torch``, in one place, each with a public fallback.

``tests/eo_dataset/torch/test_compat.py`` checks each against the installed versions (and says which versions it
was written for), so an upgrade that moves one fails there, by name, instead of somewhere in a DataLoader worker.

- zarr: :func:`run` awaits coroutines on zarr's own event loop (``zarr.core.sync.sync``: zarr has no public way
  to await several reads in one round trip). Without it, :data:`HAVE_ZARR_SYNC` is False and
  :meth:`~eo_dataset.torch.handle.CubeHandle.read` reads one request after another with zarr's public
  synchronous API.
- fsspec: :func:`close_session` closes the aiohttp session of an asynchronous fsspec filesystem (its private
  ``_session``; zarr's stores never close it). Without it, nothing is closed (aiohttp then warns about an unclosed
  session when the filesystem is collected).
"""

from __future__ import annotations

import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

ZARR_TESTED = "3.1"
"""zarr versions (a prefix) the private names here were checked against."""
FSSPEC_TESTED = "2026."
"""fsspec versions (a prefix) the private names here were checked against."""

try:
    from zarr.core.sync import sync as _zarr_sync
except ImportError:  # pragma: no cover - moved in a zarr we have not seen
    _zarr_sync = None

HAVE_ZARR_SYNC = _zarr_sync is not None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on zarr's event loop (its IO thread) and return its result.

    Raises:
        RuntimeError: this zarr has no ``zarr.core.sync.sync`` (check :data:`HAVE_ZARR_SYNC` first).
    """
    if _zarr_sync is None:
        coro.close()
        raise RuntimeError("this zarr has no zarr.core.sync.sync; read with zarr's synchronous API instead")
    return _zarr_sync(coro)


def session_of(fs: Any) -> Any:
    """The open aiohttp session of an fsspec filesystem (``None``: none opened, or not an aiohttp filesystem)."""
    session = getattr(fs, "_session", None)
    return session if session is not None and hasattr(session, "closed") else None


def close_session(fs: Any) -> None:
    """Close an asynchronous fsspec filesystem's HTTP session on zarr's event loop (where zarr's reads opened it).
    Best effort: a dead server or a stopped loop must not fail a cleanup."""
    session = session_of(fs)
    if session is None or session.closed or _zarr_sync is None:
        return
    with contextlib.suppress(Exception):
        _zarr_sync(session.close())

