"""The private API ``eo_dataset.torch.compat`` uses, checked against the installed versions; and its fallbacks.

A version outside the ones ``compat`` was checked against skips the pinned tests with a note (re-check the private
names, then widen ``ZARR_TESTED`` / ``FSSPEC_TESTED``); the fallback tests run whatever the versions.
(The fsspec session is checked against a live HTTP server in ``test_http.py``.)
"""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
import torch
import zarr

from eo_dataset.torch import CubeDataset, compat


def _pinned(module: object, tested: str) -> None:
    version = module.__version__  # type: ignore[attr-defined]
    if not version.startswith(tested):
        pytest.skip(f"eo_dataset.torch.compat was checked against {module.__name__} {tested}*, found {version}: "  # type: ignore[attr-defined]
                    "re-check its private names, then update the pin")


def test_zarr_private_names_in_tested_versions() -> None:
    _pinned(zarr, compat.ZARR_TESTED)
    assert compat.HAVE_ZARR_SYNC

    async def three() -> int:
        return 3

    assert compat.run(three()) == 3


def test_fsspec_private_names_in_tested_versions() -> None:
    _pinned(fsspec, compat.FSSPEC_TESTED)
    from fsspec.implementations.http import HTTPFileSystem

    fs = HTTPFileSystem(asynchronous=True, skip_instance_cache=True)
    assert hasattr(fs, "_session") and compat.session_of(fs) is None  # no session until the first request
    compat.close_session(fs)  # nothing to close: no error


def test_reads_without_zarr_private_api(monkeypatch: pytest.MonkeyPatch, demo_cube: Path) -> None:
    """Without zarr's event-loop runner the handle reads one request after another, with the same results."""
    ds = CubeDataset(demo_cube, ["s2l2a", "landsat", "lulc"], crop=60, crop_mode="center")
    expected = ds.get_batch([0, 9, 17, 30])
    monkeypatch.setattr(compat, "HAVE_ZARR_SYNC", False)
    monkeypatch.setattr(compat, "_zarr_sync", None)
    again = ds.get_batch([0, 9, 17, 30])
    for k, v in expected.items():
        if isinstance(v, torch.Tensor):
            assert torch.allclose(v.double(), again[k].double(), equal_nan=True), k
        else:
            assert v == again[k], k
    with pytest.raises(RuntimeError, match=r"zarr.core.sync.sync"):
        compat.run(_nothing())


async def _nothing() -> None:
    return None
