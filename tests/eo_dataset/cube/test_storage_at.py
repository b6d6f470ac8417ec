"""Reading a version of a cube on object storage (loopback moto): ``CubeDataset(url, at=...)``, ``eo-dataset plan
--from-cube URL [--at]`` (bytes from the store's listing, block order from the commits) and ``eo-dataset report URL
--html [--at]``; ``at`` for a cube without versions is a one-line error."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

from eo_dataset import CubeError, build
from eo_dataset.cli.main import main
from eo_dataset.pipeline.plan import block_timings, measure
from eo_dataset.view.report import write_report
from tests.eo_dataset.cube.conftest import arrays

ARRAYS = ("s2l2a", "s2l2a_valid", "lulc", "caption")


@pytest.fixture(scope="module")
def two_versions(s3_env, demo_recipe, demo_samples) -> tuple[str, str, str]:
    """A cube of 8 demo samples (one block), then 16 (a second block appended): (url, first, second snapshot)."""
    from eo_dataset.cube.storage import versions

    url = "s3://eo-cubes/module-at/demo.zarr"
    build(demo_recipe, demo_samples[:8], url, scheduler="sync")
    build(demo_recipe, demo_samples[8:16], url, scheduler="sync", append=True)
    second, first = (v.snapshot_id for v in versions(url))
    return url, first, second


def test_cube_dataset_at_a_version_pins_it(two_versions, demo_cube) -> None:
    torch = pytest.importorskip("torch")
    import pickle

    from eo_dataset.torch import CubeDataset

    url, first, second = two_versions
    kw = {"modalities": ["s2l2a"], "normalize": False}  # stored values: each cube has its own statistics
    latest, old, local = CubeDataset(url, **kw), CubeDataset(url, at=first, **kw), CubeDataset(demo_cube, **kw)
    assert (len(latest), len(old)) == (16, 8)
    assert latest.at == second and old.at == first and local.at is None  # pinned when made: one version throughout
    assert f"at={first!r}" in repr(old)
    again = pickle.loads(pickle.dumps(old))  # a DataLoader worker: reopens the store itself, at the same version
    for i in (0, 7):
        torch.testing.assert_close(again[i]["s2l2a"], local[i]["s2l2a"], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(old[i]["s2l2a"], latest[i]["s2l2a"], rtol=0, atol=0, equal_nan=True)
    with pytest.raises(CubeError, match="has no version 'nope'"):
        CubeDataset(url, at="nope")
    with pytest.raises(CubeError, match=r"^at='abc' reads a version of a cube on object storage .*leave at out$"):
        CubeDataset(demo_cube, at="abc")


def _chunk_bytes(cube, var: str, shards: range) -> int:
    """Bytes on disk of a local cube's array: its metadata and the given shards along the sample axis."""
    files = [cube / var / "zarr.json"]
    for s in shards:  # a shard of a 1-d array is a file, of an n-d one a folder
        files += [cube / var / "c" / str(s), *(cube / var / "c" / str(s)).rglob("*")]
    return sum(p.stat().st_size for p in files if p.is_file())


def test_measure_a_cube_on_object_storage(two_versions, demo_cube) -> None:
    """Bytes come from the store's listing: the chunks are the ones a local build writes for the same samples (the
    demo cube's first shards), so the sizes agree with those files but for the arrays' metadata documents."""
    url, first, second = two_versions
    latest, old, local = measure(url), measure(url, at=first), measure(demo_cube)
    assert (latest.n_samples, old.n_samples, local.n_samples) == (16, 8, 32)
    assert (latest.n_blocks, old.n_blocks) == (2, 1) and latest.workers == 1 and latest.cpu_s_per_sample > 0
    assert latest.cube == url and set(latest.bytes_per_sample) == set(local.bytes_per_sample)
    assert latest.caption_bytes > 20
    # s2l2a (with its _valid, _available ... arrays): the local files of the same two shards, within the metadata
    s2 = sum(_chunk_bytes(demo_cube, v, range(2)) for v in ("s2l2a", "s2l2a_valid", "s2l2a_available",
                                                           "s2l2a_time", "s2l2a_item"))
    assert latest.bytes_per_sample["s2l2a"] * 16 == pytest.approx(s2, rel=0.02)
    assert old.bytes_per_sample["caption"] * 8 == pytest.approx(_chunk_bytes(demo_cube, "caption", range(1)),
                                                                rel=0.02)
    order = sorted(block_timings(url), key=lambda b: b.order)
    assert [b.order[1] for b in order] == [0, 1] and all(b.order[0] > 1.7e9 for b in order)  # commit times
    with pytest.raises(CubeError, match="has no version 'nope'"):
        measure(url, at="nope")
    with pytest.raises(CubeError, match=r"^--at reads a version of a cube on object storage"):
        measure(demo_cube, at=first)


def test_cli_plan_from_a_cube_on_object_storage(two_versions, capsys) -> None:
    url, first, _ = two_versions
    assert main(["plan", "demo", "--region", "world", "--limit", "1000", "--from-cube", url]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"CPU measured on {url} (16 samples, 2 blocks" in out
    assert main(["plan", "demo", "--region", "world", "--limit", "1000", "--from-cube", url, "--at", first]) == 0
    assert f"CPU measured on {url} (8 samples, 1 blocks" in " ".join(capsys.readouterr().out.split())
    assert main(["plan", "demo", "--region", "world", "--limit", "1000", "--at", first]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--at picks the version of the --from-cube cube" in err


def test_html_report_of_a_version(two_versions, demo_cube, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    url, first, _ = two_versions
    latest, old = tmp_path / "latest.html", tmp_path / "old.html"
    assert main(["report", url, "--html", str(latest)]) == 0
    assert main(["report", url, "--at", first, "--html", str(old)]) == 0
    assert f"{url}: 1 of 1 blocks done" in " ".join(capsys.readouterr().out.split())
    write_report(url, tmp_path / "api.html", at=first)  # from Python: the version is read through the store

    def samples(page) -> list[str]:  # the overview table's sample count
        return re.findall(r'<th class="text">samples</th><td>(\d+)</td>', page.read_text())

    assert samples(latest) == ["16"] and samples(old) == samples(tmp_path / "api.html") == ["8"]
    with pytest.raises(CubeError, match="leave it out"):
        write_report(demo_cube, tmp_path / "local.html", at=first)


def test_versions_hold_the_same_arrays_as_the_local_build(two_versions, demo_cube) -> None:
    """The fixture's cube is what the comparisons above assume: its arrays are the local build's first samples."""
    from eo_dataset.cube.storage import open_version

    url, first, _ = two_versions
    local = xr.open_zarr(demo_cube)
    got = arrays(open_version(url, at=first))
    np.testing.assert_array_equal(np.frombuffer(got["s2l2a_available"][1], dtype=bool),
                                  local.s2l2a_available.values[:8])
    assert all(name in got for name in ARRAYS)
