"""A cube served over HTTP on 127.0.0.1 (aiohttp's static files: range requests, like object stores)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from eo_dataset import CubeError
from eo_dataset.torch import CubeDataset, ShardSampler
from tests.servers import serve_folder


@pytest.fixture(scope="module")
def served(demo_cube: Path) -> Iterator[str]:
    """The demo cube at http://127.0.0.1:<port>/demo.zarr, served by a process the fixture starts and stops."""
    with serve_folder(demo_cube.parent) as url:
        yield f"{url}/{demo_cube.name}"


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert v.dtype == b[k].dtype and torch.allclose(v.double(), b[k].double(), equal_nan=True), k
        else:
            assert v == b[k], k


@pytest.mark.parametrize("pipeline", ["auto", "zarrs"])
def test_http_cube_matches_local(served: str, demo_cube: Path, pipeline: str) -> None:
    remote = CubeDataset(served, ["s2l2a", "landsat", "lulc"], crop=60, crop_mode="center", codec_pipeline=pipeline)
    local = CubeDataset(demo_cube, ["s2l2a", "landsat", "lulc"], crop=60, crop_mode="center")
    assert remote.handle.codec_pipeline == ("zarr" if pipeline == "auto" else "zarrs")
    assert len(remote) == 32 and (remote.availability == local.availability).all()
    idx = [0, 9, 17, 30]
    _assert_same(remote.get_batch(idx), local.get_batch(idx))
    _assert_same(remote.collate_fn([remote[5]]), local.collate_fn([local[5]]))


def test_http_cube_with_workers(served: str) -> None:
    ds = CubeDataset(served, ["dem", "canopy"])
    ds[0]  # read in the parent first: forked workers must still open and read on their own
    loader = DataLoader(ds, batch_size=4, sampler=ShardSampler(ds, seed=0), num_workers=2, timeout=60,
                        collate_fn=ds.collate_fn, multiprocessing_context="fork")
    seen = [i for batch in loader for i in batch["index"].tolist()]
    assert sorted(seen) == list(range(32))


def test_http_errors(served: str) -> None:
    with pytest.raises(CubeError, match="could not be opened as a Zarr v3 cube"):
        CubeDataset(served.rsplit("/", 1)[0] + "/missing.zarr")
    with pytest.raises(CubeError, match="storage_options are for fsspec URLs"):
        CubeDataset("demo.zarr", storage_options={"headers": {}})


def test_http_sessions_are_closed(served: str, caplog: pytest.LogCaptureFixture) -> None:
    """Each opening has its own HTTP session (no pooled connections shared across datasets or forks), and closes
    it: aiohttp reports sessions collected unclosed through asyncio's logger and a ResourceWarning."""
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught, caplog.at_level("ERROR", logger="asyncio"):
        warnings.simplefilter("always", ResourceWarning)
        ds = CubeDataset(served, ["dem"])
        assert ds.get_batch([0, 1])["dem"].shape[0] == 2
        del ds
        gc.collect()
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]
    assert not [w for w in caught if "Unclosed" in str(w.message)]


def test_http_session_found_and_closed(served: str) -> None:
    """The fsspec private name eo_dataset.torch.compat relies on (pinned to the fsspec versions it was checked
    against): a store's aiohttp session is found after a read, and closed by close_store."""
    import fsspec

    from eo_dataset.torch import compat
    from eo_dataset.torch.handle import close_store

    if not fsspec.__version__.startswith(compat.FSSPEC_TESTED):
        pytest.skip(f"compat was checked against fsspec {compat.FSSPEC_TESTED}*, found {fsspec.__version__}")
    ds = CubeDataset(served, ["dem"])
    ds.get_batch([0])
    store = ds.handle.group.store
    session = compat.session_of(store.fs)
    assert session is not None and not session.closed
    close_store(store)
    assert session.closed


def test_info_over_http_is_the_local_info(served: str, demo_cube: Path, capsys: pytest.CaptureFixture) -> None:
    """HTTP cannot list folders: the block reports are fetched by name, so a finished cube is not called incomplete
    and the reasons for missing data are the local cube's."""
    from eo_dataset.cli.main import main

    assert main(["info", str(demo_cube)]) == 0
    local = capsys.readouterr().out.splitlines()
    assert main(["info", served]) == 0
    remote = capsys.readouterr().out.splitlines()
    assert remote[0].endswith("read over HTTP (its size is not listed)") and "incomplete" not in "\n".join(remote)
    assert remote[1:] == local[1:] and any(" x " in line for line in remote)
